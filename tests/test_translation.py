"""The translation task: Multi30k through a loopback server, user parallel files, BPE, the attentional
encoder-decoder (padding, beam scores against teacher forcing), metrics against sacrebleu run here on the
written hypotheses, heatmaps, and the synthetic pair on which attention beats its no-attention twin.

Archives served here are crafted by the tests in the official Multi30k layout: a test of the mechanics,
never a Multi30k benchmark.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import sacrebleu
import torch
from matplotlib.image import imread

import tasks.translation
from baselines import backbone_factory
from suite import experiment
from suite.config import build_config
from suite.decoding import beam_search, greedy_search
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile
from suite.registry import MODELS, load_plugins
from tasks.subwords import BOS, EOS, train_or_load_bpe
from tasks.translation import Translation, read_parallel

if TYPE_CHECKING:
    from conftest import Origin

TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.emb_size=16", "options.synthetic_pairs=300",
        "options.vocab_size=120", "train.batch_size=8", "train.eval_batch_size=50", "options.heatmaps=2",
        "options.reference_units=600", "options.synthetic_eval_pairs=100"]
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("cache")  # every test: its own empty cache, no mirror (conftest.py)

load_plugins()


def config(source: str = "synthetic", *overrides: str, model: str = "gru", seed: int = 1):
    return build_config("translation", model, budget="smoke", overrides=[*TINY, *overrides],
                        options_cls=Translation.Options, presets=Translation.presets, source=source, device="cpu",
                        seed=seed)


def make_task(source: str = "synthetic", *overrides: str, model: str = "gru") -> Translation:
    task = Translation(config(source, *overrides, model=model), CPU)
    task.prepare()
    return task


def make_model(task: Translation, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build(backbone_factory(MODELS[task.cfg.model], task.cfg.backbone, task.causal)).eval()


# ---------------------------------------------------------------- real sources


def write_tar(path: Path, members: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sentences(prefix: str, n: int) -> dict[str, str]:
    de = "".join(f"Ein Hund {i} läuft über die Straße.\n" for i in range(n))
    en = "".join(f"A dog {i} runs across the street.\n" for i in range(n))
    return {f"{prefix}.de": de, f"{prefix}.en": en + "\n"}  # a trailing blank line, as some files have


@pytest.fixture
def multi30k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Callable[[Path], Origin]) -> Origin:
    """The three WMT16 multimodal archives in their layout (30 / 6 / 5 pairs), served on 127.0.0.1."""
    root = tmp_path / "origin"
    root.mkdir()
    files = {}
    for split, (remote, prefix), n in zip(("train", "valid", "test"), tasks.translation.MULTI30K.values(),
                                          (30, 6, 5)):
        write_tar(root / remote.relpath, sentences(prefix, n))
        sha = hashlib.sha256((root / remote.relpath).read_bytes()).hexdigest()
        files[split] = (RemoteFile(remote.relpath, sha), prefix)
    monkeypatch.setattr(tasks.translation, "MULTI30K", files)
    origin = serve(root)
    monkeypatch.setattr(tasks.translation, "MULTI30K_ORIGIN", origin.url)
    return origin


def test_multi30k_is_downloaded_checked_extracted_and_read_in_either_direction(multi30k: Origin) -> None:
    task = make_task("real")
    info = task.data_info()
    assert info["pairs"] == {"train": 30, "valid": 6, "test": 5} and info["direction"] == "de-en"
    assert info["files"] == {r.relpath: r.checksum for r, _ in tasks.translation.MULTI30K.values()}
    assert task.splits["test"].src_text[4] == "Ein Hund 4 läuft über die Straße."
    assert task.splits["test"].tgt_text[4] == "A dog 4 runs across the street."
    assert info["sacrebleu"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    reverse = make_task("real", "options.src_lang='en'", "options.tgt_lang='de'")
    assert reverse.splits["valid"].src_text == task.splits["valid"].tgt_text
    assert all(n == 1 for n in multi30k.requests.values()) and len(multi30k.requests) == 3  # then the cache


def test_multi30k_is_german_english_only(multi30k: Origin) -> None:
    with pytest.raises(UserError, match="German-English"):
        make_task("real", "options.src_lang='fr'")


def test_a_corrupt_multi30k_archive_names_the_file_and_the_fix(multi30k: Origin, tmp_path: Path) -> None:
    remote, _ = tasks.translation.MULTI30K["valid"]
    (tmp_path / "origin" / remote.relpath).write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match=f"validation.tar.gz downloaded from .* fails its checksum twice: "
                                        f"expected sha256 {remote.checksum}"):
        make_task("real")


def test_a_malformed_archive_with_the_right_checksum_is_refused(multi30k: Origin, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "origin" / "validation.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    files = dict(tasks.translation.MULTI30K)
    files["valid"] = (RemoteFile("validation.tar.gz", hashlib.sha256(path.read_bytes()).hexdigest()), "val")
    monkeypatch.setattr(tasks.translation, "MULTI30K", files)
    with pytest.raises(DataError, match="validation.tar.gz"):
        make_task("real")


def test_a_file_missing_after_extraction_names_the_folder_to_delete(multi30k: Origin, cache: Path) -> None:
    make_task("real")
    (cache / "multi30k" / "validation" / "val.en").unlink()
    with pytest.raises(DataError, match=r"val.en is not in validation.tar.gz as extracted in .*delete that folder"):
        make_task("real")


def test_parallel_files_plug_in_and_misaligned_ones_are_refused_with_both_counts(tmp_path: Path) -> None:
    folder = tmp_path / "iwslt"
    folder.mkdir()
    for split, n in (("train", 20), ("valid", 4), ("test", 3)):
        (folder / f"{split}.fr").write_text("".join(f"le chat {i} dort.\n" for i in range(n)))
        (folder / f"{split}.en").write_text("".join(f"the cat {i} sleeps.\n" for i in range(n)))
    (folder / "train.fr").write_text((folder / "train.fr").read_text() + "\nun chat\n")  # an empty source line
    (folder / "train.en").write_text((folder / "train.en").read_text() + "an empty source\na cat\n")
    (folder / "test.fr").write_text((folder / "test.fr").read_text() + "\n")  # ends in an empty line: dropped
    task = make_task("real", "options.dataset='parallel'", f"options.parallel_dir='{folder}'",
                     "options.src_lang='fr'", "options.tgt_lang='en'")
    info = task.data_info()
    assert info["pairs"] == {"train": 21, "valid": 4, "test": 3} and info["train_pairs_dropped"]["count"] == 1
    assert task.splits["train"].src_text[20] == "" and len(task.splits["train"].src) == 21
    (folder / "valid.en").write_text("one line\n")
    with pytest.raises(DataError, match=r"valid.fr has 4 lines but .*valid.en has 1: parallel files must be aligned"):
        read_parallel(folder / "valid.fr", folder / "valid.en")
    (folder / "test.fr").unlink()
    with pytest.raises(DataError, match=r"test.fr is missing"):
        read_parallel(folder / "test.fr", folder / "test.en")
    with pytest.raises(UserError, match="options.parallel_dir"):
        make_task("real", "options.dataset='parallel'")


def test_a_dead_server_is_one_line_exit_2_naming_the_file(tmp_path: Path, dead_url: str) -> None:
    env = {**os.environ, "SUITE_DATA_DIR": str(tmp_path / "cache"), "SUITE_DATA_MIRROR": dead_url}
    proc = subprocess.run([sys.executable, "-m", "suite.cli", "run", "--task", "translation", "--model", "gru",
                           "--results", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "training.tar.gz" in errors[0] and "--source synthetic" in errors[0]


# ---------------------------------------------------------------- subwords


def test_bpe_round_trips_text_and_is_cached_by_settings_and_data(cache: Path) -> None:
    src = ["Ein Hund läuft über die Straße.", "Zwei  Katzen schlafen."]
    tgt = ["A dog runs across the street.", "Two cats sleep."]
    joint, same = train_or_load_bpe(src * 20, tgt * 20, 80, True, "abc")
    assert joint is same and all(joint.decode(joint.encode(t).ids) == t for t in src + tgt)
    files = sorted((cache / "bpe").iterdir())
    mtime = files[0].stat().st_mtime_ns
    again, _ = train_or_load_bpe([], [], 80, True, "abc")  # from the cache: no data needed
    assert again.get_vocab() == joint.get_vocab() and files[0].stat().st_mtime_ns == mtime
    s, t = train_or_load_bpe(src * 20, tgt * 20, 80, False, "abc")
    assert "▁Hund" in s.get_vocab() and "▁Hund" not in t.get_vocab() and len(list((cache / "bpe").iterdir())) == 3
    assert [joint.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


# ---------------------------------------------------------------- model, decoding, metrics


@pytest.mark.parametrize("model_name, attention", [("gru", "additive"), ("lstm", "multiplicative"),
                                                   ("brnn", "additive"), ("resrnn", "none")])
def test_padding_never_changes_a_translation(model_name: str, attention: str) -> None:
    task = make_task("synthetic", f"options.attention='{attention}'", model=model_name)
    model = make_model(task)
    index, (src, lengths, tgt_in, _) = next(task.eval_batches("valid"))
    src, lengths = torch.cat([src, src.new_zeros(src.size(0), 4)], 1), lengths.clone()
    with torch.no_grad():
        batch = torch.log_softmax(model(src, lengths, tgt_in), -1)
        for i in (0, len(index) - 1):
            n, m = int(lengths[i]), int((tgt_in[i] != 0).sum())
            alone = torch.log_softmax(model(src[i:i + 1, :n], lengths[i:i + 1], tgt_in[i:i + 1, :m]), -1)
            assert torch.allclose(alone, batch[i:i + 1, :m], atol=1e-5)


def teacher_forced_logprob(model: torch.nn.Module, src: torch.Tensor, n: int, tokens: list[int],
                           finished: bool) -> float:
    out = [*tokens, EOS] if finished else tokens
    tgt_in = torch.tensor([[BOS, *out[:-1]]]) if out else torch.tensor([[BOS]])
    logp = torch.log_softmax(model(src[None, :n], torch.tensor([n]), tgt_in).float(), -1)[0]
    return float(sum(logp[t, tok] for t, tok in enumerate(out)))


@pytest.mark.parametrize("model_name, attention", [("gru", "additive"), ("brnn", "multiplicative"),
                                                   ("lstm", "none")])
def test_beam_scores_are_teacher_forced_log_probs_and_beam_1_is_greedy(model_name: str, attention: str) -> None:
    task = make_task("synthetic", f"options.attention='{attention}'", model=model_name)
    model = make_model(task).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(4):  # briefly trained, so that hypotheses end with EOS at different lengths
        for batch in task.train_batches(epoch):
            optimizer.zero_grad()
            task.loss(model, batch, None)[0].backward()
            optimizer.step()
    model.eval()
    _, (src, lengths, _, _) = next(task.eval_batches("valid"))
    with torch.no_grad():
        state = model.init_state(src, lengths)
        greedy = greedy_search(model.step, state, BOS, EOS, 12)
        beam = beam_search(model.step, state, BOS, EOS, 12, beam=5, length_penalty=0.6)
        ended = greedy.finished + beam.finished
        assert any(ended) and not all(ended)  # both the EOS and the max_len endings are checked
        assert beam_search(model.step, state, BOS, EOS, 12, beam=1, length_penalty=0.6) == greedy
        for found in (greedy, beam):
            for i in range(src.size(0)):
                expected = teacher_forced_logprob(model, src[i], int(lengths[i]), found.tokens[i], found.finished[i])
                assert found.scores[i] == pytest.approx(expected, abs=1e-4)


def test_metrics_equal_sacrebleu_on_the_written_hypotheses_and_heatmaps_are_pngs(tmp_path: Path) -> None:
    cfg = config("synthetic", "budget.max_units=3000", "budget.max_seconds=None")
    record, path = experiment.run(cfg, tmp_path, progress_bar=False)
    task = make_task("synthetic")
    for split in ("valid", "test"):
        hyps = (tmp_path / record["artifacts"][f"{split}_hypotheses"]).read_text(encoding="utf-8").split("\n")[:-1]
        refs = task.splits[split].tgt_text
        assert len(hyps) == len(refs) == 100
        assert record["metrics"][split]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
        assert record["metrics"][split]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    model = make_model(task)
    model.load_state_dict(torch.load(tmp_path / record["checkpoint"])["model"])
    with torch.no_grad():
        logits = [(model(src, lengths, tgt_in), y) for _, (src, lengths, tgt_in, y) in task.eval_batches("test")]
    nll = sum(float(torch.nn.functional.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=0, reduction="sum"))
              for lg, y in logits)
    count = sum(int((y != 0).sum()) for _, y in logits)
    assert record["metrics"]["test"]["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert record["metrics"]["test"]["ppl"] == pytest.approx(np.exp(nll / count), rel=1e-5)
    for i in (0, 1):
        png = tmp_path / record["artifacts"][f"attention_valid_{i}"]
        assert png.parent == path.with_suffix("") and imread(png).ndim == 3
    assert record["reference"]["name"] == "no-attention" and "bleu" in record["reference"]["test"]
    assert record["data"]["synthetic"] and record["data"]["sacrebleu"]["bleu"].startswith("nrefs:1")


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="options.attention must be one of additive, multiplicative, none"):
        config("synthetic", "options.attention='dot'")
    with pytest.raises(UserError, match="must differ"):
        config("synthetic", "options.src_lang='en'")


# ---------------------------------------------------------------- the synthetic pair: attention matters


@pytest.mark.slow
@pytest.mark.parametrize("model_name", experiment.applicable_models(Translation))
def test_every_baseline_with_attention_clearly_beats_its_no_attention_twin(model_name: str, tmp_path: Path) -> None:
    """The smoke preset, capped by units rather than seconds so that the result does not depend on the
    machine's speed; the twin trains for as many tokens."""
    cfg = build_config("translation", model_name, budget="smoke", options_cls=Translation.Options,
                       presets=Translation.presets, source="synthetic", device="cpu",
                       overrides=["budget.max_units=250000", "budget.max_seconds=None",
                                  "options.reference_units=250000", "options.heatmaps=0"])
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    bleu, reference = record["metrics"]["test"]["bleu"], record["reference"]["test"]["bleu"]
    assert record["status"] == "completed" and bleu > reference + 20, (bleu, reference)
    assert np.isfinite(record["metrics"]["test"]["ppl"]) and record["metrics"]["test"]["ppl"] < \
        record["reference"]["test"]["ppl"]
