"""Reduced precision on CPU for the LSTM language model.

(a) bf16 autocast against fp32 training throughput, both through the suite's Trainer with the
    precision set in the config, on the same initial weights and the same number of tokens.
(b) dynamic int8 (suite.compress.quantize_dynamic_int8) against fp32 inference: latency of one call
    on batch 1 x 35 tokens (suite.compress.latency_ms, the figure every variant record carries) and
    test perplexity before and after. The fp32 model is trained briefly first, since the perplexity
    change of an untrained model says nothing.

    python benchmarks/cpu_precision.py            # smoke LSTM and 2x200 LSTM
"""
from __future__ import annotations

import copy

import common
import torch

from suite import compress
from suite.precision import PrecisionPolicy
from suite.runner import evaluate
from suite.variant_run import LATENCY_SHAPE

DEFAULT_UNITS = {"smoke": 16_000, "2x200": 10_500}  # 100 steps of 8x20 tokens; 15 steps of 20x35
# Training before quantizing, by tokens so that the perplexities do not depend on the machine. The 2x200
# model trains with the smoke recipe's batch (8 x 20) at a lower Adam rate: that gets it well below the
# unigram perplexity within 150k tokens, whereas at 20 x 35 it sits near unigram for several hundred thousand.
TRAIN = {"smoke": [], "2x200": ["backbone.hidden_size=200", "backbone.num_layers=2", "options.emb_size=200",
                                "train.lr=2e-3"]}
TRAIN_UNITS = 150_000


def bf16_throughput(size: str, units: int, repeats: int) -> dict:
    """Interleaved fp32 and bf16 Trainer runs from the same initial weights; medians and bf16/fp32."""
    cfgs = {p: common.ptb_config("lstm", "smoke", common.SIZES[size], units=units, precision=p)
            for p in ("fp32", "bf16")}
    task = common.prepare_task(cfgs["fp32"])
    initial = common.build_model(cfgs["fp32"], task)
    losses: dict[str, float] = {}

    def run(precision: str) -> float:
        outcome = common.train(cfgs[precision], task, copy.deepcopy(initial))
        losses[precision] = outcome.progress.curve[-1]["train_loss"]
        return common.units_per_s(outcome)

    rates = common.interleaved({p: (lambda p=p: run(p)) for p in cfgs}, repeats)
    fp32, bf16 = common.median(rates["fp32"]), common.median(rates["bf16"])
    return {"size": size, "units": units, "fp32_tokens_per_s": fp32, "bf16_tokens_per_s": bf16,
            "ratio": bf16 / fp32, "runs": rates, "mean_train_loss": losses}


def int8_inference(size: str, train_units: int, rounds: int) -> dict:
    """Train fp32 for `train_units` tokens, quantize, and compare latency and test perplexity."""
    cfg = common.ptb_config("lstm", "smoke", TRAIN[size], units=train_units)
    task = common.prepare_task(cfg)
    model = common.build_model(cfg, task)
    outcome = common.train(cfg, task, model)
    quantized, notes = compress.quantize_dynamic_int8(model)  # a converted copy; `model` stays fp32
    args = task.sample_input(*LATENCY_SHAPE)
    latency = common.interleaved({"fp32": lambda: compress.latency_ms(model, args),
                                  "int8": lambda: compress.latency_ms(quantized, args)}, rounds)
    policy = PrecisionPolicy("fp32", torch.device("cpu"))
    ppl = {name: evaluate(task, m, policy, "test")[0]["ppl"] for name, m in (("fp32", model), ("int8", quantized))}
    fp32_ms, int8_ms = common.median(latency["fp32"]), common.median(latency["int8"])
    recipe = f"{cfg.train.optimizer} lr {cfg.train.lr:g}, batch {cfg.train.batch_size} x {cfg.options.bptt}"
    return {"size": size, "train_recipe": recipe, "train_tokens": outcome.progress.units,
            "train_seconds": outcome.progress.seconds,
            "latency_shape": list(LATENCY_SHAPE), "fp32_latency_ms": fp32_ms, "int8_latency_ms": int8_ms,
            "latency_ratio": int8_ms / fp32_ms, "latency_runs": latency, "fp32_test_ppl": ppl["fp32"],
            "int8_test_ppl": ppl["int8"], "ppl_change": ppl["int8"] - ppl["fp32"],
            "unigram_test_ppl": task.reference()["test"]["ppl"], "notes": notes}


def report(bf16: list[dict], int8: list[dict], repeats: int, rounds: int) -> None:
    common.print_table(f"(a) training throughput, bf16 autocast vs fp32, median of {repeats}",
                       ["size", "tokens", "fp32 tok/s", "bf16 tok/s", "bf16/fp32"],
                       [[r["size"], r["units"], r["fp32_tokens_per_s"], r["bf16_tokens_per_s"], r["ratio"]]
                        for r in bf16])
    common.print_table(f"(b) dynamic int8 vs fp32 inference, batch {LATENCY_SHAPE[0]} x {LATENCY_SHAPE[1]} tokens, "
                       f"median of {rounds} medians of 30 calls",
                       ["size", "trained tok", "fp32 ms", "int8 ms", "int8/fp32", "fp32 ppl", "int8 ppl", "change",
                        "unigram"],
                       [[r["size"], r["train_tokens"], r["fp32_latency_ms"], r["int8_latency_ms"], r["latency_ratio"],
                         r["fp32_test_ppl"], r["int8_test_ppl"], r["ppl_change"], r["unigram_test_ppl"]]
                        for r in int8])


def main() -> None:
    p = common.parser("cpu_precision", __doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(common.SIZES), default=list(common.SIZES))
    p.add_argument("--units", type=int, default=None,
                   help=f"tokens per throughput run for every size (default per size: {DEFAULT_UNITS})")
    p.add_argument("--train-units", type=int, default=TRAIN_UNITS, help="fp32 training tokens before quantizing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved training runs of each precision (median)")
    p.add_argument("--latency-rounds", type=int, default=10,
                   help="interleaved latency measurements of each model, each the median of 30 calls (median)")
    args = common.parse(p)
    print(common.DATA_NOTE)
    env = common.environment(torch.device("cpu"))
    bf16 = [bf16_throughput(s, args.units or DEFAULT_UNITS[s], args.repeats) for s in args.sizes]
    int8 = [int8_inference(s, args.train_units, args.latency_rounds) for s in args.sizes]
    report(bf16, int8, args.repeats, args.latency_rounds)
    common.write_json(args.out, {"benchmark": "cpu_precision", "environment": env, "bf16_training": bf16,
                                 "int8_inference": int8})


if __name__ == "__main__":
    main()
