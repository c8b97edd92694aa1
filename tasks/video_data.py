"""Video clips for the video tagging task: PyAV decoding with TSN-style frame sampling, UCF101 in its official
layout, and a generic multi-label CSV source. Every source yields `Clip`s (a file and its label indices).

torchvision 0.26 has no video reader any more, so clips are decoded with PyAV. Frame sampling follows TSN
(Wang et al. 2016): a clip is cut into `frames` equal segments and one frame is taken from each, the middle
one at evaluation and a random one in training.

UCF101 (Soomro et al. 2012, crcv.ucf.edu/data/UCF101.php): `UCF-101/<Class>/v_<Class>_gXX_cYY.avi` from
UCF101.rar, and `ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt` from the split zip. Clips of one
group (gXX) share actors and background, so validation is carved from the official train list by group.
"""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from suite.archives import MARKER, extract, finish, remove_stale_staging, staging_folder
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, data_dir, fetch, file_lock

ORIGIN = "https://www.crcv.ucf.edu/data/UCF101"
CACHE = "ucf101"
# sha256 as torchvision's prototype UCF101 dataset verifies them (pytorch/vision,
# torchvision/prototype/datasets/_builtin/ucf101.py); tensorflow_datasets (url_checksums/ucf101.txt) lists the
# same sha256 for the split zip, 113,943 bytes.
VIDEOS = RemoteFile("UCF101.rar", "ca8dfadb4c891cb11316f94d52b6b0ac2a11994e67a0cae227180cd160bd8e55")
SPLITS = RemoteFile("UCF101TrainTestSplits-RecognitionTask.zip",
                    "5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27")
SPLIT_NAMES = ("train", "valid", "test")
LARGE_FRAME = 640 * 480
"""Pixels above which frames are decoded with frame threads too: on 320x240 (UCF101) they cost about half
again the decoding time (64-frame mpeg4, 2 cores), on 1280x720 they save 15%."""
REPLACE = "replace it with a good copy or drop it from its list"
COPY_OPTION, CSV_OPTION, VIDEO_DIR_OPTION = "options.copy_dir", "options.tags_csv", "options.video_dir"
"""The task options the error messages tell the user to set."""
GROUP = re.compile(r"_g(\d+)_c\d+\.avi$")
"""Group number in a UCF101 file name. The class part of the name is not checked: the official files spell
some classes differently from their folder (HandstandPushups/v_HandStandPushups_g01_c01.avi)."""


@dataclass(frozen=True)
class Clip:
    """One video file and the 0-based indices of its labels (one for UCF101, one or more for a CSV source)."""

    path: Path
    labels: tuple[int, ...]


