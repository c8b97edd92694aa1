"""The LibriSpeech task: an existing copy and the download path in the official layout (real FLAC files
written here), CTC training and greedy decoding against an independent collapse, WER against the
reference line, and the synthetic espeak-ng source on which every baseline falls well below it.

The audio written here is tones and noise in the official layout: a test of the mechanics, never a
LibriSpeech benchmark.
"""
from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile
import torch

import tasks.librispeech_data
from suite import experiment
from suite.config import build_config
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, md5sum
from suite.registry import MODELS, load_plugins
from tasks.librispeech import LibriSpeech
from tasks.speech_text import CHARS, decode_ids, wer_cer

if TYPE_CHECKING:
    from conftest import Origin

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.synthetic_utterances=24",
        "options.synthetic_eval_utterances=8", "train.eval_batch_size=8", "options.batch_seconds=12.0"]
CPU = torch.device("cpu")
UNITS, UTTERANCES = 2_400_000, 800  # about fifteen passes over 27 minutes of synthetic speech
pytestmark = pytest.mark.usefixtures("cache")

load_plugins()


def config(source: str = "synthetic", *overrides: str, model: str = "brnn"):
    return build_config("librispeech", model, budget="smoke", overrides=[*TINY, *overrides],
                        options_cls=LibriSpeech.Options, presets=LibriSpeech.presets, source=source, device="cpu")


def make_task(source: str = "synthetic", *overrides: str, model: str = "brnn") -> LibriSpeech:
    task = LibriSpeech(config(source, *overrides, model=model), CPU)
    task.prepare()
    return task


def write_subset(root: Path, name: str, utterances: int) -> None:
    """LibriSpeech/<name>/<speaker>/<chapter>/ with FLACs and a transcript file, as the archives hold."""
    folder = root / "LibriSpeech" / name / "19" / "198"
    folder.mkdir(parents=True)
    lines = []
    for i in range(utterances):
        t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
        soundfile.write(folder / f"19-198-{i:04d}.flac", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)), 16000)
        lines.append(f"19-198-{i:04d} {'HELLO WORLD' if i % 2 else 'A CAT SAT'}")
    (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n")


def test_an_existing_copy_is_read_and_trains(tmp_path: Path) -> None:
    for name, n in (("train-clean-100", 6), ("dev-clean", 2), ("test-clean", 2)):
        write_subset(tmp_path / "copy", name, n)
    task = make_task("real", f"options.copy_dir='{tmp_path / 'copy'}'")
    info = task.data_info()
    assert info["utterances"] == {"train": 6, "valid": 2, "test": 2} and info["copy_dir"] == str(tmp_path / "copy")
    assert info["audio_seconds"]["train"] == pytest.approx(sum(0.5 + 0.1 * i for i in range(6)), abs=0.01)
    files = sorted((tmp_path / "copy").rglob("train-clean-100/**/*.flac"))
    assert task.units_per_epoch() == sum(1 + soundfile.info(str(f)).frames // 160 for f in files)  # 10 ms frames
    model = task.build(lambda n: MODELS["brnn"](n, task.cfg.backbone))
    batches = list(task.train_batches(0))
    assert sum(b[4] for b in batches) == task.units_per_epoch()  # every utterance once per epoch
    loss, frames, _ = task.loss(model, batches[0], None)
    loss.backward()
    assert torch.isfinite(loss) and frames == batches[0][4] > 0
    metrics = task.evaluate(model.eval(), "valid")
    assert set(metrics) == {"wer", "cer"}


def test_the_download_path_checks_extracts_and_reads(tmp_path: Path, serve: Callable[[Path], Origin],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    origin_dir = tmp_path / "origin"
    origin_dir.mkdir()
    subsets = {}
    for name, n in (("train-clean-100", 4), ("dev-clean", 2), ("test-clean", 2)):
        write_subset(tmp_path / "build" / name, name, n)
        with tarfile.open(origin_dir / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "build" / name / "LibriSpeech", arcname="LibriSpeech")
        subsets[name] = RemoteFile(f"{name}.tar.gz", md5sum(origin_dir / f"{name}.tar.gz"))
    monkeypatch.setattr(tasks.librispeech_data, "SUBSETS", {**tasks.librispeech_data.SUBSETS, **subsets})
    monkeypatch.setattr("tasks.librispeech.SUBSETS", {**tasks.librispeech_data.SUBSETS, **subsets})
    origin = serve(origin_dir)
    monkeypatch.setattr(tasks.librispeech_data, "ORIGIN", origin.url)
    task = make_task("real")
    assert task.data_info()["utterances"] == {"train": 4, "valid": 2, "test": 2}
    assert task.texts["valid"] == ["A CAT SAT", "HELLO WORLD"]
    assert all(n == 1 for n in origin.requests.values()) and len(origin.requests) == 3


def test_unknown_subsets_are_refused_with_the_choices() -> None:
    with pytest.raises(UserError, match="unknown LibriSpeech subset 'dev-cleen': choose from train-clean-100"):
        config("synthetic", "options.valid_subset='dev-cleen'")


def test_a_missing_copy_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--source synthetic"):
        make_task("real", f"options.copy_dir='{tmp_path / 'nothing'}'")


def test_the_reference_line_is_the_better_of_the_commonest_transcript_and_silence(tmp_path: Path) -> None:
    for name, n in (("train-clean-100", 5), ("dev-clean", 3), ("test-clean", 2)):
        write_subset(tmp_path / "copy", name, n)
    task = make_task("real", f"options.copy_dir='{tmp_path / 'copy'}'")
    refs = task.texts["valid"]  # A CAT SAT, HELLO WORLD, A CAT SAT; train's commonest is A CAT SAT (3 of 5)
    assert task.reference()["valid"] == wer_cer(["A CAT SAT"] * 3, refs)
    assert task.reference()["valid"]["wer"] == pytest.approx(100 * 3 / 8)  # vs HELLO WORLD: 2 subs + 1 insertion


def test_greedy_transcription_equals_an_independent_collapse(tmp_path: Path) -> None:
    for name, n in (("train-clean-100", 2), ("dev-clean", 3), ("test-clean", 1)):
        write_subset(tmp_path / "copy", name, n)
    task = make_task("real", f"options.copy_dir='{tmp_path / 'copy'}'")
    torch.manual_seed(0)
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone)).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.randn(len(CHARS)) * 3)  # varied symbols per frame
        hyps = task.transcribe(model, "valid")
        for i, hyp in enumerate(hyps):
            x = task._eval_features["valid"][i][None]
            best = model(x, torch.tensor([x.size(1)]))[0].argmax(-1).tolist()
            collapsed = [s for j, s in enumerate(best) if s != 0 and (j == 0 or s != best[j - 1])]
            assert hyp == decode_ids(collapsed)


