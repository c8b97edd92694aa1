"""The video task: a UCF101-layout copy and a tagged-CSV folder of real AVI files written here (tiny ones, a
test of the mechanics, never a benchmark), cached frame features, the model's pooling and its order-free
twin, metrics per label kind, and the synthetic source on which every baseline beats the order-free line."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from suite import experiment
from suite.config import build_config
from suite.errors import DataError, UserError
from suite.registry import MODELS, load_plugins
from tasks.pooling import AttentionPool
from tasks.video import Video
from tasks.video_metrics import mean_average_precision

load_plugins()
pytestmark = pytest.mark.usefixtures("cache")
CPU = torch.device("cpu")
TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "train.batch_size=4", "train.eval_batch_size=4",
        "options.frames=4", "options.image_size=32", "options.encoder='resnet18'", "options.download_weights=False"]
CLASSES = ("ApplyEyeMakeup", "Biking", "Diving")
UNITS, CLIPS = 24_000, 2_000  # synthetic clips seen per baseline run, training clips


def config(source: str, *overrides: str, model: str = "gru"):
    return build_config("video", model, budget="smoke", overrides=[*TINY, *overrides], options_cls=Video.Options,
                        presets=Video.presets, source=source, device="cpu")


def make_task(source: str, *overrides: str, model: str = "gru") -> Video:
    task = Video(config(source, *overrides, model=model), CPU)
    task.prepare()
    return task


def write_video(path: Path, frames: int, shade: int) -> None:
    """An mpeg4 AVI (UCF101's container) of `frames` 64x48 frames, brightness rising from `shade`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), (shade + 8 * i) % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_ucf101(root: Path) -> str:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi for 3 classes x 4 groups x 1 clip, and split list 1."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, 1)))
    train, test = [], []
    for k, name in enumerate(CLASSES):
        for group in range(1, 5):
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, 10 + group, 40 * k)
            (test.append(rel) if group == 1 else train.append(f"{rel} {k + 1}"))
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return f"options.copy_dir='{root}'"


def test_ucf101_copy_is_single_label_with_cached_features(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = write_ucf101(tmp_path / "ucf")
    task = make_task("real", copy, "options.valid_fraction=0.34")
    info = task.data_info()
    assert info["tags"] == list(CLASSES) and not info["multi_label"] and info["dataset"] == "ucf101-split1"
    assert sum(info["clips"].values()) == 12 and info["clips"]["test"] == 3
    assert (task.metrics, task.primary_metric) == ({"top1": True, "top5": True}, "top1")
    views = task.cfg.options.train_views
    assert task.inputs["train"].shape == (info["clips"]["train"] * views * 4, 1, 512)  # resnet18, pooled
    assert task.inputs["test"].shape == (3 * 4, 1, 512)
    assert capsys.readouterr().err.count("computing resnet18 features") == 3
    again = make_task("real", copy, "options.valid_fraction=0.34")
    assert "computing" not in capsys.readouterr().err  # read from the cache
    assert torch.equal(again.inputs["train"], task.inputs["train"])
    make_task("real", copy, "options.valid_fraction=0.34", "options.frames=3")  # another sampling: recomputed
    assert capsys.readouterr().err.count("computing resnet18 features") == 3
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone))
    batch = next(task.train_batches(0))
    assert batch[0].shape == (4, 4, 512) and batch[2].dtype == torch.int64
    loss, units, _ = task.loss(model, batch, None)
    loss.backward()
    assert torch.isfinite(loss) and units == 4
    metrics = task.evaluate(model.eval(), "test")
    assert set(metrics) == {"top1", "top5"} and metrics["top5"] == 100.0  # 3 classes: always in the top 5


def test_training_views_are_random_samplings_and_evaluation_takes_segment_middles(tmp_path: Path) -> None:
    task = make_task("real", write_ucf101(tmp_path / "ucf"), "options.train_views=2")
    train = task.inputs["train"].view(len(task.clips["train"]), 2, 4, 512).float()
    assert not torch.equal(train[:, 0], train[:, 1])  # two different samplings per training clip
    encoder = task._encoder()
    clip = task.clips["test"][0]
    from tasks.video_data import read_clip
    with torch.no_grad():
        want = encoder(read_clip(clip.path, 4, 32)).squeeze(1)  # (4, 512), segment middles
    assert torch.allclose(task.inputs["test"][:4, 0].float(), want, rtol=1e-2, atol=1e-2)  # float16 cache


