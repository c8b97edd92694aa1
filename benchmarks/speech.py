"""LibriSpeech speed on the synthetic espeak-ng source at the smoke shape.

(a) Training throughput of every baseline through the Trainer, in audio seconds per second (the task's
    unit is a 10 ms frame, so frames/s / 100), same unit count per run, interleaved repeats.
(b) Real-time factor of decoding the 200 validation utterances with a brnn trained for 1M frames: seconds
    of compute (features cached, model forward included) per second of audio, greedy against flashlight's
    prefix beam search of width 8 and 32, with each one's WER.

    python benchmarks/speech.py          # about 3 min on 2 cores, plus espeak-ng's first generation
"""
from __future__ import annotations

import time
from typing import Any

import common
import torch

from suite.config import build_config
from suite.experiment import applicable_models
from suite.registry import TASKS
from tasks.ctc_beam import CTCBeamSearch
from tasks.speech_text import ctc_greedy, wer_cer

UNITS = 400_000  # frames per training run: 4,000 s of audio


def config(model: str, units: int) -> Any:
    cls = TASKS["librispeech"]
    return build_config("librispeech", model, budget="smoke", presets=cls.presets, options_cls=cls.Options,
                        source="synthetic", device="cpu",
                        overrides=[f"budget.max_units={units}", "budget.max_seconds=None",
                                   "budget.eval_every_units=None", "budget.checkpoint_every_seconds=1e9"])


def training(repeats: int) -> dict[str, Any]:
    runs, task = {}, None
    for model in applicable_models(TASKS["librispeech"]):
        cfg = config(model, UNITS)
        task = task or common.prepare_task(cfg)  # one corpus for all; the model is what differs
        runs[model] = lambda cfg=cfg, task=task: common.train_speed(cfg, task) / 100
    speeds = common.interleaved(runs, repeats)
    return {m: {"audio_seconds_per_s": common.median(v), "runs": v} for m, v in speeds.items()}


def decoding() -> dict[str, Any]:
    cfg = config("brnn", 1_000_000)
    task = common.prepare_task(cfg)
    model = common.build_model(cfg, task)
    common.train(cfg, task, model)
    model.eval()
    task.transcribe(model, "valid")  # computes and keeps the evaluation features
    feats, refs = task._eval_features["valid"], task.texts["valid"]
    audio = float(task.samples["valid"].sum()) / 16_000
    out = {}
    searches = {"greedy": None, "beam8": CTCBeamSearch(task.units, 8), "beam32": CTCBeamSearch(task.units, 32)}
    for name, beam in searches.items():
        start = time.perf_counter()
        hyps = []
        with torch.no_grad():
            for i in range(0, len(feats), 50):
                x, lengths, _, _ = task._collate(feats[i:i + 50], task.targets["valid"][i:i + 50])
                log_probs = model(x, lengths)
                greedy = [task.units.decode(ids) for ids in ctc_greedy(log_probs, lengths)] if beam is None else None
                hyps += greedy if beam is None else beam(log_probs, lengths)
        seconds = time.perf_counter() - start
        out[name] = {"rtf": seconds / audio, "wer": wer_cer(hyps, refs)["wer"]}
    return {"audio_seconds": audio, **out}


def main() -> None:
    p = common.parser("speech", __doc__)
    p.add_argument("--repeats", type=int, default=2)
    args = common.parse(p)
    figures: dict[str, Any] = {"environment": common.environment(torch.device("cpu"))}
    figures["environment"]["data"] = "synthetic espeak-ng speech (tasks/synthetic_speech.py)"
    figures["training"] = tr = training(args.repeats)
    common.print_table(f"librispeech training, smoke shape, {UNITS:,} frames per run", ["model", "audio s/s"],
                       [[m, v["audio_seconds_per_s"]] for m, v in tr.items()])
    figures["decoding"] = dec = decoding()
    common.print_table(f"decoding {dec['audio_seconds']:.0f} s of validation audio (brnn, 1M training frames)",
                       ["search", "RTF", "WER"],
                       [[k, dec[k]["rtf"], dec[k]["wer"]] for k in ("greedy", "beam8", "beam32")])
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
