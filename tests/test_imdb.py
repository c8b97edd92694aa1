"""The IMDB task: the real archive through a loopback server, safe extraction, tokenization, bucketing,
metrics against an independent count, pooling that ignores padding, the synthetic source and its
bag-of-words reference line, which a short recurrent run beats.

The archives served here are crafted by the tests in the official aclImdb layout: a test of the mechanics,
never an IMDB benchmark.
"""
from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

import tasks.imdb
from baselines import backbone_factory
from suite import experiment
from suite.config import build_config
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, data_dir, md5sum
from suite.registry import MODELS, load_plugins
from tasks.batching import bucket_order
from tasks.imdb import IMDB, build_vocab, tokenize
from tasks.synthetic_reviews import ReviewSource

if TYPE_CHECKING:
    from conftest import Origin

TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.emb_size=16", "options.synthetic_reviews=400",
        "train.batch_size=8", "train.eval_batch_size=16"]
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("cache")  # every test: its own empty cache, no mirror (conftest.py)

load_plugins()


def make_task(source: str = "synthetic", *overrides: str, model: str = "lstm", seed: int = 1) -> IMDB:
    cfg = build_config("imdb", model, budget="smoke", overrides=[*TINY, *overrides], options_cls=IMDB.Options,
                       presets=IMDB.presets, source=source, device="cpu", seed=seed)
    task = IMDB(cfg, CPU)
    task.prepare()
    return task


