"""The PTB task: the real files, their download through a real server, batching, perplexity against an
independent computation, the synthetic source and its known entropy rate, the reference line, FLOPs, tying.

ptb.train.txt is not available here: tests that need a training split serve the first lines of
ptb.valid.txt under that name (with its own md5 in the file table). Such a run is a test of the
mechanics, never a PTB benchmark.
"""
from __future__ import annotations

import copy
import hashlib
import math
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

import tasks.ptb
from baselines import backbone_factory
from suite.config import build_config
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, data_dir, md5sum
from suite.registry import MODELS, load_plugins
from tasks.ptb import PTB, read_words
from tasks.synthetic_lm import ClassMarkovSource

if TYPE_CHECKING:
    from conftest import Origin  # the loopback HTTP server, shared with test_fetch.py

SHARED_PTB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"
VALID_MD5 = "aa0affc06ff7c36e977d7cd49e3839bf"
TEST_MD5 = "8b80168b89c18661a38ef683c0dc3721"
NAMES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
TRAIN_LINES = 300
"""Lines of ptb.valid.txt served as ptb.train.txt (1,747 types: a small, fast decoder)."""
TINY = ["backbone.hidden_size=16", "options.emb_size=16", "options.synthetic_tokens=20000"]
CPU = torch.device("cpu")

needs_real = pytest.mark.skipif(
    not all((SHARED_PTB / n).is_file() for n in NAMES[1:]), reason=f"no shared PTB copy at {SHARED_PTB}"
)
pytestmark = pytest.mark.usefixtures("cache")  # every test: its own empty cache, no mirror (conftest.py)

load_plugins()


def make_task(source: str, *overrides: str, model: str = "lstm") -> PTB:
    cfg = build_config("ptb", model, budget="smoke", overrides=[*TINY, *overrides], options_cls=PTB.Options,
                       presets=PTB.presets, source=source, device="cpu")
    task = PTB(cfg, CPU)
    task.prepare()
    return task


