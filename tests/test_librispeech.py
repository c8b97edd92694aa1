"""The LibriSpeech task: an existing copy and the download path in the official layout (real FLAC files
written here), CTC training and greedy decoding against an independent collapse, WER against the
reference line, and the synthetic espeak-ng source on which every baseline falls well below it.

The audio written here is tones and noise in the official layout: a test of the mechanics, never a
LibriSpeech benchmark.
"""
from __future__ import annotations

import hashlib
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


@pytest.fixture
def librispeech_origin(tmp_path: Path, serve: Callable[[Path], Origin], monkeypatch: pytest.MonkeyPatch) -> Origin:
    """A loopback server holding train-clean-100, dev-clean and test-clean archives in the official layout."""
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
    return origin


def test_the_download_path_checks_extracts_and_reads(librispeech_origin: Origin) -> None:
    task = make_task("real")
    assert task.data_info()["utterances"] == {"train": 4, "valid": 2, "test": 2}
    assert task.texts["valid"] == ["A CAT SAT", "HELLO WORLD"]
    requests = librispeech_origin.requests
    assert all(n == 1 for n in requests.values()) and len(requests) == 3
    make_task("real")
    assert sum(requests.values()) == 3  # then the cache


def test_a_truncated_download_is_fetched_once_more(librispeech_origin: Origin) -> None:
    librispeech_origin.damage["dev-clean.tar.gz"] = 1
    assert make_task("real").texts["valid"] == ["A CAT SAT", "HELLO WORLD"]
    assert librispeech_origin.requests["dev-clean.tar.gz"] == 2


def test_a_corrupt_archive_names_the_file_and_both_checksums(librispeech_origin: Origin) -> None:
    librispeech_origin.damage["dev-clean.tar.gz"] = 2
    expected = tasks.librispeech_data.SUBSETS["dev-clean"].checksum
    with pytest.raises(DataError, match=f"dev-clean.tar.gz downloaded from .* fails its checksum twice: "
                                        f"expected md5 {expected}"):
        make_task("real")


def test_a_malformed_archive_with_the_right_checksum_is_refused(librispeech_origin: Origin,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = librispeech_origin.root / "dev-clean.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    subsets = {**tasks.librispeech_data.SUBSETS, "dev-clean": RemoteFile("dev-clean.tar.gz", md5sum(path))}
    monkeypatch.setattr(tasks.librispeech_data, "SUBSETS", subsets)
    with pytest.raises(DataError, match="dev-clean.tar.gz"):
        make_task("real")


def test_a_dead_server_names_the_mirror_fix(dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.librispeech_data, "ORIGIN", dead_url)
    with pytest.raises(DataError, match=r"train-clean-100.tar.gz.*SUITE_DATA_MIRROR"):
        make_task("real")


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
    from tasks.ctc_beam import CTCBeamSearch
    from tasks.speech_text import ctc_greedy, encode
    from tasks.speech_units import Characters

    path = [0, *encode("A CAT"), 0, 0, *encode("SAT")]  # blanks between and after words
    log_probs = torch.full((1, len(path), len(CHARS)), -20.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    lengths = torch.tensor([len(path)])
    greedy = [decode_ids(ctc_greedy(log_probs, lengths)[0])]
    assert CTCBeamSearch(Characters(), 4)(log_probs, lengths) == ["A CATSAT"] == greedy
    for name, n in (("train-clean-100", 2), ("dev-clean", 2), ("test-clean", 1)):
        write_subset(tmp_path / "copy", name, n)
    task = make_task("real", f"options.copy_dir='{tmp_path / 'copy'}'", "options.beam=4")
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone)).eval()
    assert set(task.evaluate(model, "valid")) == {"wer", "cer"}


def write_copy(root: Path, sizes: tuple[int, int, int] = (4, 2, 2)) -> str:
    """An existing copy holding train-clean-100, dev-clean and test-clean; returns its option override."""
    for name, n in zip(("train-clean-100", "dev-clean", "test-clean"), sizes):
        write_subset(root, name, n)
    return f"options.copy_dir='{root}'"


