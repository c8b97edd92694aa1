"""GridEncoder and the feature cache on real (tiny) ResNets: grid shapes, local weights, cache keys,
atomic writes and recovery from a damaged cache file. CNN calls are counted with a forward hook."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from suite.errors import DataError
from suite.features import GridEncoder, cached_features, feature_key, feature_path, load_weights

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1
COUNT, BATCH = 5, 2  # 3 batches: 2 + 2 + 1


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own feature cache and torch hub folder: the user's caches are neither read nor written."""
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def fake_imagenet_file() -> dict[str, torch.Tensor]:
    """A resnet18 state dict (seed 1, unlike the encoder's seed-0 init) where the ImageNet file belongs."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    checkpoints().mkdir(parents=True)
    torch.save(state, checkpoints() / RESNET18_FILE)
    return state


def images(size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(COUNT, 3, size, size, generator=torch.Generator().manual_seed(seed))


def counted(encoder: GridEncoder) -> list[int]:
    """A list that grows by one per forward call of the encoder."""
    calls: list[int] = []
    encoder.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    return calls


def features(encoder: GridEncoder, data: torch.Tensor, checksum: str = "set-a", **kw) -> torch.Tensor:
    return cached_features(lambda s: data[s], COUNT, encoder, checksum, data.shape[-1], batch_size=BATCH, **kw)


def test_grid_shapes() -> None:
    small = GridEncoder("resnet18")
    assert small(torch.rand(2, 3, 64, 64)).shape == (2, 4, 512)  # 2x2 cells of 512 channels
    assert small(torch.rand(1, 3, 96, 64)).shape == (1, 6, 512)  # 3x2: non-square images work
    assert small.grid_cells(96, 64) == 6 and small.dim == 512
    assert GridEncoder("resnet50")(torch.rand(1, 3, 64, 64)).shape == (1, 4, 2048)
    pooled, images = GridEncoder("resnet18", pooled=True), torch.rand(2, 3, 96, 64)
    assert pooled(images).shape == (2, 1, 512) and pooled.grid_cells(96, 64) == 1
    assert torch.allclose(pooled(images)[:, 0], small(images).mean(dim=1), atol=1e-6)  # the grid's mean


def test_uint8_images_match_floats_in_unit_range() -> None:
    encoder = GridEncoder("resnet18")
    pixels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(encoder(pixels), encoder(pixels.float() / 255))


def test_random_init_when_no_weights_offline(capsys: pytest.CaptureFixture) -> None:
    weights = load_weights("resnet50")
    assert weights.state_dict is None and weights.tag == "random-init-seed-0"
    assert weights.description.startswith(f"random init (no ImageNet weights in {checkpoints()}/resnet50-11ad3fa6.pth")
    assert "resnet50-0676ba61.pth" in weights.description  # the V1 file is looked for too
    assert "random init" in capsys.readouterr().err
    assert not checkpoints().exists()  # nothing downloaded
    first, second = GridEncoder("resnet18"), GridEncoder("resnet18")
    assert first.record == second.record and first.record["weights"] == "random-init-seed-0"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_random_init_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    GridEncoder("resnet18")
    assert torch.equal(torch.rand(3), expected)


def test_local_weights_file_is_loaded(capsys: pytest.CaptureFixture) -> None:
    state = fake_imagenet_file()
    encoder = GridEncoder("resnet18")
    assert encoder.weights_description.startswith(f"{checkpoints() / RESNET18_FILE} loaded")
    # Its sha256 is not the published f37072fd..., so the record does not claim the official weights.
    assert encoder.record["weights"] == f"unverified:{RESNET18_FILE}"
    assert "warning" in capsys.readouterr().err
    for key, value in encoder.body.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_damaged_weights_file_is_a_data_error() -> None:
    checkpoints().mkdir(parents=True)
    (checkpoints() / RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=RESNET18_FILE):
        GridEncoder("resnet18")


def test_unknown_encoder_suggests_names() -> None:
    with pytest.raises(Exception, match="did you mean resnet50"):
        GridEncoder("resnet5")


def test_trainable_last_block() -> None:
    frozen = GridEncoder("resnet18")
    assert not any(p.requires_grad for p in frozen.parameters())
    tuned = GridEncoder("resnet18", trainable_last_block=True)
    trainable = {name.split(".")[1] for name, p in tuned.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    tuned.train()
    assert tuned.body.layer4.training and not tuned.body.layer3.training and not tuned.body.bn1.training
    with pytest.raises(ValueError, match="trainable"):
        features(tuned, images())


def test_cache_computes_once_then_loads() -> None:
    encoder, data = GridEncoder("resnet18"), images()
    encoder.train()
    calls = counted(encoder)
    first = features(encoder, data)
    assert calls == [2, 2, 1] and encoder.training  # batched, and the caller's mode is restored
    assert first.shape == (COUNT, 4, 512) and first.dtype == torch.float16
    second = features(encoder, data)
    assert len(calls) == 3 and torch.equal(first, second)
    with torch.no_grad():
        direct = encoder.eval()(data)
    torch.testing.assert_close(first.float(), direct, atol=2e-2, rtol=2e-3)  # float16 storage
    path = feature_path(feature_key("set-a", encoder, 64))
    assert path.stat().st_size < COUNT * 4 * 512 * 2 + 256  # 2 bytes per value plus the .npy header
    assert path.with_suffix(".json").is_file()


def test_each_key_part_recomputes() -> None:
    encoder, data = GridEncoder("resnet18"), images()
    calls = counted(encoder)
    features(encoder, data)
    features(encoder, data, checksum="set-b")  # other images
    assert len(calls) == 6
    features(encoder, images(96), checksum="set-a")  # other image size, same checksum
    assert len(calls) == 9
    features(encoder, data, dtype=torch.float32)  # other storage dtype
    assert len(calls) == 12
    deeper = GridEncoder("resnet34")  # other encoder
    deeper_calls = counted(deeper)
    features(deeper, data)
    assert len(deeper_calls) == 3
    fake_imagenet_file()
    reweighted = GridEncoder("resnet18")  # same architecture, other weights
    reweighted_calls = counted(reweighted)
    features(reweighted, data)
    assert len(reweighted_calls) == 3
    pooled = GridEncoder("resnet18", pooled=True)  # same weights, one vector per image
    pooled_calls = counted(pooled)
    assert features(pooled, data).shape[1] == 1 and len(pooled_calls) == 3
    features(encoder, data)  # every variant above left the first file alone
    assert len(calls) == 12


def test_iterable_of_batches() -> None:
    encoder, data = GridEncoder("resnet18"), images()
    calls = counted(encoder)
    from_batches = cached_features(iter([data[:3], data[3:]]), COUNT, encoder, "set-a", 64)
    assert calls == [3, 2]
    assert torch.equal(from_batches, features(encoder, data))  # same key: loaded, not recomputed
    with pytest.raises(ValueError, match="gave 3 images, expected 5"):
        cached_features([data[:3]], COUNT, encoder, "set-c", 64)
    with pytest.raises(ValueError, match="expected \\(b, 3, 96, 96\\)"):
        cached_features([data], COUNT, encoder, "set-d", 96)


@pytest.mark.parametrize("damage", ["half", "header", "empty", "zip"])
def test_damaged_cache_file_is_recomputed(damage: str, capsys: pytest.CaptureFixture) -> None:
    encoder, data = GridEncoder("resnet18"), images()
    calls = counted(encoder)
    first = features(encoder, data).clone()
    path = feature_path(feature_key("set-a", encoder, 64))
    whole = path.read_bytes()
    damaged = {"half": whole[: len(whole) // 2], "header": whole[:50], "empty": b"", "zip": b"PK\x03\x04junk"}
    path.write_bytes(damaged[damage])
    capsys.readouterr()
    again = features(encoder, data)
    assert len(calls) == 6 and torch.equal(first, again)
    assert f"features of 5 images {path} are unreadable" in capsys.readouterr().err


def test_failed_run_leaves_no_file() -> None:
    encoder, data = GridEncoder("resnet18"), images()

    def source(part: slice) -> torch.Tensor:
        if part.start >= BATCH:
            raise RuntimeError("killed")
        return data[part]

    with pytest.raises(RuntimeError, match="killed"):
        cached_features(source, COUNT, encoder, "set-a", 64, batch_size=BATCH)
    assert list(feature_path("x").parent.iterdir()) == []  # neither the cache file nor its temp file


def test_float16_overflow_is_refused() -> None:
    encoder, data = GridEncoder("resnet18"), images()
    with torch.no_grad():
        encoder.body.layer4[-1].bn2.weight.mul_(1e6)  # activations far beyond float16's 65504
    with pytest.raises(ValueError, match="not finite in torch.float16"):
        features(encoder, data)
    assert features(encoder, data, dtype=torch.float32).abs().max() > 65504