def sample_indices(total: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the `frames` frames taken from a clip of `total` frames, in order: the middle of each of
    `frames` equal segments, or a uniform frame within each when `rng` is given; a clip with fewer frames
    than segments repeats frames."""
    return _indices(total, frames, None if rng is None else rng.random(frames))


def _indices(total: int, frames: int, fractions: np.ndarray | None) -> np.ndarray:
    if total < 1 or frames < 1:
        raise ValueError(f"need total >= 1 and frames >= 1, got {total}, {frames}")
    starts = np.arange(frames + 1) * total // frames  # segment bounds in exact integer arithmetic
    lengths = np.diff(starts)  # all >= 1 when total >= frames; some 0 (a repeated frame) otherwise
    offsets = lengths // 2 if fractions is None else np.floor(fractions * lengths).astype(np.int64)
    return starts[:-1] + offsets


def read_clip(path: Path, frames: int, size: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """`frames` RGB frames of the video at `path` as uint8 (frames, 3, size, size), sampled as in
    `sample_indices` (evaluation when `rng` is None, training otherwise). Each frame's shorter side is resized
    to `size`, then the centre `size` x `size` square is cropped. A missing or undecodable file raises DataError.

    The file is decoded once, up to the last frame taken; the frame count comes from the container header
    (AVI, MP4), or from counting packets where there is none (Matroska, WebM).
    """
    if frames < 1 or size < 1:
        raise ValueError(f"need frames >= 1 and size >= 1, got {frames}, {size}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist: restore it, or remove it from the list that names it")
    fractions = None if rng is None else rng.random(frames)  # drawn once, so a second pass takes the same ones
    try:
        crops, decoded = _decode(path, _indices(_frame_count(path), frames, fractions), size)
        if crops is None:  # the header promised more frames than the file holds (e.g. a truncated copy)
            crops, _ = _decode(path, _indices(decoded, frames, fractions), size)
    except (av.FFmpegError, IndexError) as err:  # IndexError: a file with no video stream
        reason = " ".join(str(err).split()) or "no video stream"
        raise DataError(f"cannot decode video {path} ({reason}): {REPLACE}") from None
    # numpy, not torch, reorders the axes: waking torch's thread pool for 300 KB costs more than the copy.
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))  # (F, 3, S, S)


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # A header count is free; without one, demuxing (no decoding) counts the frames.
        count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if count == 0:
        raise DataError(f"video {path} holds no frame: {REPLACE}")
    return count


def _decode(path: Path, indices: np.ndarray, size: int) -> tuple[list[np.ndarray] | None, int]:
    """Crops of the frames at sorted `indices` and the number of frames decoded, which stops at the last
    index; None for the crops when the file ends first."""
    wanted, crops, count = set(indices.tolist()), {}, 0
    scaler = VideoReformatter()  # one per clip: it keeps its swscale context, 0.5 ms a frame otherwise
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.width * stream.codec_context.height > LARGE_FRAME:
            stream.thread_type = "AUTO"
        for count, frame in enumerate(container.decode(stream), start=1):
            if count - 1 in wanted:
                crops[count - 1] = _resize_crop(scaler, frame, size)
                if len(crops) == len(wanted):
                    break
    if count == 0:
        raise DataError(f"video {path} holds no decodable frame: {REPLACE}")
    if len(crops) < len(wanted):
        return None, count
    return [crops[i] for i in indices.tolist()], count


def _resize_crop(scaler: VideoReformatter, frame: av.VideoFrame, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shorter side resized to `size` (swscale converts and resizes in one pass),
    then the centre square."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = scaler.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top:top + size, left:left + size]


def ucf101_dirs(copy: Path | None = None) -> tuple[Path, Path]:
    """The `UCF-101` video folder and the `ucfTrainTestlist` folder: in the user's `copy` (a folder holding
    both), else downloaded, verified and extracted into the data cache."""
    if copy is not None:
        copy = Path(copy).expanduser()
        videos, lists = copy / "UCF-101", copy / "ucfTrainTestlist"
        if videos.is_dir() and (lists / "classInd.txt").is_file():
            return videos, lists
        raise DataError(f"{copy} does not hold UCF-101/<Class>/*.avi and ucfTrainTestlist/classInd.txt: point "
                        f"{COPY_OPTION} at a folder holding both (UCF101.rar and {SPLITS.relpath} extracted), "
                        f"or leave it empty to download them")
    root = data_dir() / CACHE
    lists = extract(fetch(ORIGIN, SPLITS, CACHE), root / "splits") / "ucfTrainTestlist"
    if not (lists / "classInd.txt").is_file():
        raise DataError(f"{SPLITS.relpath} holds no ucfTrainTestlist/classInd.txt: delete {root} and run again")
    return _ucf_videos(root / "videos"), lists


def _ucf_videos(target: Path) -> Path:
    """`target`/UCF-101, extracted from UCF101.rar. The 6.5 GB archive is fetched (and so hashed, about 20 s)
    only while no finished extraction is there: the extraction was made from a verified copy."""
    if not (target / MARKER).exists():
        with file_lock(target):  # runs started side by side extract it once
            if not (target / MARKER).exists():
                _extract_rar(fetch(ORIGIN, VIDEOS, CACHE), target)
    return target / "UCF-101"


RAR_TOOLS = ("bsdtar", "unrar", "7z", "7zz", "7za")
"""Tried in this order. libarchive's bsdtar first: it refuses absolute and `..` member paths by default and
reads RAR 4 and 5. Debian's own 7-Zip build has no RAR support, so 7z comes last."""


def _rar_command(tool: str, archive: Path, into: Path) -> list[str]:
    name = Path(tool).name
    if name == "bsdtar":
        return [tool, "-xf", str(archive), "-C", str(into)]
    if name == "unrar":
        return [tool, "x", str(archive), f"{into}/"]  # the syntax RARLAB's unrar and unrar-free share
    return [tool, "x", "-y", f"-o{into}", str(archive)]


