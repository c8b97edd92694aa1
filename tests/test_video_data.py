"""Video data sources: UCF101 in the official layout (an existing copy, and the download path
against a loopback server, RAR included), and the multi-label CSV source.

The clips are grey frames and the RAR is stored uncompressed: a test of the mechanics, not of UCF101 itself.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from video_files import frame_ids, write_video

from suite.errors import DataError
from suite.fetch import RemoteFile
from tasks import video_data as vd
from tasks.video_data import Clip, read_clip, read_tagged_csv, ucf101_dirs, ucf101_splits

if TYPE_CHECKING:
    from conftest import Origin

CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
SPELLING = {"HandstandPushups": "HandStandPushups"}  # the official file names' own spelling of this class
GROUPS = range(1, 11)


@pytest.fixture(autouse=True)
def _cache(cache: Path) -> Path:
    return cache


def write_ucf(root: Path, video: bytes) -> Path:
    """`root`/UCF-101 and `root`/ucfTrainTestlist as the official archives hold them (CRLF lists); every
    clip holds the bytes `video`. Split s tests on groups 3s-2 to 3s, as the official splits do on 7 groups."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes(b"".join(f"{i} {c}\r\n".encode() for i, c in enumerate(CLASSES, 1)))
    for split in (1, 2, 3):
        train, test = [], []
        for number, name in enumerate(CLASSES, 1):
            for group in GROUPS:
                for clip in (1, 2):
                    rel = f"{name}/v_{SPELLING.get(name, name)}_g{group:02d}_c{clip:02d}.avi"
                    path = root / "UCF-101" / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(video)
                    (test if 3 * split - 2 <= group <= 3 * split else train).append((rel, number))
        (lists / f"trainlist0{split}.txt").write_bytes(b"".join(f"{r} {n}\r\n".encode() for r, n in train))
        (lists / f"testlist0{split}.txt").write_bytes(b"".join(f"{r}\r\n".encode() for r, _ in test))
    return root


@pytest.fixture
def ucf(tmp_path: Path) -> Path:
    return write_ucf(tmp_path / "copy", write_video(tmp_path / "clip.avi", 12).read_bytes())


def groups(clips: list[Clip]) -> set[int]:
    return {vd.ucf101_group(c) for c in clips}


def test_an_existing_copy_gives_the_official_splits(ucf: Path) -> None:
    classes, splits = ucf101_splits(ucf, split=2, valid_fraction=0.3, seed=0)
    assert classes == CLASSES
    assert groups(splits["test"]) == {4, 5, 6} and len(splits["test"]) == 3 * 3 * 2
    assert len(splits["train"]) + len(splits["valid"]) == 3 * 7 * 2
    pushups = [c for c in splits["test"] if c.path.parent.name == "HandstandPushups"]
    assert len(pushups) == 6 and all(c.labels == (2,) for c in pushups)
    assert all(c.path.is_file() and c.path.is_relative_to(ucf / "UCF-101") for s in splits.values() for c in s)
    assert frame_ids(read_clip(splits["valid"][0].path, 4, 16)) == [1, 4, 7, 10]


def test_validation_holds_whole_groups_out_of_the_train_list(ucf: Path) -> None:
    seen = set()
    for seed in range(6):
        _, splits = ucf101_splits(ucf, valid_fraction=0.3, seed=seed)
        train, valid = groups(splits["train"]), groups(splits["valid"])
        assert not train & valid and train | valid == set(range(4, 11)) and len(valid) == 2  # round(0.3 x 7)
        assert {(c.path.parent.name, vd.ucf101_group(c)) for c in splits["valid"]} == {
            (name, g) for name in CLASSES for g in valid}  # every class loses the same groups
        again = ucf101_splits(ucf, valid_fraction=0.3, seed=seed)[1]
        assert again == splits
        seen.add(frozenset(valid))
    assert len(seen) > 2
    assert ucf101_splits(ucf, valid_fraction=0.0)[1]["valid"] == []