def test_csv_source_is_multi_label_with_a_threshold_from_validation(tmp_path: Path) -> None:
    rows = ["video,tags,split"]
    for i in range(12):
        split = "train" if i < 6 else ("valid" if i < 9 else "test")
        tags = ["run", "jump", "run;jump"][i % 3]
        write_video(tmp_path / "videos" / f"clip{i}.avi", 8, 20 * i)
        rows.append(f"clip{i}.avi,{tags},{split}")
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    task = make_task("real", "options.dataset='csv'", f"options.tags_csv='{tmp_path / 'tags.csv'}'",
                     f"options.video_dir='{tmp_path / 'videos'}'")
    assert task.multi_label and task.tags == ["jump", "run"] and task.primary_metric == "map"
    assert task.data_info()["dataset"].startswith("csv-")  # one board per CSV's clips and tags
    assert task.targets["test"].tolist() == [[0, 1], [1, 0], [1, 1]]
    model = task.build(lambda n: MODELS["lstm"](n, task.cfg.backbone)).eval()
    metrics = task.evaluate(model, "test")
    assert set(metrics) == {"map", "f1"}
    independent = mean_average_precision(task.scores(model, "test"), task.targets["test"].bool())
    assert metrics["map"] == pytest.approx(independent)


def test_a_csv_source_needs_both_paths_and_every_split(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="options.tags_csv and options.video_dir"):
        make_task("real", "options.dataset='csv'")
    write_video(tmp_path / "videos" / "a.avi", 8, 0)
    (tmp_path / "tags.csv").write_text("video,tags,split\na.avi,run,train\n")
    with pytest.raises(DataError, match=r"tags.csv gives no valid or test clip: assign some clips to every split"):
        make_task("real", "options.dataset='csv'", f"options.tags_csv='{tmp_path / 'tags.csv'}'",
                  f"options.video_dir='{tmp_path / 'videos'}'")
    with pytest.raises(UserError, match="options.pooling must be one of last, mean, attention"):
        config("synthetic", "options.pooling='max'")
    with pytest.raises(UserError, match="options.order_free is the reference line"):
        make_task("synthetic", "options.order_free=True")


def test_finetuning_decodes_frames_and_trains_the_last_stage(tmp_path: Path) -> None:
    task = make_task("real", write_ucf101(tmp_path / "ucf"), "options.finetune_cnn=True")
    assert task.inputs == {}  # nothing cached: the encoder changes as it trains
    model = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone))
    frames, _, _ = batch = next(task.train_batches(0))
    assert frames.shape == (4, 4, 3, 32, 32) and frames.dtype == torch.uint8
    task.loss(model, batch, None)[0].backward()
    body = model.frame_encoder.body
    assert body.layer4[0].conv1.weight.grad is not None and body.layer3[0].conv1.weight.grad is None


def test_attention_pooling_ignores_padding_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(6)
    out, lengths = torch.randn(2, 5, 6), torch.tensor([5, 3])
    padded = out.clone()
    padded[1, 3:] = 1e3  # what lies past a length must not matter
    assert torch.allclose(pool(out, lengths), pool(padded, lengths))
    with torch.no_grad():
        pool.score.weight.zero_()  # equal scores: the mean of the valid steps
    assert torch.allclose(pool(out, lengths)[1], out[1, :3].mean(0), atol=1e-6)


def test_the_order_free_twin_cannot_see_order_and_the_recurrent_model_can() -> None:
    task = make_task("synthetic", "options.synthetic_clips=16", "options.synthetic_eval_clips=8")
    frames, lengths, _ = next(task.train_batches(0))
    reverse = frames.flip(1)
    torch.manual_seed(0)
    free = Video(config("synthetic", "options.order_free=True"), CPU)
    free.__dict__.update({k: v for k, v in task.__dict__.items() if k != "cfg"})
    free_model = free.build(lambda n: MODELS["gru"](n, free.cfg.backbone)).eval()
    assert free_model.backbone is None
    assert torch.allclose(free_model(frames, lengths), free_model(reverse, lengths), atol=1e-5)
    rnn = task.build(lambda n: MODELS["gru"](n, task.cfg.backbone)).eval()
    assert not torch.allclose(rnn(frames, lengths), rnn(reverse, lengths), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", experiment.applicable_models(Video))
def test_every_baseline_beats_the_order_free_reference(model_name: str, tmp_path: Path) -> None:
    """The smoke preset on the synthetic source, capped by clips rather than seconds (machine-independent)."""
    cfg = build_config("video", model_name, budget="smoke", options_cls=Video.Options, presets=Video.presets,
                       source="synthetic", device="cpu",
                       overrides=[f"budget.max_units={UNITS}", "budget.max_seconds=None",
                                  f"options.synthetic_clips={CLIPS}", f"options.reference_units={UNITS}"])
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    value, reference = record["metrics"]["test"]["map"], record["reference"]["test"]["map"]
    assert record["status"] == "completed" and record["task"]["primary_metric"] == "map"
    assert value > reference + 15, (value, reference)
