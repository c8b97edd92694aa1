"""Training throughput and peak memory of every causal baseline on PTB's Zaremba medium config.

The `paper` preset of PTB (2x650, dropout 0.5, batch 20, bptt 35) in fp32, tf32 and bf16, each run a
fixed number of tokens through the suite's Trainer from the same seeded initial weights. Peak memory is
torch.cuda.max_memory_allocated, reset before each run. resrnn (single-layer cuDNN LSTMs stacked with
skips) is compared with the plain stacked LSTM of the same size by milliseconds per training step.

    python benchmarks/gpu_baselines.py                      # on a CUDA GPU
    python benchmarks/gpu_baselines.py --device cpu --tiny  # exercises the code path on a CPU
"""
from __future__ import annotations

import gc
import sys

import common
import torch

from suite.experiment import applicable_models
from tasks.ptb import PTB

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_UNITS = 140_000  # 200 steps of 20 x 35 tokens
TINY = ["backbone.hidden_size=32", "options.emb_size=32", "train.batch_size=4", "options.bptt=10",
        "options.synthetic_tokens=20000"]
TINY_UNITS = 2_000  # 50 steps of 4 x 10 tokens


def one_run(model_name: str, precision: str, task: PTB, args) -> dict:
    """Train one (model, precision) for the fixed units; tokens/s, ms per step and peak memory."""
    cfg = common.ptb_config(model_name, "paper", TINY if args.tiny else [], units=args.units, precision=precision,
                            device=args.device)
    cuda = torch.device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        outcome = common.train(cfg, task, common.build_model(cfg, task))
    except RuntimeError as exc:  # e.g. a kernel this GPU lacks: keep the other runs' figures
        return {"error": str(exc).strip().splitlines()[0]}
    finally:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()  # the next run's peak starts from a clean allocator
    p = outcome.progress
    return {"tokens_per_s": common.units_per_s(outcome),
            "ms_per_step": 1000 * p.measured_seconds / (p.steps - cfg.budget.warmup_steps),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def summarise(models: list[str], precisions: list[str], runs: dict) -> list[dict]:
    """Medians over repeats per (model, precision), with each model's step time against lstm's
    (the figure asked for is resrnn's: single-layer kernels with skips against one fused stack)."""
    rows = []
    for precision in precisions:
        ok = {m: [r for r in runs[m, precision] if "error" not in r] for m in models}
        ms = {m: common.median([r["ms_per_step"] for r in ok[m]]) for m in models if ok[m]}
        for m in models:
            peaks = [r["peak_bytes"] for r in ok[m] if r["peak_bytes"] is not None]
            errors = sorted({r["error"] for r in runs[m, precision] if "error" in r})
            rows.append({"model": m, "precision": precision, "ms_per_step": ms.get(m),
                         "tokens_per_s": common.median([r["tokens_per_s"] for r in ok[m]]) if ok[m] else None,
                         "peak_mib": max(peaks) / 2**20 if peaks else None,
                         "step_time_vs_lstm": ms[m] / ms["lstm"] if m in ms and "lstm" in ms else None,
                         "errors": errors, "runs": runs[m, precision]})
    return rows


def arguments():
    p = common.parser("gpu_baselines", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny, to test the script)")
    p.add_argument("--tiny", action="store_true", help=f"a 2x32 model on a small corpus, {TINY_UNITS} tokens")
    p.add_argument("--models", nargs="+", default=applicable_models(PTB), help="causal baselines to run")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--units", type=int, default=None, help=f"tokens per run (default {DEFAULT_UNITS}, "
                                                           f"{TINY_UNITS} with --tiny)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the median is reported")
    args = common.parse(p)
    args.units = args.units or (TINY_UNITS if args.tiny else DEFAULT_UNITS)
    return args


def main() -> None:
    args = arguments()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_baselines needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured or written. "
              "To exercise the script on a CPU: --device cpu --tiny")
        sys.exit(0)
    precisions = list(args.precisions)
    if args.device == "cpu" and "tf32" in precisions:
        precisions.remove("tf32")  # a CUDA matmul mode: PrecisionPolicy refuses it on CPU
        print("tf32 skipped: it is a CUDA matmul mode and the suite refuses it on CPU")
    print(common.DATA_NOTE)
    env = common.environment(torch.device(args.device))
    task = common.prepare_task(common.ptb_config("lstm", "paper", TINY if args.tiny else [], device=args.device))
    runs = common.interleaved({(m, pr): (lambda m=m, pr=pr: one_run(m, pr, task, args))
                               for pr in precisions for m in args.models}, args.repeats)
    rows = summarise(args.models, precisions, runs)
    shape = "2x32 (--tiny)" if args.tiny else "2x650 (Zaremba medium)"
    common.print_table(f"PTB {shape}, {args.units} tokens per run, {env['device_name']}, median of {args.repeats}",
                       ["model", "precision", "tok/s", "ms/step", "vs lstm", "peak MiB", "error"],
                       [[r["model"], r["precision"], r["tokens_per_s"], r["ms_per_step"], r["step_time_vs_lstm"],
                         r["peak_mib"], "; ".join(r["errors"])[:60] or None] for r in rows])
    common.write_json(args.out, {"benchmark": "gpu_baselines", "environment": env, "tiny": args.tiny,
                                 "units": args.units, "results": rows})


if __name__ == "__main__":
    main()