def make_model(task: IMDB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build(backbone_factory(MODELS[task.cfg.model], task.cfg.backbone, task.causal)).eval()


# ---------------------------------------------------------------- the real source


def review(split: str, label: str, i: int) -> str:
    word = "wonderful" if label == "pos" else "terrible"
    return f"Review {i} of {split}.<br /><br />It was {word}, truly {word}!"


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def official(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small aclImdb_v1.tar.gz in the official layout (20 train and 6 test reviews per class)."""
    root = tmp_path / "origin"
    root.mkdir()
    members = {f"aclImdb/{split}/{label}/{i}_{7 if label == 'pos' else 2}.txt": review(split, label, i).encode()
               for split, n in (("train", 20), ("test", 6)) for label in ("neg", "pos") for i in range(n)}
    members["aclImdb/README"] = b"Large Movie Review Dataset v1.0\n"
    write_tar(root / "aclImdb_v1.tar.gz", members)
    monkeypatch.setattr(tasks.imdb, "FILE", RemoteFile("aclImdb_v1.tar.gz", md5sum(root / "aclImdb_v1.tar.gz")))
    return root


def test_real_archive_is_downloaded_checked_extracted_and_read(
        official: Path, serve: Callable[[Path], Origin], monkeypatch: pytest.MonkeyPatch) -> None:
    origin = serve(official)
    monkeypatch.setattr(tasks.imdb, "ORIGIN", origin.url)
    task = make_task("real")
    info = task.data_info()
    assert info["samples"] == {"train": 36, "valid": 4, "test": 12}
    assert info["valid_split"] == {"fraction": 0.1, "seed": 0, "size": 4}
    assert info["files"] == {"aclImdb_v1.tar.gz": tasks.imdb.FILE.checksum}
    assert (data_dir() / "imdb" / "aclImdb_v1" / "aclImdb" / "train" / "pos" / "0_7.txt").is_file()
    assert sorted(np.bincount(task.labels["test"])) == [6, 6]
    word = {0: "terrible", 1: "wonderful"}
    for ids, label in zip(task.ids["train"], task.labels["train"]):
        assert task.vocab[word[int(label)]] in ids.tolist()  # labels come from the folder
    assert "<" not in task.vocab and "br" not in task.vocab  # <br /> is stripped
    make_task("real")
    assert origin.requests["aclImdb_v1.tar.gz"] == 1  # the second run uses the cache


def test_validation_split_is_fixed_across_run_seeds(official: Path, serve: Callable[[Path], Origin],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.imdb, "ORIGIN", serve(official).url)
    first = make_task("real")
    assert [x.tolist() for x in first.ids["valid"]] == [x.tolist() for x in make_task("real", seed=7).ids["valid"]]
    moved = make_task("real", "options.split_seed=1")
    assert [x.tolist() for x in moved.ids["valid"]] != [x.tolist() for x in first.ids["valid"]]


def test_an_archive_with_an_escaping_member_is_refused(tmp_path: Path, serve: Callable[[Path], Origin],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    write_tar(root / "aclImdb_v1.tar.gz", {"aclImdb/train/pos/0_9.txt": b"fine", "../../escaped.txt": b"evil"})
    monkeypatch.setattr(tasks.imdb, "FILE", RemoteFile("aclImdb_v1.tar.gz", md5sum(root / "aclImdb_v1.tar.gz")))
    monkeypatch.setattr(tasks.imdb, "ORIGIN", serve(root).url)
    with pytest.raises(DataError, match="refusing to extract"):
        make_task("real")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_archive_without_reviews_names_the_folder(tmp_path: Path, serve: Callable[[Path], Origin],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    write_tar(root / "aclImdb_v1.tar.gz", {"aclImdb/README": b"nothing here"})
    monkeypatch.setattr(tasks.imdb, "FILE", RemoteFile("aclImdb_v1.tar.gz", md5sum(root / "aclImdb_v1.tar.gz")))
    monkeypatch.setattr(tasks.imdb, "ORIGIN", serve(root).url)
    with pytest.raises(DataError, match=r"train/neg holds no reviews"):
        make_task("real")


# ---------------------------------------------------------------- tokens, vocabulary, batches


def test_tokenizer_lowercases_strips_breaks_and_splits_punctuation() -> None:
    assert tokenize("It's GREAT!<br /><br />Not bad, 10/10.") == [
        "it's", "great", "!", "not", "bad", ",", "10", "/", "10", "."]


def test_vocab_is_pad_unk_then_frequency_with_ties_by_word() -> None:
    vocab = build_vocab([["b", "a", "c"], ["a", "c", "d"]], size=4)
    assert vocab == {"<pad>": 0, "<unk>": 1, "a": 2, "c": 3}
    task = make_task("synthetic", "options.vocab_size=20", "options.max_len=30")
    assert len(task.vocab) == 20 and max(len(x) for x in task.ids["train"]) == 30
    assert any((x == 1).any() for x in task.ids["train"])  # rarer words became <unk>


def test_tokens_are_cached_by_texts_and_settings(cache: Path) -> None:
    first = make_task("synthetic")  # the cache fixture starts empty
    files = list((cache / "imdb" / "tokens").iterdir())
    assert len(files) == 1
    again = make_task("synthetic")  # from the cache
    assert again.vocab == first.vocab and list((cache / "imdb" / "tokens").iterdir()) == files
    for split in ("train", "valid", "test"):  # the first run tokenized afresh, the second loaded
        assert all(np.array_equal(a, b) for a, b in zip(again.ids[split], first.ids[split], strict=True))
    make_task("synthetic", "options.vocab_size=30")
    make_task("synthetic", "options.synthetic_seed=3")
    assert len(list((cache / "imdb" / "tokens").iterdir())) == 3


def test_bucketing_covers_every_example_once_with_minimal_padding() -> None:
    task = make_task("synthetic")
    lengths, total = task.lengths["train"], len(task.labels["train"])
    batches = list(task.train_batches(0))
    for epoch in (0, 1):
        seen = np.concatenate(bucket_order(lengths, 8, 20, np.random.default_rng([1, epoch])))
        assert sorted(seen.tolist()) == list(range(total))
    assert sum(len(b[2]) for b in batches) == total == task.units_per_epoch()
    padded = sum(tokens.numel() for tokens, _, _ in batches)
    for tokens, lens, _ in batches:
        assert tokens.size(1) == int(lens.max())  # no column of padding only
        assert all((tokens[i, int(n):] == 0).all() and (tokens[i, :int(n)] != 0).all() for i, n in enumerate(lens))
    rng = np.random.default_rng(0)  # the same batch size without bucketing
    random_pad = sum(lengths[b].max() * len(b) for b in np.array_split(rng.permutation(total), len(batches)))
    assert padded - lengths.sum() < 0.25 * (random_pad - lengths.sum())


def test_epochs_are_deterministic_in_seed_and_epoch() -> None:
    task = make_task("synthetic")
    first = [b[2].tolist() for b in task.train_batches(0)]
    assert first == [b[2].tolist() for b in task.train_batches(0)]
    assert [b[0].shape for b in task.train_batches(1)] != [b[0].shape for b in task.train_batches(0)]


# ---------------------------------------------------------------- metrics and pooling


def hand_metrics(pred: list[int], gold: list[int]) -> tuple[float, float]:
    accuracy = sum(p == g for p, g in zip(pred, gold)) / len(gold)
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        precision = tp / max(1, sum(p == c for p in pred))
        recall = tp / max(1, sum(g == c for g in gold))
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return accuracy, sum(f1s) / 2


@pytest.mark.parametrize("model_name", ["lstm", "brnn"])
def test_accuracy_and_macro_f1_match_an_independent_count(model_name: str) -> None:
    task = make_task("synthetic", model=model_name)
    model = make_model(task)
    metrics = task.evaluate(model, "valid")
    pred, gold = task.predict(model, "valid")
    assert sorted(gold.tolist()) == sorted(task.labels["valid"].tolist())
    accuracy, macro_f1 = hand_metrics(pred.tolist(), gold.tolist())
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx(macro_f1, abs=1e-9)
    # class 1: precision 1/3, recall 1 -> F1 1/2; class 0: precision 1, recall 1/3 -> F1 1/2
    assert tasks.imdb.classification_metrics(torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 0])) == \
        pytest.approx({"accuracy": 0.5, "macro_f1": 0.5})


@pytest.mark.parametrize("model_name, pooling", [(m, p) for m in ("lstm", "brnn", "resrnn")
                                                 for p in ("last", "mean", "max")])
def test_pooling_ignores_padding(model_name: str, pooling: str) -> None:
    task = make_task("synthetic", f"options.pooling={pooling}", model=model_name)
    model = make_model(task)
    tokens, lengths, _ = next(iter(task.eval_batches("valid")))
    tokens, lengths = torch.cat([tokens, tokens.new_zeros(tokens.size(0), 5)], 1), lengths.clone()
    lengths[0] = lengths[0] - 3  # uneven lengths with padding inside the batch
    tokens[0, lengths[0]:] = 0
    with torch.no_grad():
        out = model(tokens, lengths)
        noisy = tokens.clone()
        pad = torch.arange(tokens.size(1))[None, :] >= lengths[:, None]
        noisy[pad] = torch.randint(2, len(task.vocab), (int(pad.sum()),))
        assert torch.allclose(model(noisy, lengths), out, atol=1e-6)  # padded values do not matter
        for i in (0, 1):
            alone = model(tokens[i:i + 1, :lengths[i]], lengths[i:i + 1])
            assert torch.allclose(alone, out[i:i + 1], atol=1e-5)  # the same as without any padding


def test_bad_pooling_is_refused() -> None:
    with pytest.raises(UserError, match="options.pooling"):
        make_task("synthetic", "options.pooling=sum")


# ---------------------------------------------------------------- synthetic source, reference line, a run


def test_synthetic_source_is_deterministic_and_fast() -> None:
    a, b, other = make_task(), make_task(), make_task("synthetic", "options.synthetic_seed=1")
    assert a.data_info()["checksums"] == b.data_info()["checksums"] != other.data_info()["checksums"]
    assert all(np.array_equal(x, y) for x, y in zip(a.ids["train"], b.ids["train"]))
    start = time.perf_counter()
    ReviewSource().sample(10_000)
    assert time.perf_counter() - start < 2.0


def test_synthetic_labels_follow_negation_and_contrast() -> None:
    texts, labels = ReviewSource(seed=3).sample(300)
    for text, label in zip(texts, labels):
        verdicts = [s for s in text.split(" . ") if " was " in s and s.split(" was ")[1].split()[0] not in
                    ("written", "shot", "released")]
        last = verdicts[-1].rstrip(" .").split()
        positive = last[-1] in ("good", "great", "superb", "moving", "brilliant", "charming", "funny", "gripping")
        assert int(positive != (last[-2] == "not")) == label
        assert (len(verdicts) == 2) == verdicts[-1].startswith("but in the end")


def test_the_bag_of_words_is_at_chance_on_the_synthetic_source() -> None:
    """Every word is as frequent under both labels, so the linear reference cannot beat a coin."""
    task = make_task("synthetic", "options.synthetic_reviews=4000")
    reference = task.reference()
    assert reference["name"] == "bag-of-words"
    assert abs(reference["test"]["accuracy"] - 0.5) < 0.05 and abs(reference["valid"]["accuracy"] - 0.5) < 0.06


@pytest.mark.slow
@pytest.mark.parametrize("model_name", experiment.applicable_models(IMDB))
def test_every_baseline_beats_the_bag_of_words_in_a_smoke_run(model_name: str, tmp_path: Path) -> None:
    """The smoke preset, capped by samples rather than seconds so that the result does not depend on the
    machine's speed (on two cores 24,000 samples take 5 to 20 seconds)."""
    cfg = build_config("imdb", model_name, budget="smoke", overrides=["budget.max_units=24000",
                                                                      "budget.max_seconds=None"],
                       options_cls=IMDB.Options, presets=IMDB.presets, source="synthetic", device="cpu")
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    reference = record["reference"]
    assert record["status"] == "completed" and reference["test"]["accuracy"] < 0.56
    assert record["data"]["synthetic"] and record["data"]["valid_split"]["size"] == 800
    # Five points is over four standard errors on the 2,000 synthetic test reviews. The Elman rnn learns the verdict
    # rule late, at a step that depends on the CPU's kernels: seed 1 ends at 79 % on an AMD EPYC and at 58 % on
    # an Intel Xeon after 24,000 samples (100 % after 48,000), so a larger margin would test the CPU.
    assert record["metrics"]["test"]["accuracy"] > reference["test"]["accuracy"] + 0.05