def make_model(task: PTB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build(backbone_factory(MODELS[task.cfg.model], task.cfg.backbone, task.causal))


def words_of(text: bytes) -> list[str]:
    """PTB tokens written out independently of tasks.ptb: each line's words, then <eos>."""
    return [w for line in text.decode().splitlines() for w in [*line.split(), "<eos>"]]


def serve_train(root: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put `data` in `root` as ptb.train.txt and make the file table expect exactly those bytes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ptb.train.txt").write_bytes(data)
    monkeypatch.setitem(tasks.ptb.FILES, "train", RemoteFile("ptb.train.txt", hashlib.md5(data).hexdigest()))


@pytest.fixture
def layout(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The official flat layout: real valid and test, the first TRAIN_LINES of valid as train."""
    if not all((SHARED_PTB / n).is_file() for n in NAMES[1:]):
        pytest.skip(f"no shared PTB copy at {SHARED_PTB}")
    root = tmp_path / "origin"
    valid = (SHARED_PTB / "ptb.valid.txt").read_bytes()
    serve_train(root, b"".join(valid.splitlines(keepends=True)[:TRAIN_LINES]), monkeypatch)
    for name in NAMES[1:]:
        shutil.copyfile(SHARED_PTB / name, root / name)
    return root


@pytest.fixture
def file_mirror(layout: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUITE_DATA_MIRROR", layout.as_uri())
    return layout


@pytest.fixture(params=[pytest.param("real", marks=needs_real), "synthetic"])
def source(request: pytest.FixtureRequest) -> str:
    """Both sources; "real" reads the layout through a file:// mirror."""
    if request.param == "real":
        request.getfixturevalue("file_mirror")
    return request.param


# ---------------------------------------------------------------- the real files


@needs_real
def test_real_files_have_the_published_sizes_and_checksums() -> None:
    valid, test = read_words(SHARED_PTB / "ptb.valid.txt"), read_words(SHARED_PTB / "ptb.test.txt")
    assert (len(valid), len(test)) == (73_760, 82_430)
    assert valid.count("<eos>") == (SHARED_PTB / "ptb.valid.txt").read_bytes().count(b"\n")
    assert valid == words_of((SHARED_PTB / "ptb.valid.txt").read_bytes())
    assert md5sum(SHARED_PTB / "ptb.valid.txt") == VALID_MD5 == tasks.ptb.FILES["valid"].checksum
    assert md5sum(SHARED_PTB / "ptb.test.txt") == TEST_MD5 == tasks.ptb.FILES["test"].checksum
    types = set(valid) | set(test)
    assert "<unk>" in types and len(types) <= 10_000


# ---------------------------------------------------------------- the real source, downloaded


def test_real_source_downloads_each_file_once_then_uses_the_cache(
        layout: Path, cache: Path, serve: Callable[[Path], Origin], monkeypatch: pytest.MonkeyPatch) -> None:
    origin = serve(layout)
    monkeypatch.setenv("SUITE_DATA_MIRROR", origin.url)
    task = make_task("real")
    assert origin.requests == Counter(dict.fromkeys(NAMES, 1))
    for name in NAMES:
        assert (cache / "ptb" / name).read_bytes() == (layout / name).read_bytes()
    again = make_task("real")
    assert origin.requests == Counter(dict.fromkeys(NAMES, 1))

    train_bytes = (layout / "ptb.train.txt").read_bytes()
    train = words_of(train_bytes)
    info = task.data_info()
    assert info["source"] == "real"
    assert info["files"] == {"ptb.train.txt": hashlib.md5(train_bytes).hexdigest(),
                             "ptb.valid.txt": VALID_MD5, "ptb.test.txt": TEST_MD5}
    assert info["tokens"] == {"train": len(train), "valid": 73_760, "test": 82_430}
    assert list(task.vocab) == list(dict.fromkeys([*train, "<unk>"]))  # order of first appearance
    assert info["vocab_size"] == len(set(train) | {"<unk>"})
    assert again.data_info() == info


def test_real_ids_decode_to_the_words_with_unseen_words_as_unk(file_mirror: Path) -> None:
    task = make_task("real")
    words = {i: w for w, i in task.vocab.items()}
    seen = set(words_of((file_mirror / "ptb.train.txt").read_bytes()))
    for split in ("train", "valid"):
        text = words_of((file_mirror / f"ptb.{split}.txt").read_bytes())
        assert [words[i] for i in task.tokens[split].tolist()] == [w if w in seen else "<unk>" for w in text]
    assert len(seen) < len(set(words_of((file_mirror / "ptb.valid.txt").read_bytes())))  # unks did occur


def test_corrupt_valid_file_fails_after_one_retry_naming_both_checksums(
        tmp_path: Path, cache: Path, serve: Callable[[Path], Origin], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "origin"
    serve_train(root, b" the cat sat on the mat\n" * 50, monkeypatch)
    bad = b" the dog sat on the mat\n" * 50
    (root / "ptb.valid.txt").write_bytes(bad)
    (root / "ptb.test.txt").write_bytes(bad)
    origin = serve(root)
    monkeypatch.setenv("SUITE_DATA_MIRROR", origin.url)
    with pytest.raises(DataError) as err:
        make_task("real")
    message = str(err.value)
    assert "ptb.valid.txt" in message
    assert VALID_MD5 in message and hashlib.md5(bad).hexdigest() in message
    assert origin.requests["ptb.train.txt"] == 1 and origin.requests["ptb.valid.txt"] == 2
    assert not (cache / "ptb" / "ptb.valid.txt").exists()


def test_dead_server_says_use_the_synthetic_source(dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_DATA_MIRROR", dead_url)
    with pytest.raises(DataError) as err:
        make_task("real")
    message = str(err.value)
    assert f"{dead_url}/ptb.train.txt" in message and "--source synthetic" in message
    assert "\n" not in message


def test_file_mirror_fills_the_cache(file_mirror: Path, cache: Path) -> None:
    task = make_task("real")
    assert task.data_info()["tokens"]["valid"] == 73_760
    assert {p.name for p in (cache / "ptb").iterdir()} == set(NAMES)
    assert md5sum(cache / "ptb" / "ptb.test.txt") == TEST_MD5


# ---------------------------------------------------------------- perplexity


def nll_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hidden: object) -> tuple[float, object]:
    """Summed -log p(y | x) through the model's parts (embedding, fused RNN, decoder), not its forward."""
    out, hidden = model.backbone.rnn(model.embed(x), hidden)  # (B, t, H)
    logp = torch.log_softmax(model.decoder(out), dim=-1)  # (B, t, V)
    return -logp.gather(-1, y.unsqueeze(-1)).sum().item(), hidden


@torch.no_grad()
def examples_perplexity(model: torch.nn.Module, ids: torch.Tensor, batch_size: int, bptt: int,
                        carry: bool = True) -> tuple[float, int]:
    """pytorch/examples word_language_model's batchify + evaluate, in float64 on a copy of the weights."""
    ref = copy.deepcopy(model).double().eval()
    nbatch = ids.size(0) // batch_size
    source = ids.narrow(0, 0, nbatch * batch_size).view(batch_size, -1).t().contiguous()  # (nbatch, B)
    total, count, hidden = 0.0, 0, None
    for i in range(0, source.size(0) - 1, bptt):
        seq_len = min(bptt, len(source) - 1 - i)
        data, targets = source[i:i + seq_len], source[i + 1:i + 1 + seq_len]  # (t, B), seq-first as there
        nll, hidden = nll_sum(ref, data.t(), targets.t(), hidden if carry else None)
        total += nll
        count += targets.numel()
    return math.exp(total / count), count


def split_ids(task: PTB, split: str) -> torch.Tensor:
    """The split's token ids rebuilt outside the task: from the served file, or by re-running the generator."""
    if task.cfg.source == "real":
        unk = task.vocab["<unk>"]
        words = read_words(data_dir() / "ptb" / f"ptb.{split}.txt")
        return torch.tensor([task.vocab.get(w, unk) for w in words])
    n, sizes = task.cfg.options.synthetic_tokens, task.data_info()["tokens"]
    stream = ClassMarkovSource(seed=task.cfg.options.synthetic_seed).sample(n + sizes["valid"] + sizes["test"])
    start = {"train": 0, "valid": n, "test": n + sizes["valid"]}[split]
    return torch.from_numpy(stream[start:start + sizes[split]])


@pytest.mark.parametrize("model_name", ["lstm", "gru"])
def test_perplexity_matches_pytorch_examples_on_the_same_weights(source: str, model_name: str) -> None:
    task = make_task(source, model=model_name)
    model = make_model(task).eval()
    ppl = task.evaluate(model, "valid")["ppl"]
    ids = split_ids(task, "valid")
    expected, count = examples_perplexity(model, ids, task.cfg.train.eval_batch_size, task.cfg.options.bptt)
    assert ppl == pytest.approx(expected, rel=1e-5)
    assert count == task.eval_units("valid") == (ids.numel() // 10 - 1) * 10


def test_perplexity_carries_the_state_across_windows() -> None:
    """Evaluating with the state reset at every window is measurably different: the check above can fail."""
    task = make_task("synthetic")
    model = make_model(task).eval()
    reset, _ = examples_perplexity(model, split_ids(task, "valid"), 10, task.cfg.options.bptt, carry=False)
    assert abs(task.evaluate(model, "valid")["ppl"] - reset) > 1e-4 * reset


# ---------------------------------------------------------------- batching and the training loss


def test_train_windows_tile_each_row_once_with_targets_shifted_by_one() -> None:
    task = make_task("synthetic", "train.batch_size=7")  # 20,000 = 7 * 2,857 + 1: the tail token is dropped
    stream, bptt = split_ids(task, "train"), task.cfg.options.bptt
    assert torch.equal(task.tokens["train"], stream)
    n = stream.numel() // 7
    batches = list(task.train_batches(0))
    assert [x.size(1) for x, _ in batches] == [bptt] * ((n - 1) // bptt) + [(n - 1) % bptt]
    for x, y in batches:
        assert x.shape == y.shape and x.size(0) == 7
        assert torch.equal(x[:, 1:], y[:, :-1])
    inputs, targets = torch.cat([x for x, _ in batches], 1), torch.cat([y for _, y in batches], 1)
    for b in range(7):
        row = stream[b * n:(b + 1) * n]
        assert torch.equal(inputs[b], row[:-1]) and torch.equal(targets[b], row[1:])
    assert task.units_per_epoch() == sum(y.numel() for _, y in batches) == 7 * (n - 1)


@pytest.mark.parametrize("model_name", ["lstm", "gru"])
def test_loss_carries_a_detached_state_into_the_next_window(model_name: str) -> None:
    task = make_task("synthetic", model=model_name)
    model = make_model(task).train()
    first, second = list(task.train_batches(0))[:2]
    loss, units, carry = task.loss(model, first, None)
    state = carry if isinstance(carry, tuple) else (carry,)
    assert units == first[1].numel()
    assert all(s.shape == (1, 8, 16) and not s.requires_grad for s in state)
    loss.backward()
    loss2, _, _ = task.loss(model, second, carry)
    loss2.backward()  # a state still attached to the first graph would fail here: that graph is freed
    hidden = tuple(s.double() for s in state) if isinstance(carry, tuple) else carry.double()
    with torch.no_grad():
        expected, _ = nll_sum(copy.deepcopy(model).double(), *second, hidden)
    assert loss2.item() == pytest.approx(expected / second[1].numel(), rel=1e-5)


def test_a_split_shorter_than_a_row_is_refused() -> None:
    with pytest.raises(UserError, match="lower train.batch_size"):
        make_task("synthetic", "options.synthetic_tokens=100", "train.batch_size=80")


# ---------------------------------------------------------------- the synthetic source


@pytest.fixture(scope="module")
def large_synthetic() -> PTB:
    """200,000 training tokens: enough for rank-frequency and entropy-rate estimates."""
    return make_task("synthetic", "options.synthetic_tokens=200000")


def test_synthetic_source_is_deterministic_in_its_seed() -> None:
    first, second = make_task("synthetic"), make_task("synthetic")
    other = make_task("synthetic", "options.synthetic_seed=1")
    info = first.data_info()
    for split in ("train", "valid", "test"):
        assert torch.equal(first.tokens[split], second.tokens[split])
        assert info["checksums"][split] == hashlib.md5(first.tokens[split].numpy().astype("<i8").tobytes()).hexdigest()
        assert not torch.equal(first.tokens[split], other.tokens[split])
    assert second.data_info()["checksums"] == info["checksums"]
    assert set(other.data_info()["checksums"].values()).isdisjoint(info["checksums"].values())
    assert info["source"] == "synthetic" and info["vocab_size"] == len(first.vocab) == 10_000
    assert int(first.tokens["train"].max()) < 10_000


def test_synthetic_unigrams_are_zipf_like(large_synthetic: PTB) -> None:
    counts = np.sort(np.bincount(large_synthetic.tokens["train"].numpy(), minlength=10_000))[::-1]
    ranks = np.arange(10, 1001)
    slope = np.polyfit(np.log(ranks), np.log(counts[ranks - 1]), 1)[0]
    assert -2.5 < slope < -0.5


def test_entropy_rate_is_the_mean_nll_of_the_generating_model(large_synthetic: PTB) -> None:
    gen = ClassMarkovSource(seed=large_synthetic.cfg.options.synthetic_seed)
    trans, members, emissions = gen.tables()
    word_class, word_p = np.empty(gen.vocab_size, dtype=np.int64), np.empty(gen.vocab_size)
    for c, (words, p) in enumerate(zip(members, emissions)):
        word_class[words], word_p[words] = c, p
    tokens = large_synthetic.tokens["train"].numpy()
    assert tokens.size == 200_000
    c = word_class[tokens]
    nll = -np.log(trans[c[:-2], c[1:-1], c[2:]]) - np.log(word_p[tokens[2:]])
    assert nll.mean() == pytest.approx(gen.entropy_rate(), rel=0.02)
    assert large_synthetic.data_info()["optimal_ppl"] == pytest.approx(math.exp(gen.entropy_rate()), rel=1e-12)


# ---------------------------------------------------------------- reference line, FLOPs, weight tying


def add_one_unigram_ppl(train: list[int], split: list[int], vocab_size: int) -> float:
    counts = Counter(train)
    total = len(train) + vocab_size
    return math.exp(-math.fsum(math.log((counts[t] + 1) / total) for t in split) / len(split))


def test_reference_is_the_add_one_unigram(source: str) -> None:
    task = make_task(source)
    ref = task.reference()
    train = task.tokens["train"].tolist()
    assert ref["name"] == "unigram"
    for split in ("valid", "test"):
        expected = add_one_unigram_ppl(train, task.tokens[split].tolist(), len(task.vocab))
        assert ref[split]["ppl"] == pytest.approx(expected, rel=1e-9)
    if source == "synthetic":
        assert ref["optimal"]["ppl"] == pytest.approx(math.exp(ClassMarkovSource(seed=0).entropy_rate()), rel=1e-12)
        assert ref["optimal"]["ppl"] < ref["valid"]["ppl"]
    else:
        assert "optimal" not in ref and "optimal_ppl" not in task.data_info()


@pytest.mark.parametrize("model_name", ["lstm", "gru"])
def test_flops_per_token_add_the_decoder_to_the_backbone(model_name: str) -> None:
    task = make_task("synthetic", model=model_name)
    model = make_model(task)
    hidden, vocab = 16, 10_000
    assert task.flops_per_unit(model) == model.backbone.flops_per_step() + 2 * hidden * vocab + vocab


def test_tied_weights_need_equal_sizes_and_share_one_matrix() -> None:
    task = make_task("synthetic", "options.tie_weights=True", "options.emb_size=32")
    with pytest.raises(UserError, match="options.tie_weights"):
        make_model(task)
    task = make_task("synthetic", "options.tie_weights=True")
    model = make_model(task)
    assert model.decoder.weight is model.embed.weight
    untied = make_model(make_task("synthetic"))
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(p.numel() for p in untied.parameters()) - 10_000 * 16
