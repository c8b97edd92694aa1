"""fetch against a real HTTP server on 127.0.0.1: cache, checksum, one retry, mirror, one-line errors."""
from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from suite.errors import DataError
from suite.fetch import RemoteFile, data_dir, fetch, md5sum

if TYPE_CHECKING:
    from conftest import Origin  # the loopback HTTP server, shared with test_ptb.py

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RELPATH = "data/ptb.valid.txt"  # a subfolder, as in an official layout
CONTENT = b"".join(b" the %d cats sat on the mat <eos>\n" % i for i in range(3000))
REMOTE = RemoteFile(RELPATH, hashlib.md5(CONTENT).hexdigest())
DAMAGED = CONTENT[: len(CONTENT) // 2]  # what a damaged transfer delivers: a truncated body

pytestmark = pytest.mark.usefixtures("cache")  # every test: its own empty cache, no mirror (conftest.py)


@pytest.fixture
def origin(tmp_path: Path, serve: Callable[[Path], Origin]) -> Origin:
    root = tmp_path / "origin"
    (root / RELPATH).parent.mkdir(parents=True)
    (root / RELPATH).write_bytes(CONTENT)
    return serve(root)


def test_first_fetch_downloads_and_second_uses_cache(origin: Origin, capsys: pytest.CaptureFixture) -> None:
    path = fetch(origin.url, REMOTE, "ptb")
    assert path == data_dir() / "ptb" / RELPATH
    assert path.read_bytes() == CONTENT
    assert origin.requests[RELPATH] == 1
    assert f"downloading {origin.url}/{RELPATH} -> {path}" in capsys.readouterr().err
    assert fetch(origin.url, REMOTE, "ptb") == path
    assert origin.requests[RELPATH] == 1
    assert capsys.readouterr().err == ""


def test_truncated_cache_is_downloaded_again(origin: Origin) -> None:
    path = fetch(origin.url, REMOTE, "ptb")
    path.write_bytes(DAMAGED)
    assert fetch(origin.url, REMOTE, "ptb").read_bytes() == CONTENT
    assert origin.requests[RELPATH] == 2


def test_damaged_transfer_is_retried_once(origin: Origin) -> None:
    origin.damage[RELPATH] = 1
    assert fetch(origin.url, REMOTE, "ptb").read_bytes() == CONTENT
    assert origin.requests[RELPATH] == 2


def test_always_damaged_fails_after_two_tries_and_leaves_nothing(origin: Origin) -> None:
    origin.damage[RELPATH] = 10
    with pytest.raises(DataError) as err:
        fetch(origin.url, REMOTE, "ptb")
    message = str(err.value)
    assert origin.requests[RELPATH] == 2
    assert "ptb.valid.txt" in message and f"{origin.url}/{RELPATH}" in message
    assert REMOTE.checksum in message and hashlib.md5(DAMAGED).hexdigest() in message
    target = data_dir() / "ptb" / RELPATH
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp file either


def test_dead_server_says_how_to_supply_the_file(dead_url: str) -> None:
    with pytest.raises(DataError) as err:
        fetch(dead_url, REMOTE, "ptb")
    message = str(err.value)
    assert f"{dead_url}/{RELPATH}" in message
    assert str(data_dir() / "ptb" / "data") in message and REMOTE.checksum in message
    assert "SUITE_DATA_MIRROR" in message and "--source synthetic" in message
    assert "\n" not in message


def test_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("suite.fetch.TIMEOUT_S", 0.2)
    with socket.socket() as sock:  # listens, so connecting succeeds, but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        with pytest.raises(DataError, match="timed out"):
            fetch(f"http://127.0.0.1:{sock.getsockname()[1]}", REMOTE, "ptb")


def test_http_404_names_the_url(origin: Origin) -> None:
    missing = RemoteFile("data/ptb.train.txt", REMOTE.checksum)
    with pytest.raises(DataError, match=f"{origin.url}/data/ptb.train.txt \\(HTTP 404"):
        fetch(origin.url, missing, "ptb")


def test_file_mirror_replaces_the_origin(tmp_path: Path, dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    (mirror / RELPATH).parent.mkdir(parents=True)
    (mirror / RELPATH).write_bytes(CONTENT)
    monkeypatch.setenv("SUITE_DATA_MIRROR", mirror.as_uri())
    assert fetch(dead_url, REMOTE, "ptb").read_bytes() == CONTENT


def test_mirror_without_scheme_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_DATA_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match="SUITE_DATA_MIRROR must be"):
        fetch("https://example.invalid", REMOTE, "ptb")


@pytest.mark.skipif(not (SHARED_DATA / "ptb").is_dir(), reason=f"no shared PTB copy at {SHARED_DATA / 'ptb'}")
def test_real_ptb_valid_through_file_mirror(monkeypatch: pytest.MonkeyPatch, dead_url: str) -> None:
    monkeypatch.setenv("SUITE_DATA_MIRROR", (SHARED_DATA / "ptb").as_uri())
    path = fetch(dead_url, RemoteFile("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"), "ptb")
    assert md5sum(path) == "aa0affc06ff7c36e977d7cd49e3839bf"


def test_md5sum_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("suite.fetch.CHUNK_BYTES", 7)
    (tmp_path / "f").write_bytes(CONTENT)
    assert md5sum(tmp_path / "f") == REMOTE.checksum


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    assert data_dir() == cache
    monkeypatch.delenv("SUITE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "seqsuite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "seqsuite"


def test_relpath_must_stay_inside_the_layout() -> None:
    with pytest.raises(ValueError):
        RemoteFile("../etc/passwd", REMOTE.checksum)


def test_sha256_checksums_are_verified(origin: Origin) -> None:
    """Datasets that publish sha256 (Multi30k) are checked with sha256; a wrong one is refused by name."""
    good = RemoteFile(RELPATH, hashlib.sha256(CONTENT).hexdigest())
    assert good.algorithm == "sha256" and REMOTE.algorithm == "md5"
    assert fetch(origin.url, good, "ptb").read_bytes() == CONTENT
    bad = RemoteFile(RELPATH, hashlib.sha256(DAMAGED).hexdigest())
    with pytest.raises(DataError, match=f"expected sha256 {bad.checksum}, got {good.checksum}"):
        fetch(origin.url, bad, "other")
    with pytest.raises(ValueError, match="lowercase hex md5 or sha256"):
        RemoteFile(RELPATH, "abc")
