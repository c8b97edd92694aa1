"""Video tagging speed: decoding + frame features, training per baseline, and data time with the cache on/off.

(a) Decode + features: clips/s of tasks.video_data.read_clip (PyAV, `--frames` frames at `--size` px) alone,
    and followed by the frozen frame encoder (ResNet-18, globally pooled, random weights: speed does not
    depend on them), over clips written here: 64-frame 320x240 mpeg4 AVI, UCF101's shape.
(b) Training throughput (clips/s through the Trainer) of every baseline at the smoke shape, on the synthetic
    source (12 frames of 32 px through the small frame CNN) and on cached 512-d frame features (a real-data
    run's step), same clip count per run, interleaved repeats.
(c) Data time as a fraction of step time (batch building / whole step), for a gru at the smoke shape on the
    clips of (a) labelled through a tags CSV: with the feature cache (batches gather cached rows) and without
    it (every batch decodes its clips and runs the encoder).

    python benchmarks/video.py           # about 3 min on 2 cores
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import common
import numpy as np
import torch

from suite.config import build_config
from suite.experiment import applicable_models
from suite.features import GridEncoder
from suite.registry import TASKS
from tasks.video_data import read_clip

UNITS = 8_000  # clips per training run


def write_clips(folder: Path, count: int) -> list[Path]:
    """`count` 64-frame 320x240 mpeg4 AVIs of a moving gradient (so that frames differ), and a tags CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    xs = np.arange(320)[None, :, None]
    rows, paths = ["video,tags,split"], []
    for c in range(count):
        path = folder / f"clip{c}.avi"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 320, 240, "yuv420p", 600_000
            for t in range(64):
                frame = np.broadcast_to(((xs + 4 * t + 9 * c) % 256).astype(np.uint8), (240, 320, 3))
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            out.mux(stream.encode())
        split = ("train", "train", "valid", "test")[c % 4]
        rows.append(f"{path.name},{'left' if c % 2 else 'right'},{split}")
        paths.append(path)
    (folder / "tags.csv").write_text("\n".join(rows) + "\n")
    return paths


def decode_and_features(paths: list[Path], frames: int, size: int, repeats: int) -> dict[str, Any]:
    encoder = GridEncoder("resnet18", pooled=True)

    def decode() -> float:
        start = time.perf_counter()
        for p in paths:
            read_clip(p, frames, size)
        return len(paths) / (time.perf_counter() - start)

    def both() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for p in paths:
                encoder(read_clip(p, frames, size))
        return len(paths) / (time.perf_counter() - start)

    speeds = common.interleaved({"decode": decode, "decode+features": both}, repeats)
    return {k: {"clips_per_s": common.median(v), "runs": v} for k, v in speeds.items()}


def config(model: str, units: int, source: str = "synthetic", *overrides: str) -> Any:
    cls = TASKS["video"]
    return build_config("video", model, budget="smoke", presets=cls.presets, options_cls=cls.Options,
                        source=source, device="cpu",
                        overrides=[f"budget.max_units={units}", "budget.max_seconds=None",
                                   "budget.eval_every_units=None", "budget.checkpoint_every_seconds=1e9", *overrides])


def as_cached_features(task: Any, dim: int = 512) -> Any:
    """The synthetic task with its pixels swapped for random cached-feature rows of a real-data run (one
    view), as if `source` were real: the step a real run takes, with the frame CNN outside the model."""
    gen = torch.Generator().manual_seed(0)
    frames = task.inputs["train"].shape[1]
    task.inputs = {s: torch.rand(x.shape[0] * frames, 1, dim, generator=gen).half() for s, x in task.inputs.items()}
    task.cfg = dataclasses.replace(task.cfg, source="real", options=dataclasses.replace(
        task.cfg.options, frames=frames, train_views=1, finetune_cnn=False))
    return task


def training(repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in applicable_models(TASKS["video"]):
        cfg = config(model, UNITS)
        pixels, features = common.prepare_task(cfg), as_cached_features(common.prepare_task(cfg))
        runs = {"synthetic": lambda cfg=cfg, t=pixels: common.train_speed(cfg, t),
                "features": lambda cfg=features.cfg, t=features: common.train_speed(cfg, t)}
        speeds = common.interleaved(runs, repeats)
        out[model] = {k: {"clips_per_s": common.median(v), "runs": v} for k, v in speeds.items()}
    return out


def data_fractions(folder: Path, steps: int) -> dict[str, Any]:
    """Data time / step time for a gru on the CSV clips, with and without the feature cache."""
    csv = [f"options.tags_csv='{folder / 'tags.csv'}'", f"options.video_dir='{folder}'"]
    cfg = config("gru", UNITS, "real", "options.dataset='csv'", *csv, "options.frames=8", "options.train_views=1",
                 "options.download_weights=False", "train.batch_size=8")
    cached = common.prepare_task(cfg)
    encoder = cached._encoder()

    def uncached(index: np.ndarray) -> tuple:  # what every batch costs when nothing is cached
        with torch.no_grad():
            x = torch.stack([encoder(cached._read("train", int(i), np.random.default_rng(int(i)))).squeeze(1)
                             for i in index])
        return x, torch.full((len(index),), x.shape[1]), cached.targets["train"][torch.from_numpy(index)]

    rng = np.random.default_rng(0)
    order = [rng.permutation(len(cached.targets["train"]))[:cfg.train.batch_size] for _ in range(steps)]
    sides = {"cache on": lambda idx: cached._batch("train", idx, rng), "cache off": uncached}
    out = {}
    for name, make in sides.items():
        model = common.build_model(cfg, cached)
        out[name] = common.data_fraction(cached, model, (make(index) for index in order), steps, warmup=3)
    return out


def main() -> None:
    p = common.parser("video", __doc__)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    args = common.parse(p)
    figures: dict[str, Any] = {"environment": common.environment(torch.device("cpu"))}
    figures["environment"]["data"] = ("64-frame 320x240 mpeg4 AVIs written here; synthetic clips "
                                      "(tasks/synthetic_video.py); random 512-d rows in place of cached features")
    with tempfile.TemporaryDirectory(prefix="seqsuite-video-") as tmp:
        paths = write_clips(Path(tmp) / "clips", 32)
        figures["decode"] = dec = decode_and_features(paths, args.frames, args.size, args.repeats)
        common.print_table(f"decode + ResNet-18 features, {args.frames} frames at {args.size} px of 64-frame "
                           "320x240 AVIs", ["stage", "clips/s"], [[k, v["clips_per_s"]] for k, v in dec.items()])
        figures["training"] = tr = training(args.repeats)
        common.print_table(f"training, smoke shape, {UNITS:,} clips per run", ["model", "synthetic clips/s",
                           "cached features clips/s"],
                           [[m, v["synthetic"]["clips_per_s"], v["features"]["clips_per_s"]] for m, v in tr.items()])
        figures["data_time"] = dt = data_fractions(Path(tmp) / "clips", steps=15)
        common.print_table("data time / step time, gru 1x64, batch 8, 8 frames at 112 px",
                           ["features", "data fraction", "ms/step"],
                           [[k, v["data_fraction"], v["ms_per_step"]] for k, v in dt.items()])
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
