"""Downloads and caches that lose nothing and leave nothing: a killed writer's temporaries are removed by the next
one, files count only once fsynced (file, then folder), a short transfer says it was short, and new files get the
umask's mode. Against the real loopback HTTP server of conftest.py and real killed subprocesses."""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from suite.archives import MARKER, extract
from suite.array_cache import array_key, array_path, cached_array
from suite.errors import DataError
from suite.fetch import RemoteFile, data_dir, fetch, write_cache

if TYPE_CHECKING:
    from conftest import Origin

REPO = Path(__file__).resolve().parents[1]
RELPATH = "data/ptb.valid.txt"
CONTENT = b"".join(b" the %d cats sat on the mat <eos>\n" % i for i in range(3000))
HALF = len(CONTENT) // 2  # what conftest's faults deliver before they break the reply
REMOTE = RemoteFile(RELPATH, hashlib.md5(CONTENT).hexdigest())
PARTS = {"what": "durability test array", "v": 1}
SHAPE = (64, 32)

pytestmark = pytest.mark.usefixtures("cache")  # every test: its own empty cache, no mirror (conftest.py)


@pytest.fixture
def origin(tmp_path: Path, serve: Callable[[Path], Origin]) -> Origin:
    root = tmp_path / "origin"
    (root / RELPATH).parent.mkdir(parents=True)
    (root / RELPATH).write_bytes(CONTENT)
    return serve(root)


def expected_array() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


def fill_array(out: np.ndarray) -> None:
    out[:] = expected_array()


def leftovers(folder: Path) -> list[str]:
    """Hidden entries (temporaries, staging folders) in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- short transfers ----------------------------------------------------------------------------------------------

def test_http_client_reports_an_early_end_only_inside_chunked_bodies(origin: Origin) -> None:
    """What the fix relies on (Python 3.11): with a Content-Length, read(n) returns b"" at an early end and raises
    nothing; in a chunked body it raises IncompleteRead."""
    origin.faults[RELPATH] = ["short", "chunked-short"]
    with urllib.request.urlopen(f"{origin.url}/{RELPATH}") as response:
        body = b"".join(iter(lambda: response.read(4096), b""))
    assert len(body) == HALF and response.headers["Content-Length"] == str(len(CONTENT))
    with urllib.request.urlopen(f"{origin.url}/{RELPATH}") as response, pytest.raises(http.client.IncompleteRead):
        while response.read(4096):
            pass


@pytest.mark.parametrize(("fault", "got"), [
    ("short", f"got {HALF} of {len(CONTENT)} bytes"),
    ("chunked-short", f"got {HALF} bytes of a chunked body cut mid-way"),
])
def test_a_short_transfer_says_it_was_short(origin: Origin, fault: str, got: str) -> None:
    origin.faults[RELPATH] = [fault, fault]
    with pytest.raises(DataError) as err:
        fetch(origin.url, REMOTE, "ptb")
    message = str(err.value)
    assert message.startswith(f"download of {origin.url}/{RELPATH} ended short: {got} (retried once): put ")
    assert "checksum" not in message and "\n" not in message and "SUITE_DATA_MIRROR" in message
    assert origin.requests[RELPATH] == 2
    assert leftovers(data_dir() / "ptb" / "data") == []


@pytest.mark.parametrize("fault", ["short", "chunked-short"])
def test_one_short_transfer_is_retried_and_said(origin: Origin, fault: str, capsys: pytest.CaptureFixture) -> None:
    origin.faults[RELPATH] = [fault]
    assert fetch(origin.url, REMOTE, "ptb").read_bytes() == CONTENT
    assert origin.requests[RELPATH] == 2
    assert f"download of {origin.url}/{RELPATH} ended short: got {HALF}" in capsys.readouterr().err


# --- a killed writer's temporaries are removed by the next writer ---------------------------------------------------

def start_and_kill(code: str, ready: Callable[[], bool]) -> None:
    """Run `code` in a fresh interpreter (same data dir), wait until `ready()`, then kill -9 it."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the writer never got going: {proc.communicate()}")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


def test_a_killed_download_leaves_a_part_that_the_next_fetch_removes(origin: Origin) -> None:
    origin.faults[RELPATH] = ["stall"]  # half the body, then a download in progress
    folder = data_dir() / "ptb" / "data"
    start_and_kill(f"""
        import suite.fetch as f
        f.CHUNK_BYTES = 4096  # small reads, so the half body reaches the .part file
        f.fetch({origin.url!r}, f.RemoteFile({RELPATH!r}, {REMOTE.checksum!r}), "ptb")
    """, lambda: any(p.stat().st_size > 0 for p in folder.glob(".ptb.valid.txt.*.part")))
    assert [name.endswith(".part") for name in leftovers(folder)] == [True]  # what kill -9 leaves
    assert fetch(origin.url, REMOTE, "ptb").read_bytes() == CONTENT
    assert sorted(p.name for p in folder.iterdir()) == ["ptb.valid.txt"]


def test_a_leftover_part_is_removed_even_when_the_file_is_already_there(origin: Origin) -> None:
    path = fetch(origin.url, REMOTE, "ptb")
    for name in (".ptb.valid.txt.k3j_9x0a.part", ".ptb.valid.txt.4242.tmp"):  # mkstemp's and atomic_write's
        (path.parent / name).write_bytes(b"half")
    assert fetch(origin.url, REMOTE, "ptb") == path and origin.requests[RELPATH] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["ptb.valid.txt"]


