"""Variable-length batches (IMDB, translation) and decoding speed.

(a) Padding waste: the fraction of (batch x longest) positions that are padding over one training epoch,
    with length bucketing (the tasks' default, `options.bucket_batches=20`) and without
    (`options.bucket_batches=1`: batches of random reviews or pairs).
(b) Training throughput (units/s through the suite's Trainer, same initial weights, same unit count) of
    three set-ups, interleaved: bucketed and packed (the default); random batches, packed; and bucketed
    with packing off (the backbone gets no lengths, so it computes every padded position; for these
    unidirectional backbones the outputs at real positions are unchanged). Ratios are against the default.
(c) Decoding speed of the translation model (smoke shape, trained briefly so that hypotheses end):
    validation sentences per second with greedy search and beam 5, and the beam-1 / greedy ratio.

    python benchmarks/variable_length.py --threads 1     # about 3 min on 2 cores
"""
from __future__ import annotations

import time
from typing import Any

import common
import torch
from torch import nn

from suite.config import RunConfig, build_config
from suite.decoding import beam_search, greedy_search
from suite.registry import MODELS, TASKS
from suite.runner import seed_everything
from tasks.subwords import BOS, EOS

UNITS = {"imdb": 6_000, "translation": 60_000}  # samples, target tokens: a few seconds each on 2 cores


def config(task: str, model: str, *overrides: str, units: int | None = None) -> RunConfig:
    fixed = [] if units is None else [f"budget.max_units={units}", "budget.max_seconds=None",
                                      "budget.eval_every_units=None", "budget.checkpoint_every_seconds=1e9"]
    cls = TASKS[task]
    return build_config(task, model, budget="smoke", overrides=[*fixed, *overrides], options_cls=cls.Options,
                        presets=cls.presets, source="synthetic", device="cpu")


class Unpacked(nn.Module):
    """A backbone that ignores `lengths`: the fused kernel runs over every padded position."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.cell, self.output_size, self.directions = inner.cell, inner.output_size, 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state: Any = None) -> Any:
        out, state = self.inner(x, None, state)
        if lengths is not None:  # zero the padded positions, as packing does, so heads see the same inputs
            out = out * (torch.arange(x.size(1))[None, :] < lengths[:, None])[..., None]
        return out, state

    def flops_per_step(self) -> int:
        return self.inner.flops_per_step()


def padding_waste(task: Any) -> float:
    """Padding positions / all positions over one epoch of training batches."""
    real = padded = 0
    for batch in task.train_batches(0):
        tokens = batch[0]
        padded += tokens.numel()
        real += int((tokens != 0).sum())
    return 1 - real / padded


def throughput(task_name: str, model: str, repeats: int) -> dict[str, Any]:
    setups = {"bucketed+packed": ([], False), "random+packed": (["options.bucket_batches=1"], False),
              "bucketed+unpacked": ([], True)}
    runs, waste = {}, {}
    for name, (overrides, unpacked) in setups.items():
        cfg = config(task_name, model, *overrides, units=UNITS[task_name])
        task = common.prepare_task(cfg)
        waste[name] = padding_waste(task)

        def make(cfg: RunConfig = cfg, task: Any = task, unpacked: bool = unpacked) -> nn.Module:
            seed_everything(cfg.seed)
            wrap = Unpacked if unpacked else (lambda m: m)
            return task.build(lambda n: wrap(MODELS[cfg.model](n, cfg.backbone)))

        runs[name] = lambda cfg=cfg, task=task, make=make: common.units_per_s(common.train(cfg, task, make()))
    speeds = common.interleaved(runs, repeats)
    base = common.median(speeds["bucketed+packed"])
    return {name: {"padding_waste": waste[name], "units_per_s": common.median(v), "ratio": common.median(v) / base,
                   "runs": v} for name, v in speeds.items()}


def decoding_speed(repeats: int) -> dict[str, Any]:
    cfg = config("translation", "gru", units=150_000)
    task = common.prepare_task(cfg)
    seed_everything(cfg.seed)
    model = task.build(lambda n: MODELS[cfg.model](n, cfg.backbone))
    common.train(cfg, task, model)
    model.eval()
    batches = [b for _, b in task.eval_batches("valid")]
    sentences = sum(b[0].size(0) for b in batches)

    def timed(search: Any) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for src, lengths, _, _ in batches:
                search(model.init_state(src, lengths), (lengths.float() * 1.5).long() + 10)
        return sentences / (time.perf_counter() - start)

    runs = {"greedy": lambda: timed(lambda s, m: greedy_search(model.step, s, BOS, EOS, m)),
            "beam1": lambda: timed(lambda s, m: beam_search(model.step, s, BOS, EOS, m, beam=1)),
            "beam5": lambda: timed(lambda s, m: beam_search(model.step, s, BOS, EOS, m, beam=5))}
    speeds = common.interleaved(runs, repeats)
    base = common.median(speeds["greedy"])
    bleu = task.evaluate(model, "valid")["bleu"]
    return {"sentences": sentences, "valid_bleu_greedy": bleu, "batch": cfg.train.eval_batch_size,
            **{k: {"sentences_per_s": common.median(v), "ratio_to_greedy": common.median(v) / base, "runs": v}
               for k, v in speeds.items()}}


def main() -> None:
    p = common.parser("variable_length", __doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="lstm", help="backbone for the throughput runs (unidirectional)")
    args = common.parse(p)
    figures: dict[str, Any] = {"environment": common.environment(torch.device("cpu")), "units": UNITS}
    for task_name in ("imdb", "translation"):
        figures[task_name] = throughput(task_name, args.model, args.repeats)
        common.print_table(f"{task_name}: {args.model}, smoke shape, {UNITS[task_name]:,} units per run",
                           ["set-up", "padding waste", "units/s", "ratio"],
                           [[k, v["padding_waste"], v["units_per_s"], v["ratio"]]
                            for k, v in figures[task_name].items()])
    figures["decoding"] = dec = decoding_speed(args.repeats)
    common.print_table(f"translation decoding: gru smoke model, {dec['sentences']} validation sentences, "
                       f"batch {dec['batch']}, greedy valid BLEU {dec['valid_bleu_greedy']:.1f}",
                       ["search", "sentences/s", "ratio to greedy"],
                       [[k, dec[k]["sentences_per_s"], dec[k]["ratio_to_greedy"]]
                        for k in ("greedy", "beam1", "beam5")])
    figures["environment"]["data"] = "synthetic IMDB reviews and the synthetic translation pair"
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
