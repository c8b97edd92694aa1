"""Captioning speed: feature extraction, decoding, decoder training, and data time with the feature cache.

(a) Feature extraction: images/s of suite.features.GridEncoder (ResNet-50 by default, random weights: speed
    does not depend on them) at 224 px, batch 16, forward only, after one warm-up batch.
(b) Training throughput (caption words/s through the Trainer) of every causal decoder at the smoke shape
    on cached features: random (N=49, D=2048) grids standing in for ResNet-50 features of 224 px images,
    so the step is what a real-data run's step is. Also the data time (building the batch from the cached
    features: indexing, padding, copying) as a fraction of the step time, measured on the same batches.
(c) Decoding: captions/s of greedy search and beam 1 and 3 over 300 synthetic test scenes with a decoder
    trained for 200k words on the synthetic source.

    python benchmarks/captioning.py        # about 2 min on 2 cores
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import common
import torch

from suite.config import build_config
from suite.decoding import beam_search, greedy_search
from suite.experiment import applicable_models
from suite.features import GridEncoder
from suite.registry import TASKS
from tasks.subwords import BOS, EOS

UNITS = 30_000  # caption words per training run


def config(model: str, units: int, *overrides: str) -> Any:
    cls = TASKS["captioning"]
    return build_config("captioning", model, budget="smoke", presets=cls.presets, options_cls=cls.Options,
                        source="synthetic", device="cpu",
                        overrides=[f"budget.max_units={units}", "budget.max_seconds=None",
                                   "budget.eval_every_units=None", "budget.checkpoint_every_seconds=1e9",
                                   "options.reference_units=1000", *overrides])


def extraction(name: str, repeats: int) -> dict[str, Any]:
    encoder = GridEncoder(name)
    images = torch.rand(16, 3, 224, 224)
    with torch.no_grad():
        encoder(images)  # warm-up
        speeds = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(images)
            speeds.append(16 / (time.perf_counter() - start))
    return {"encoder": name, "images_per_s": common.median(speeds), "runs": speeds,
            "grid": list(encoder(images[:1]).shape[1:])}


def with_cached_features(task: Any, cells: int = 49, dim: int = 2048) -> Any:
    """The synthetic task with its pixels swapped for random feature grids of a real-data run's shape and
    its CNN dropped, as if `source` were real (features come from the cache)."""
    gen = torch.Generator().manual_seed(0)
    task.inputs = {s: torch.rand(x.size(0), cells, dim, generator=gen).half() for s, x in task.inputs.items()}
    task.cfg = dataclasses.replace(task.cfg, source="real")
    return task


def training(repeats: int) -> dict[str, Any]:
    out = {}
    for model in applicable_models(TASKS["captioning"]):
        cfg = config(model, UNITS)
        task = with_cached_features(common.prepare_task(cfg))
        runs = {"train": lambda cfg=cfg, task=task: common.train_speed(cfg, task)}
        speeds = common.interleaved(runs, repeats)["train"]
        fraction = common.data_fraction(task, common.build_model(cfg, task), task.train_batches(0), steps=40)
        out[model] = {"words_per_s": common.median(speeds), "runs": speeds, **fraction}
    return out


def decoding(repeats: int) -> dict[str, Any]:
    cfg = config("lstm", 200_000)
    task = common.prepare_task(cfg)
    model = common.build_model(cfg, task)
    common.train(cfg, task, model)
    model.eval()
    images = task.inputs["test"]

    def timed(search: Any) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, images.size(0), 100):
                search(model.init_state(images[i:i + 100]))
        return images.size(0) / (time.perf_counter() - start)

    limit = cfg.options.max_caption_len + 1
    runs = {"greedy": lambda: timed(lambda s: greedy_search(model.step, s, BOS, EOS, limit)),
            "beam1": lambda: timed(lambda s: beam_search(model.step, s, BOS, EOS, limit, beam=1)),
            "beam3": lambda: timed(lambda s: beam_search(model.step, s, BOS, EOS, limit, beam=3))}
    speeds = common.interleaved(runs, repeats)
    return {"images": images.size(0), "batch": 100, "test_bleu4_greedy": task.evaluate(model, "test")["bleu4"],
            **{k: {"captions_per_s": common.median(v), "runs": v} for k, v in speeds.items()}}


def main() -> None:
    p = common.parser("captioning", __doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoder", default="resnet50")
    args = common.parse(p)
    figures: dict[str, Any] = {"environment": common.environment(torch.device("cpu"))}
    figures["environment"]["data"] = "synthetic scenes; random 49 x 2048 grids in place of cached ResNet-50 features"
    figures["extraction"] = ex = extraction(args.encoder, args.repeats)
    common.print_table(f"feature extraction: {ex['encoder']}, 224 px, batch 16, grid {ex['grid']}",
                       ["encoder", "images/s"], [[ex["encoder"], ex["images_per_s"]]])
    figures["training"] = tr = training(args.repeats)
    common.print_table(f"decoder training on cached 49 x 2048 features, smoke shape, {UNITS:,} words per run",
                       ["decoder", "words/s", "ms/step", "data fraction"],
                       [[m, v["words_per_s"], v["ms_per_step"], v["data_fraction"]] for m, v in tr.items()])
    figures["decoding"] = dec = decoding(args.repeats)
    common.print_table(f"decoding {dec['images']} synthetic test scenes (lstm, batch 100, greedy test BLEU-4 "
                       f"{dec['test_bleu4_greedy']:.1f})", ["search", "captions/s"],
                       [[k, dec[k]["captions_per_s"]] for k in ("greedy", "beam1", "beam3")])
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