def test_cached_features_equal_fresh_ones_and_are_computed_once(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    copy = write_copy(tmp_path / "copy")
    fresh = make_task("real", copy, "options.feature_cache=False")
    cached = make_task("real", copy)
    for i in range(len(fresh.texts["train"])):
        want = fresh._features("train", i, False)
        got = cached._features("train", i, False)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-3, atol=4e-3)  # float16 storage: ~3 significant digits
    assert "computing log-mel frames of 4 train utterances" in capsys.readouterr().err
    again = make_task("real", copy, "options.stack=2")  # stacking happens after the cache: same frames
    assert torch.equal(again._split_features("train")[0], cached._split_features("train")[0])
    assert "computing" not in capsys.readouterr().err
    flac = sorted((tmp_path / "copy").rglob("train-clean-100/**/*.flac"))[0]
    soundfile.write(flac, np.zeros(12000), 16000)  # new audio under the same name: recomputed
    changed, want = make_task("real", copy), make_task("real", copy, "options.feature_cache=False")
    assert torch.allclose(changed._features("train", 0, False), want._features("train", 0, False), atol=4e-3)
    assert changed._features("train", 0, False).shape[0] != cached._features("train", 0, False).shape[0]
    assert "computing log-mel frames of 4 train utterances" in capsys.readouterr().err


def test_spec_augment_masks_cached_training_features_only(tmp_path: Path) -> None:
    task = make_task("real", write_copy(tmp_path / "copy"), "options.stack=1")
    torch.manual_seed(0)
    masked = [task._features("train", i, True) for i in range(4)]
    plain = [task._features("train", i, False) for i in range(4)]
    assert any(not torch.equal(m, p) for m, p in zip(masked, plain))
    assert all(((m == p) | (m == 0)).all() for m, p in zip(masked, plain))  # masks only zero cells


def test_bpe_units_encode_the_transcripts_and_train(tmp_path: Path) -> None:
    task = make_task("real", write_copy(tmp_path / "copy"), "options.units='bpe'", "options.bpe_vocab=40")
    assert task.data_info()["units"] == "bpe" and task.data_info()["symbols"] == task.units.size <= 40
    assert [task.units.decode(t.tolist()) for t in task.targets["train"]] == task.texts["train"]
    assert len(task.targets["train"][0]) < len(task.texts["train"][0])  # pieces are longer than characters
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone))
    assert model.head.out_features == task.units.size
    loss, _, _ = task.loss(model, next(task.train_batches(0)), None)
    assert torch.isfinite(loss)
    assert set(task.evaluate(model.eval(), "valid")) == {"wer", "cer"}


def test_a_language_model_restricts_the_words_and_is_named_in_the_record(tmp_path: Path) -> None:
    lm = tmp_path / "words.arpa"
    words = ["HELLO", "WORLD", "A", "CAT", "SAT"]
    unigrams = [f"-0.7\t{w}\t0.0" for w in ["<s>", "</s>", *words]]
    bigrams = "\n\\2-grams:\n-0.1\tA CAT\n"  # KenLM loads bigram models and up
    lm.write_text("\\data\\\nngram 1=7\nngram 2=1\n\n\\1-grams:\n" + "\n".join(unigrams) + "\n" + bigrams
                  + "\n\\end\\\n")
    task = make_task("real", write_copy(tmp_path / "copy"), "options.beam=4", f"options.lm='{lm}'")
    digest = hashlib.sha256(lm.read_bytes()).hexdigest()
    assert task.data_info()["language_model"] == {"file": str(lm), "sha256": digest}
    torch.manual_seed(0)
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone)).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.randn(len(CHARS)) * 3)  # varied symbols: random letters without the LM
    hyps = task.transcribe(model, "valid")
    assert all(set(h.split()) <= set(words) for h in hyps)
    assert set(task.evaluate(model, "test")) == {"wer", "cer"}


def test_language_model_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="options.lm needs beam search: set options.beam"):
        config("real", "options.lm='x.arpa'")
    with pytest.raises(DataError, match=r"options.lm: .*nope.arpa does not exist: give the path of an ARPA"):
        make_task("real", write_copy(tmp_path / "copy"), "options.beam=4", f"options.lm='{tmp_path / 'nope.arpa'}'")
    with pytest.raises(UserError, match="unknown options.units 'words': choose from chars, bpe"):
        config("real", "options.units='words'")


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