@pytest.mark.parametrize(("listing", "line", "message"), [
    ("trainlist01.txt", "Bowling/v_Bowling_g08_c01.avi 4", ".* names no class of classInd.txt"),
    ("trainlist01.txt", "Archery/v_Archery_g08_c09.avi 2", "video .*v_Archery_g08_c09.avi is missing"),
    ("trainlist01.txt", "Archery/v_Archery_g08_c01.avi 1", "class number 1 is not Archery's \\(2\\)"),
    ("testlist01.txt", "Archery/take_one.avi", "'Archery/take_one.avi' is not named <Class>/v_<Class>_gXX_cYY.avi"),
    ("classInd.txt", "5 Bowling", "expected '4 <ClassName>'"),
])
def test_a_bad_list_line_is_named_by_file_and_line(ucf: Path, listing: str, line: str, message: str) -> None:
    path = ucf / "ucfTrainTestlist" / listing
    number = len(path.read_text().splitlines()) + 1
    with path.open("a") as f:
        f.write(line + "\r\n")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:{number}: {message}") as err:
        ucf101_splits(ucf)
    assert "\n" not in str(err.value) and "options.copy_dir" in str(err.value)


def test_a_copy_without_the_official_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="UCF-101/<Class>/.*options.copy_dir"):
        ucf101_dirs(tmp_path)


def write_rar(path: Path, root: Path) -> Path:
    """A RAR 4 archive of every file under `root`, stored uncompressed. No free tool writes RAR; a stored
    archive is a marker, an archive header and one header per file (RAR 4 technical note)."""
    def block(kind: int, flags: int, fields: bytes, data: bytes = b"") -> bytes:
        head = struct.pack("<BHH", kind, flags, 7 + len(fields)) + fields
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + data  # CRC16: low half of the CRC32

    out = [b"Rar!\x1a\x07\x00", block(0x73, 0, bytes(6))]
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        data, name = file.read_bytes(), file.relative_to(root.parent).as_posix().encode()
        # pack and unpacked size, host OS 3 (Unix), CRC32, DOS time, version 2.9, method 0x30 (store), mode
        fields = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A000000, 29, 0x30,
                             len(name), 0o100644)
        out.append(block(0x74, 0x8000, fields + name, data))  # 0x8000: a data area follows the header
    path.write_bytes(b"".join(out) + block(0x7B, 0x4000, b""))
    return path


@pytest.fixture
def ucf_origin(ucf: Path, tmp_path: Path, serve: Callable[[Path], Origin], monkeypatch: pytest.MonkeyPatch) -> Origin:
    """A loopback server holding the split zip and UCF101.rar built from the `ucf` copy."""
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / vd.SPLITS.relpath, "w") as zf:
        for file in sorted((ucf / "ucfTrainTestlist").iterdir()):
            zf.write(file, f"ucfTrainTestlist/{file.name}")
    write_rar(site / "UCF101.rar", ucf / "UCF-101")
    for name, remote in (("SPLITS", vd.SPLITS), ("VIDEOS", vd.VIDEOS)):
        digest = hashlib.sha256((site / remote.relpath).read_bytes()).hexdigest()
        monkeypatch.setattr(vd, name, RemoteFile(remote.relpath, digest))
    origin = serve(site)
    monkeypatch.setattr(vd, "ORIGIN", origin.url)
    return origin


def only_tools(folder: Path, monkeypatch: pytest.MonkeyPatch, *tools: str) -> None:
    """PATH holds just `tools` (skipping the test when one is not installed)."""
    folder.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            package = {"bsdtar": "libarchive-tools", "unrar": "unrar-free"}[tool]
            pytest.skip(f"{tool} is not installed (apt-get install {package})")
        os.symlink(found, folder / tool)
    monkeypatch.setenv("PATH", str(folder))