def killed_array_writer(ready: Path, target: Path) -> str:
    return f"""
        import time, numpy as np
        from suite.array_cache import cached_array
        def fill(out):
            out[:8] = 1.0
            out.flush()
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        cached_array({PARTS!r}, {SHAPE!r}, np.float32, fill, "arrays")
    """


def killed_cache_writer(ready: Path, target: Path) -> str:
    return f"""
        import time
        from pathlib import Path
        from suite.fetch import write_cache
        def write(out):
            out.write(b"half a cache file")
            out.flush()
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        write_cache(Path({str(target)!r}), write)
    """


@pytest.mark.parametrize("killed", [killed_array_writer, killed_cache_writer])
def test_a_killed_cache_writer_leaves_nothing_after_the_next_run(killed: Callable[[Path, Path], str],
                                                                 tmp_path: Path) -> None:
    ready, is_array = tmp_path / "ready", killed is killed_array_writer
    target = array_path(array_key(PARTS)) if is_array else data_dir() / "bpe" / "model.json"
    start_and_kill(killed(ready, target), ready.exists)  # killed while writing its temporary file
    assert [name.endswith(".tmp") for name in leftovers(target.parent)] == [True]
    if is_array:
        assert np.array_equal(cached_array(PARTS, SHAPE, np.float32, fill_array, "arrays").numpy(), expected_array())
        assert sorted(p.suffix for p in target.parent.iterdir()) == [".json", ".npy"]
    else:
        write_cache(target, lambda out: out.write(b"whole"))
        assert [p.name for p in target.parent.iterdir()] == ["model.json"] and target.read_bytes() == b"whole"


def test_stale_staging_folders_go_and_a_neighbours_stay(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("data/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    stale = [".out.31337.staging", ".out.k3j_9x0a"]  # this version's (a dead PID) and mkdtemp's of before
    neighbour = ".out.v2.4242.staging"  # the live staging of another target, `out.v2`
    for name in [*stale, neighbour]:
        (tmp_path / name / "data").mkdir(parents=True)
    assert (extract(archive, tmp_path / "out") / "data/a.txt").read_bytes() == b"hi"
    assert leftovers(tmp_path) == [neighbour]


# --- fsync: the file before its rename, the folder after it -----------------------------------------------------

def write_file(origin: Origin, tmp_path: Path) -> Path:
    return write_cache(data_dir() / "bpe" / "model.json", lambda out: out.write(b"{}"))


def write_array(origin: Origin, tmp_path: Path) -> Path:
    cached_array(PARTS, SHAPE, np.float32, fill_array, "arrays")
    return array_path(array_key(PARTS))


def write_bpe(origin: Origin, tmp_path: Path) -> Path:
    from tasks.subwords import cached_bpe
    cached_bpe(["the cat sat on the mat"] * 20, 40, "durability")
    return next((data_dir() / "bpe").glob("*.json"))


def write_tokens(origin: Origin, tmp_path: Path) -> Path:
    from tasks.imdb import cached_tokens
    cached_tokens({"train": ["a good film", "a bad film"], "test": ["good"]}, 10, 5)
    return next((data_dir() / "imdb" / "tokens").glob("*.npz"))


def write_speech(origin: Origin, tmp_path: Path) -> Path:
    from tasks.synthetic_speech import _save
    _save(data_dir() / "synthetic_speech" / "set.npz", [np.zeros(5, np.int16)], ["HELLO"])
    return data_dir() / "synthetic_speech" / "set.npz"


def download(origin: Origin, tmp_path: Path) -> Path:
    return fetch(origin.url, REMOTE, "ptb")


def extraction(origin: Origin, tmp_path: Path) -> Path:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(origin.root / RELPATH, arcname="data/ptb.valid.txt")
    return extract(archive, data_dir() / "ptb" / "extracted")


WRITERS = {f.__name__: f for f in (download, write_file, write_array, write_bpe, write_tokens, write_speech,
                                   extraction)}


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Each os.fsync as (kind, inode). A spy, the last resort: what fsync buys shows only after a power loss,
    which no test here can cause. It still calls the real fsync."""
    calls: list[tuple[str, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield calls


@pytest.mark.parametrize("writer", WRITERS)
def test_the_file_is_fsynced_before_its_rename_and_the_folder_after(writer: str, origin: Origin, tmp_path: Path,
                                                                   fsyncs: list[tuple[str, int]]) -> None:
    path = WRITERS[writer](origin, tmp_path)
    # A file keeps its inode through the rename; an extraction counts once its marker is there.
    synced = path / MARKER if path.is_dir() else path
    file_sync = fsyncs.index(("file", synced.stat().st_ino))
    folder_syncs = [i for i, call in enumerate(fsyncs) if call == ("folder", path.parent.stat().st_ino)]
    assert folder_syncs and folder_syncs[-1] > file_sync, fsyncs


# --- modes: the umask's, not mkstemp's 0o600 ---------------------------------------------------------------------

@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [
    (0o022, 0o644, 0o755),
    (0o002, 0o664, 0o775),  # a group-shared SUITE_DATA_DIR
    (0o077, 0o600, 0o700),
], ids=lambda mode: f"{mode:03o}")
@pytest.mark.parametrize("writer", WRITERS)
def test_new_files_get_the_umasks_mode(writer: str, mask: int, file_mode: int, folder_mode: int, origin: Origin,
                                       tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(mask)
    path = WRITERS[writer](origin, tmp_path)
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(folder_mode if path.is_dir() else file_mode)
