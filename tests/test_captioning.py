"""The captioning task: COCO 2017 archives through a loopback server (default and Karpathy splits),
Flickr files placed by hand, cached CNN features, the attentive decoder (beam scores against teacher
forcing, the doubly stochastic regulariser), metrics against sacrebleu run here on the written captions,
and the synthetic scenes on which every decoder beats the blind one.

Archives served here are crafted by the tests in the official COCO layout: a test of the mechanics,
never a COCO benchmark.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import sacrebleu
import torch
from PIL import Image

import tasks.caption_data
from baselines import backbone_factory
from suite import experiment
from suite.config import build_config
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile
from suite.registry import MODELS, load_plugins
from tasks.caption_metrics import tokenize
from tasks.captioner import doubly_stochastic_penalty
from tasks.captioning import Captioning
from tasks.subwords import BOS, EOS

if TYPE_CHECKING:
    from conftest import Origin

TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.emb_size=16", "train.batch_size=8",
        "train.eval_batch_size=40", "options.synthetic_images=120", "options.synthetic_eval_images=40",
        "options.reference_units=400", "options.examples=1"]
REAL = ["options.encoder='resnet18'", "options.image_size=64", "options.min_word_count=1",
        "options.download_weights=False"]
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("cache")

load_plugins()


def config(source: str = "synthetic", *overrides: str, model: str = "gru"):
    return build_config("captioning", model, budget="smoke", overrides=[*TINY, *overrides],
                        options_cls=Captioning.Options, presets=Captioning.presets, source=source, device="cpu")


def make_task(source: str = "synthetic", *overrides: str, model: str = "gru") -> Captioning:
    task = Captioning(config(source, *overrides, model=model), CPU)
    task.prepare()
    return task


def make_model(task: Captioning, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build(backbone_factory(MODELS[task.cfg.model], task.cfg.backbone, task.causal)).eval()


# ---------------------------------------------------------------- real sources


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def coco_captions(ids: list[int], uncaptioned: tuple[int, ...] = ()) -> bytes:
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in [*ids, *uncaptioned]]
    annotations = [{"image_id": i, "id": 10 * i + k, "caption": f"A photo number {i} of a cat{'.' * k}"}
                   for i in ids for k in range(1 + i % 3)]  # one to three references per image
    return json.dumps({"images": images, "annotations": annotations}).encode()


TRAIN_IDS, VAL_IDS = list(range(1, 11)), list(range(100, 106))


@pytest.fixture
def coco(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Callable[[Path], Origin]) -> Origin:
    """The three COCO 2017 archives in their layout (10 train, 6 val images), served on 127.0.0.1."""
    root = tmp_path / "origin"
    (root / "zips").mkdir(parents=True)
    (root / "annotations").mkdir()
    write_zip(root / "annotations/annotations_trainval2017.zip",
              {"annotations/captions_train2017.json": coco_captions(TRAIN_IDS, uncaptioned=(11,)),
               "annotations/captions_val2017.json": coco_captions(VAL_IDS)})
    write_zip(root / "zips/train2017.zip", {f"train2017/{i:012d}.jpg": jpeg(i) for i in [*TRAIN_IDS, 11]})
    write_zip(root / "zips/val2017.zip", {f"val2017/{i:012d}.jpg": jpeg(i) for i in VAL_IDS})
    files = {name: RemoteFile(r.relpath, hashlib.md5((root / r.relpath).read_bytes()).hexdigest())
             for name, r in tasks.caption_data.COCO_FILES.items()}
    monkeypatch.setattr(tasks.caption_data, "COCO_FILES", files)
    origin = serve(root)
    monkeypatch.setattr(tasks.caption_data, "COCO_ORIGIN", origin.url)
    return origin


def test_coco_archives_are_fetched_split_and_turned_into_cached_features(coco: Origin, cache: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    task = make_task("real", *REAL)
    info = task.data_info()
    assert info["images"] == {"train": 10, "valid": 3, "test": 3} and info["encoder"]["encoder"] == "resnet18"
    assert "random init" in info["weights"]  # no ImageNet weights offline, and the record says so
    assert info["uncaptioned_images_dropped"] == {"train": 1, "valid": 0, "test": 0}
    assert info["files"] == {r.relpath: r.checksum for r in tasks.caption_data.COCO_FILES.values()}
    assert task.splits["train"].references[1] == ["A photo number 2 of a cat", "A photo number 2 of a cat.",
                                                  "A photo number 2 of a cat.."]
    assert sorted(p.name for p in task.splits["valid"].images + task.splits["test"].images) == \
        [f"{i:012d}.jpg" for i in VAL_IDS]
    assert task.inputs["train"].shape == (10, 4, 512)  # a 2 x 2 grid of resnet18 features at 64 px
    assert "computing resnet18 features" in capsys.readouterr().err
    again = make_task("real", *REAL)
    assert "computing" not in capsys.readouterr().err  # the cache, not the CNN
    assert torch.equal(again.inputs["test"], task.inputs["test"])
    assert all(n == 1 for n in coco.requests.values()) and len(coco.requests) == 3
    make_task("real", *REAL, "options.image_size=96")
    assert "computing resnet18 features" in capsys.readouterr().err  # another key


def test_weights_are_downloaded_when_missing_or_a_random_init_says_why(coco: Origin, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch cache
    info = make_task("real", *REAL[:3]).data_info()  # download_weights defaults to True
    if info["encoder"]["weights"].startswith("IMAGENET"):  # a machine with internet fetched them
        return
    assert "random init" in info["weights"] and "cannot download" in info["weights"]


def test_the_cnns_last_block_fine_tunes_end_to_end(coco: Origin) -> None:
    task = make_task("real", *REAL, "options.finetune_cnn=True")
    model = make_model(task).train()
    images, tgt_in, tgt_out = next(iter(task.train_batches(0)))
    assert images.shape[1:] == (3, 64, 64)  # pixels read from the files, not cached features
    task.loss(model, (images, tgt_in, tgt_out), None)[0].backward()
    grads = {name.split(".")[1]: p.grad is not None for name, p in model.image.named_parameters()}  # body.<stage>
    assert grads["layer4"] and not any(v for k, v in grads.items() if k != "layer4")
    assert set(task.evaluate(model.eval(), "valid")) == set(Captioning.metrics)


def test_coco_follows_the_karpathy_split_when_its_json_is_present(coco: Origin, cache: Path) -> None:
    karpathy = {"images": [{"cocoid": i, "filename": f"COCO_x_{i}.jpg", "split": s, "sentences": []}
                           for i, s in [(1, "train"), (2, "restval"), (100, "val"), (101, "test"), (102, "test")]]}
    (cache / "coco").mkdir(parents=True)
    (cache / "coco" / "dataset_coco.json").write_text(json.dumps(karpathy))
    task = make_task("real", *REAL)
    assert task.data_info()["images"] == {"train": 2, "valid": 1, "test": 2}
    assert task.splits["test"].images[1].name == "000000000102.jpg"


def test_flickr_names_the_files_to_place_and_reads_them(cache: Path) -> None:
    with pytest.raises(DataError, match=r"dataset_flickr8k.json is missing: flickr8k needs a licence form .* "
                                        r"put dataset_flickr8k.json .* images in .*flickr8k/images/"):
        make_task("real", *REAL, "options.dataset='flickr8k'")
    root = cache / "flickr8k"
    (root / "images").mkdir(parents=True)
    images = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg(i))
        images.append({"filename": f"{i}.jpg", "split": split,
                       "sentences": [{"raw": f"A dog number {i} runs."}, {"raw": "A dog runs."}]})
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    task = make_task("real", *REAL, "options.dataset='flickr8k'")
    assert task.data_info()["images"] == {"train": 2, "valid": 1, "test": 1}
    (root / "dataset_flickr8k.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a Karpathy-split caption JSON"):
        make_task("real", *REAL, "options.dataset='flickr8k'")


def test_a_damaged_image_names_the_file(coco: Origin, tmp_path: Path, cache: Path) -> None:
    bad = make_task("real", *REAL).splits["valid"].images[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image .*{bad.name}"):
        make_task("real", *REAL, "options.image_size=96")  # a new feature key reads the images again


# ---------------------------------------------------------------- model, decoding, metrics


def test_vocabulary_words_are_the_metrics_tokens() -> None:
    """The model can only score on words it can emit: "t-shirt" stays one word, as the metrics see it."""
    assert tasks.caption_data.words("A man in a T-shirt, eating 3.5 hot-dogs.") == \
        tokenize("A man in a T-shirt, eating 3.5 hot-dogs.").split() == \
        ["a", "man", "in", "a", "t-shirt", "eating", "3.5", "hot-dogs"]


def test_bidirectional_decoders_are_not_applicable() -> None:
    with pytest.raises(UserError, match="brnn is not applicable to captioning: the task is causal"):
        experiment.check_applicable(Captioning, MODELS["brnn"])


def test_the_doubly_stochastic_penalty_matches_a_hand_count() -> None:
    weights = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.3, 0.7]]])  # (1, T=3, N=2); the last step is padding
    tgt_out = torch.tensor([[5, EOS, 0]])
    assert float(doubly_stochastic_penalty(weights, tgt_out)) == pytest.approx(((1 - 1.5) ** 2 + (1 - 0.5) ** 2) / 2)


@pytest.mark.parametrize("model_name", ["gru", "lstm", "resrnn"])
def test_beam_scores_are_teacher_forced_log_probs_and_beam_1_is_greedy(model_name: str) -> None:
    from suite.decoding import beam_search, greedy_search

    task = make_task("synthetic", model=model_name)
    model = make_model(task)
    with torch.no_grad():
        model.out.bias[EOS] += 1.0
        images = task.inputs["valid"][:12]
        state = model.init_state(images)
        greedy = greedy_search(model.step, state, BOS, EOS, 6)
        beam = beam_search(model.step, state, BOS, EOS, 6, beam=4, length_penalty=0.5)
        assert beam_search(model.step, state, BOS, EOS, 6, beam=1) == greedy
        for found in (greedy, beam):
            for i, (tokens, done) in enumerate(zip(found.tokens, found.finished)):
                out = [*tokens, EOS] if done else tokens
                logp = torch.log_softmax(model(images[i:i + 1], torch.tensor([[BOS, *out[:-1]]])), -1)[0]
                assert found.scores[i] == pytest.approx(float(sum(logp[t, w] for t, w in enumerate(out))), abs=1e-4)


def test_metrics_equal_sacrebleu_on_the_written_captions_and_examples_are_pngs(tmp_path: Path) -> None:
    cfg = config("synthetic", "budget.max_units=3000", "budget.max_seconds=None")
    record, path = experiment.run(cfg, tmp_path, progress_bar=False)
    task = make_task("synthetic")
    for split in ("valid", "test"):
        hyps = (tmp_path / record["artifacts"][f"{split}_captions"]).read_text().split("\n")[:-1]
        refs = task.splits[split].references
        assert len(hyps) == len(refs) == 40
        streams = [[tokenize(r[k]) if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
        bleu4 = sacrebleu.BLEU(tokenize="none", lowercase=True).corpus_score([tokenize(h) for h in hyps], streams)
        assert record["metrics"][split]["bleu4"] == pytest.approx(bleu4.score, abs=1e-9)
    assert (tmp_path / record["artifacts"]["example_test_0"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["reference"]["name"] == "blind-decoder" and "cider" in record["reference"]["test"]
    assert record["data"]["metrics"]["bleu"].startswith("nrefs:")


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="options.attention must be additive or multiplicative"):
        config("synthetic", "options.attention='none'")
    with pytest.raises(UserError, match="options.encoder must be one of resnet18"):
        config("synthetic", "options.encoder='vgg16'")


# ---------------------------------------------------------------- the synthetic scenes: the image matters


@pytest.mark.slow
@pytest.mark.parametrize("model_name", experiment.applicable_models(Captioning))
def test_every_decoder_clearly_beats_the_blind_one(model_name: str, tmp_path: Path) -> None:
    """The smoke preset, capped by caption words rather than seconds (machine-independent); the blind
    twin trains for as many words. CIDEr-D carries the clear margin: the scenes' captions share templates
    ("a small red square and ..."), so a blind decoder's one generic caption collects many BLEU n-grams
    (BLEU-4 about 35), while CIDEr-D's idf weighting discounts them."""
    cfg = build_config("captioning", model_name, budget="smoke", options_cls=Captioning.Options,
                       presets=Captioning.presets, source="synthetic", device="cpu",
                       overrides=["budget.max_units=200000", "budget.max_seconds=None",
                                  "options.reference_units=200000", "options.examples=0"])
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    test, blind = record["metrics"]["test"], record["reference"]["test"]
    assert record["status"] == "completed" and test["cider"] > 2 * blind["cider"], (test, blind)
    assert test["bleu4"] > blind["bleu4"] + 2 and test["loss"] < blind["loss"], (test, blind)


def test_a_dead_server_is_one_line_exit_2_naming_the_file(tmp_path: Path, dead_url: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SUITE_DATA_DIR": str(tmp_path / "cache"), "SUITE_DATA_MIRROR": dead_url}
    proc = subprocess.run([sys.executable, "-m", "suite.cli", "run", "--task", "captioning", "--model", "lstm",
                           "--results", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "annotations_trainval2017.zip" in errors[0] and "--source synthetic" in errors[0]