def test_beam_search_reads_a_confident_path_like_greedy_and_runs_in_the_task(tmp_path: Path) -> None:
    from tasks.speech_text import CTCBeamSearch, ctc_greedy, encode

    path = [0, *encode("A CAT"), 0, 0, *encode("SAT")]  # blanks between and after words
    log_probs = torch.full((1, len(path), len(CHARS)), -20.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    lengths = torch.tensor([len(path)])
    assert CTCBeamSearch(4)(log_probs, lengths) == ["A CATSAT"] == [decode_ids(ctc_greedy(log_probs, lengths)[0])]
    for name, n in (("train-clean-100", 2), ("dev-clean", 2), ("test-clean", 1)):
        write_subset(tmp_path / "copy", name, n)
    task = make_task("real", f"options.copy_dir='{tmp_path / 'copy'}'", "options.beam=4")
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone)).eval()
    assert set(task.evaluate(model, "valid")) == {"wer", "cer"}


# ---------------------------------------------------------------- the synthetic source


@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the baselines' runs, so the espeak-ng corpus is generated once."""
    return tmp_path_factory.mktemp("speech-cache")


@needs_espeak
@pytest.mark.slow
@pytest.mark.parametrize("model_name", experiment.applicable_models(LibriSpeech))
def test_every_baseline_falls_well_below_the_reference_line(model_name: str, tmp_path: Path, speech_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The smoke preset on a smaller corpus, capped by frames rather than seconds (machine-independent)."""
    monkeypatch.setenv("SUITE_DATA_DIR", str(speech_cache))
    cfg = build_config("librispeech", model_name, budget="smoke", options_cls=LibriSpeech.Options,
                       presets=LibriSpeech.presets, source="synthetic", device="cpu",
                       overrides=[f"budget.max_units={UNITS}", "budget.max_seconds=None",
                                  f"options.synthetic_utterances={UTTERANCES}"])
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    wer, reference = record["metrics"]["test"]["wer"], record["reference"]["test"]["wer"]
    assert record["status"] == "completed" and wer < reference - 10, (wer, reference)


@needs_espeak
def test_a_tiny_synthetic_run_writes_a_record(tmp_path: Path) -> None:
    record, _ = experiment.run(config("synthetic", "budget.max_units=3000", "budget.max_seconds=None"), tmp_path,
                               progress_bar=False)
    assert record["data"]["synthetic"] and record["task"]["unit"] == "frames"
    assert record["reference"]["name"] == "most-frequent-transcript" and 0 <= record["metrics"]["test"]["cer"]