def _extract_rar(archive: Path, target: Path) -> None:
    """Unpack UCF101.rar with the first tool on PATH that yields `UCF-101/`; under `file_lock(target)` and, as
    suite.archives does, into a staging folder that is synced, marked and renamed into place only when finished."""
    remove_stale_staging(target)  # a killed extraction's, up to 6.5 GB
    failures = []
    for tool in filter(None, map(shutil.which, RAR_TOOLS)):
        staging = staging_folder(target)
        try:
            # stdin closed: a tool that would ask a question (overwrite, password) fails instead of hanging.
            done = subprocess.run(_rar_command(tool, archive, staging), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0 and (staging / "UCF-101").is_dir():
                finish(staging, target)
                return
            said = (done.stderr.strip() or done.stdout.strip() or "no message").splitlines()[-1].strip()
            failures.append(f"{Path(tool).name} left no UCF-101/ folder" if done.returncode == 0
                            else f"{Path(tool).name} exited {done.returncode} ({said})")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    tried = "; ".join(failures) or f"no RAR tool ({', '.join(RAR_TOOLS)}) is on PATH"
    raise DataError(f"cannot extract {archive}: {tried}. Extract it by hand so that {target}/UCF-101/<Class>/*.avi "
                    f"exist (`bsdtar -xf {archive} -C {target}` from libarchive-tools, or `unrar x {archive} "
                    f"{target}/`), then `touch {target / MARKER}` and run again, or point {COPY_OPTION} at a folder "
                    f"holding UCF-101/ and ucfTrainTestlist/")


def ucf101_splits(copy: Path | None = None, split: int = 1, valid_fraction: float = 0.1,
                  seed: int = 0) -> tuple[list[str], dict[str, list[Clip]]]:
    """Class names (classInd.txt order, 0-based) and the train/valid/test clips of official split `split`:
    test is the official test list; valid is whole groups of the official train list (see `split_by_group`)."""
    if split not in (1, 2, 3):
        raise UserError(f"UCF101 has official splits 1, 2 and 3, got {split}")
    videos, lists = ucf101_dirs(copy)
    classes = _read_class_index(lists / "classInd.txt")
    train = _read_list(lists / f"trainlist0{split}.txt", videos, classes)
    test = _read_list(lists / f"testlist0{split}.txt", videos, classes)
    train, valid = split_by_group(train, valid_fraction, seed)
    return classes, {"train": train, "valid": valid, "test": test}


def ucf101_group(clip: Clip) -> int:
    """The group number (gXX) in a UCF101 clip's file name."""
    return int(GROUP.search(clip.path.name).group(1))


def split_by_group(clips: list[Clip], valid_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """(train, valid): valid holds every clip of round(valid_fraction x groups) group numbers (at least one
    when the fraction is positive) drawn with `seed`. Whole group numbers are held out across all classes, as
    the official splits do (split 1 tests on g01-g07), so no group's actors and scenes sit on both sides."""
    if not 0 <= valid_fraction < 1:
        raise UserError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    groups = sorted({ucf101_group(c) for c in clips})
    count = min(max(1, round(valid_fraction * len(groups))), len(groups) - 1) if valid_fraction else 0
    held = set(np.random.default_rng(seed).choice(groups, max(count, 0), replace=False).tolist())
    return [c for c in clips if ucf101_group(c) not in held], [c for c in clips if ucf101_group(c) in held]


def _read_class_index(path: Path) -> list[str]:
    """Class names from classInd.txt, whose line n reads `<n> <ClassName>`."""
    classes = []
    for number, line in _numbered_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[0] != str(len(classes) + 1):
            raise DataError(f"{path}:{number}: expected '{len(classes) + 1} <ClassName>', got {line.strip()!r}: "
                            f"{_ucf_fix(path)}")
        classes.append(fields[1])
    if not classes:
        raise DataError(f"{path} names no class: {_ucf_fix(path)}")
    return classes


def _read_list(path: Path, videos: Path, classes: list[str]) -> list[Clip]:
    """Clips of a train list (`<Class>/<file>.avi <class number>`) or test list (`<Class>/<file>.avi`)."""
    index = {name: i for i, name in enumerate(classes)}
    clips = []
    for number, line in _numbered_lines(path):
        where, fields = f"{path}:{number}", line.split()
        folder = fields[0].partition("/")[0]
        if len(fields) > 2 or folder not in index:
            raise DataError(f"{where}: {line.strip()!r} names no class of classInd.txt: {_ucf_fix(path)}")
        if len(fields) == 2 and fields[1] != str(index[folder] + 1):
            raise DataError(f"{where}: class number {fields[1]} is not {folder}'s ({index[folder] + 1}): "
                            f"{_ucf_fix(path)}")
        if not GROUP.search(fields[0]):
            raise DataError(f"{where}: {fields[0]!r} is not named <Class>/v_<Class>_gXX_cYY.avi: {_ucf_fix(path)}")
        if not (videos / fields[0]).is_file():
            raise DataError(f"{where}: video {videos / fields[0]} is missing: {_ucf_fix(videos)}")
        clips.append(Clip(videos / fields[0], (index[folder],)))
    return clips


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) of each non-blank line; the official lists end lines with CRLF."""
    if not path.is_file():
        raise DataError(f"{path} is missing: {_ucf_fix(path)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}): {_ucf_fix(path)}") from None
    return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def _ucf_fix(path: Path) -> str:
    """How to repair a bad UCF101 file: re-extract a cached one (its `splits` or `videos` folder, keeping the
    archives); a user's copy is theirs to repair."""
    cached = data_dir() / CACHE
    if path.resolve().is_relative_to(cached.resolve()):
        return f"delete {cached / path.resolve().relative_to(cached.resolve()).parts[0]} and run again"
    return f"repair the copy, or point {COPY_OPTION} at a copy in the official layout"


def read_tagged_csv(csv_path: Path, video_dir: Path) -> tuple[list[str], dict[str, list[Clip]]]:
    """Sorted tag names and the clips of each split from a CSV with header `video,tags,split`: `video` is a
    path under `video_dir`, `tags` `;`-separated names, `split` train, valid or test. Labels index the names."""
    csv_path, video_dir = Path(csv_path), Path(video_dir)
    if not csv_path.is_file():
        raise DataError(f"tag list {csv_path} does not exist: set {CSV_OPTION} to a CSV with header video,tags,split")
    if not video_dir.is_dir():
        raise DataError(f"video folder {video_dir} does not exist: set {VIDEO_DIR_OPTION} to the folder holding "
                        f"the videos {csv_path} names")
    try:
        rows = _read_rows(csv_path, video_dir)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{csv_path} is not a UTF-8 CSV ({err}): save it as UTF-8 CSV") from None
    names = sorted({tag for _, tags, _ in rows for tag in tags})
    index = {name: i for i, name in enumerate(names)}
    splits: dict[str, list[Clip]] = {name: [] for name in SPLIT_NAMES}
    for path, tags, split in rows:
        splits[split].append(Clip(path, tuple(sorted(index[t] for t in tags))))
    return names, splits


def _read_rows(csv_path: Path, video_dir: Path) -> list[tuple[Path, set[str], str]]:
    """(video path, tags, split) of each row, every row checked; a bad one is named by `<csv>:<line>`."""
    rows, seen = [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["video", "tags", "split"]:
            raise DataError(f"{csv_path}:1: the header must be video,tags,split, got {','.join(header or [])!r}")
        for row in reader:
            if not row:
                continue
            where = f"{csv_path}:{reader.line_num}"
            path, tags, split = _check_row(row, where, video_dir)
            if path in seen:
                raise DataError(f"{where}: video {row[0]!r} is listed again (first at line {seen[path]}): "
                                f"list each video once, with all its tags")
            seen[path] = reader.line_num
            rows.append((path, tags, split))
    if not rows:
        raise DataError(f"{csv_path} lists no video: add rows video,tags,split")
    return rows


def _check_row(row: list[str], where: str, video_dir: Path) -> tuple[Path, set[str], str]:
    if len(row) != 3:
        raise DataError(f"{where}: expected 3 columns (video,tags,split), got {len(row)}: quote a field that "
                        f"holds a comma")
    video, tags, split = (field.strip() for field in row)
    if split not in SPLIT_NAMES:
        raise DataError(f"{where}: unknown split {split!r}: use one of {', '.join(SPLIT_NAMES)}")
    names = [tag.strip() for tag in tags.split(";")]
    if not all(names):
        raise DataError(f"{where}: empty tag in {tags!r}: give one or more tag names separated by ';'")
    if not (video_dir / video).is_file():
        raise DataError(f"{where}: video {video_dir / video} is missing: add the file or remove its row")
    return video_dir / video, set(names), split