@pytest.mark.parametrize("tool", ["bsdtar", "unrar"])
def test_the_download_path_fetches_extracts_and_reads(ucf_origin: Origin, cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    only_tools(tmp_path / "bin", monkeypatch, tool)
    classes, splits = ucf101_splits(None, valid_fraction=0.3)
    assert classes == CLASSES and groups(splits["test"]) == {1, 2, 3} and len(splits["valid"]) == 3 * 2 * 2
    assert all(c.path.is_relative_to(cache / "ucf101") for s in splits.values() for c in s)
    assert frame_ids(read_clip(splits["train"][0].path, 4, 16)) == [1, 4, 7, 10]
    assert ucf101_splits(None, valid_fraction=0.3)[1] == splits
    assert dict(ucf_origin.requests) == {vd.SPLITS.relpath: 1, "UCF101.rar": 1}  # then the cache
    splits["test"][0].path.unlink()
    with pytest.raises(DataError, match=f"is missing: delete {re.escape(str(cache / 'ucf101' / 'videos'))} and run"):
        ucf101_splits(None)
    shutil.rmtree(cache / "ucf101" / "videos")  # as the message says: extracted again from the cached archive
    assert ucf101_splits(None, valid_fraction=0.3)[1] == splits
    (cache / "ucf101" / "UCF101.rar").unlink()
    ucf101_splits(None)  # a finished extraction no longer needs the archive
    assert ucf_origin.requests["UCF101.rar"] == 1


def test_without_a_rar_tool_the_error_says_how_to_extract_by_hand(ucf_origin: Origin, ucf: Path, cache: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    only_tools(tmp_path / "bin", monkeypatch)
    target = cache / "ucf101" / "videos"
    with pytest.raises(DataError, match=f"no RAR tool .* on PATH. Extract it by hand so that "
                                        f"{re.escape(str(target))}/UCF-101/<Class>/\\*.avi exist "
                                        f"\\(`bsdtar -xf .*UCF101.rar -C {re.escape(str(target))}`") as err:
        ucf101_splits(None)
    assert "\n" not in str(err.value) and f"touch {target}/.extracted" in str(err.value)
    shutil.copytree(ucf / "UCF-101", target / "UCF-101")  # what the message asks for
    (target / ".extracted").touch()
    assert len(ucf101_splits(None)[1]["test"]) == 18


def test_a_rar_the_tool_cannot_read_is_reported(ucf_origin: Origin, cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    only_tools(tmp_path / "bin", monkeypatch, "bsdtar")
    rar = ucf_origin.root / "UCF101.rar"
    rar.write_bytes(b"Rar!\x1a\x07\x00" + bytes(200))  # a RAR signature and nothing readable after it
    monkeypatch.setattr(vd, "VIDEOS", RemoteFile("UCF101.rar", hashlib.sha256(rar.read_bytes()).hexdigest()))
    with pytest.raises(DataError, match=r"cannot extract .*UCF101.rar: bsdtar exited 1 \(.+\)\. Extract it by hand"):
        ucf101_splits(None)
    assert not list((cache / "ucf101").glob(".videos.*"))  # no staging folder left behind


def test_a_dead_server_names_the_mirror_fix(dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vd, "ORIGIN", dead_url)
    with pytest.raises(DataError, match=f"cannot download {dead_url}/{vd.SPLITS.relpath} .*SUITE_DATA_MIRROR") as err:
        ucf101_splits(None)
    assert "\n" not in str(err.value)


def test_a_checksum_mismatch_is_one_line(ucf_origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vd, "SPLITS", RemoteFile(vd.SPLITS.relpath, "0" * 64))
    with pytest.raises(DataError, match=f"{vd.SPLITS.relpath} downloaded from .* fails its checksum twice: "
                                        f"expected sha256 0{{64}}, got [0-9a-f]{{64}}$") as err:
        ucf101_splits(None)
    assert "\n" not in str(err.value) and ucf_origin.requests[vd.SPLITS.relpath] == 2


def test_a_truncated_download_is_fetched_once_more(ucf_origin: Origin, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ucf_origin.damage[vd.SPLITS.relpath] = 1
    only_tools(tmp_path / "bin", monkeypatch)  # no RAR tool: only the split zip matters here
    with pytest.raises(DataError, match="no RAR tool"):
        ucf101_splits(None)
    assert ucf_origin.requests[vd.SPLITS.relpath] == 2  # the damaged copy was replaced


def test_a_malformed_split_zip_with_the_right_checksum_is_refused(ucf_origin: Origin,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    zipped = ucf_origin.root / vd.SPLITS.relpath
    zipped.write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setattr(vd, "SPLITS", RemoteFile(vd.SPLITS.relpath, hashlib.sha256(zipped.read_bytes()).hexdigest()))
    with pytest.raises(DataError, match=vd.SPLITS.relpath) as err:
        ucf101_splits(None)
    assert "\n" not in str(err.value)


def test_the_published_checksums_are_sha256() -> None:
    assert (vd.VIDEOS.relpath, vd.VIDEOS.algorithm) == ("UCF101.rar", "sha256")
    assert (vd.SPLITS.relpath, vd.SPLITS.algorithm) == ("UCF101TrainTestSplits-RecognitionTask.zip", "sha256")


@pytest.fixture
def tagged(tmp_path: Path) -> tuple[Path, Path]:
    """A video folder (an AVI, a Matroska clip, one in a subfolder) and its CSV."""
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    write_video(videos / "a.avi", 10)
    write_video(videos / "b.mkv", 10, "ffv1")
    shutil.copy(videos / "a.avi", videos / "sub" / "c.avi")
    table = tmp_path / "tags.csv"
    table.write_text('video,tags,split\na.avi,dog;cat,train\nb.mkv, cat ,test\n"sub/c.avi","bird;dog",valid\n')
    return table, videos


def test_a_tagged_csv_gives_sorted_names_and_multi_label_clips(tagged: tuple[Path, Path]) -> None:
    table, videos = tagged
    names, splits = read_tagged_csv(table, videos)
    assert names == ["bird", "cat", "dog"]
    assert splits == {"train": [Clip(videos / "a.avi", (1, 2))], "valid": [Clip(videos / "sub" / "c.avi", (0, 2))],
                      "test": [Clip(videos / "b.mkv", (1,))]}
    assert read_clip(splits["test"][0].path, 2, 8).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(("row", "message"), [
    ("a.avi,dog", "expected 3 columns \\(video,tags,split\\), got 2"),
    ("a.avi,dog,train,extra", "expected 3 columns"),
    ("b.mkv,dog,holdout", "unknown split 'holdout': use one of train, valid, test"),
    ("b.mkv,,train", "empty tag in ''"),
    ("b.mkv,dog;;cat,train", "empty tag in 'dog;;cat'"),
    ("gone.avi,dog,train", "video .*gone.avi is missing: add the file or remove its row"),
    ("a.avi,bird,valid", "video 'a.avi' is listed again \\(first at line 2\\)"),
])
def test_a_bad_csv_row_is_named_by_line(tagged: tuple[Path, Path], row: str, message: str) -> None:
    table, videos = tagged
    table.write_text(table.read_text() + "\n" + row + "\n")  # a blank line 5 is skipped, the bad row is line 6
    with pytest.raises(DataError, match=f"{re.escape(str(table))}:6: {message}") as err:
        read_tagged_csv(table, videos)
    assert "\n" not in str(err.value)


def test_a_bad_header_or_missing_inputs_name_the_fix(tagged: tuple[Path, Path], tmp_path: Path) -> None:
    table, videos = tagged
    with pytest.raises(DataError, match="tag list .*nothing.csv does not exist: set options.tags_csv"):
        read_tagged_csv(tmp_path / "nothing.csv", videos)
    with pytest.raises(DataError, match="video folder .*nowhere does not exist: set options.video_dir"):
        read_tagged_csv(table, tmp_path / "nowhere")
    table.write_text("file,labels,split\na.avi,dog,train\n")
    with pytest.raises(DataError, match=f"{re.escape(str(table))}:1: the header must be video,tags,split"):
        read_tagged_csv(table, videos)
    table.write_text("video,tags,split\n")
    with pytest.raises(DataError, match="lists no video"):
        read_tagged_csv(table, videos)
    table.write_bytes("video,tags,split\na.avi,caf\u00e9,train\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{re.escape(str(table))} is not a UTF-8 CSV .*: save it as UTF-8"):
        read_tagged_csv(table, videos)
