"""Fixtures shared by the data tests: a real HTTP server on 127.0.0.1, a dead URL and an isolated cache."""
from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class Origin:
    """A real HTTP server over a folder in the official layout that counts requests per path,
    serves a truncated body (with its own, shorter Content-Length) for the next `damage[path]` requests of
    that path, and breaks the next requests of a path as `faults[path]` lists, one fault per request. After
    half the body a fault closes the connection with the full Content-Length declared ("short": http.client's
    read(n) then returns b"" silently), closes it inside a chunked body ("chunked-short": http.client raises
    IncompleteRead), or waits until the test ends ("stall": a download in progress, for a test to kill)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: Counter[str] = Counter()
        self.damage: Counter[str] = Counter()
        self.faults: defaultdict[str, list[str]] = defaultdict(list)
        self.released = threading.Event()  # ends every stalled reply
        self._lock = threading.Lock()  # the server answers each request on its own thread
        handler = functools.partial(_Handler, self, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def record(self, relpath: str) -> str | None:
        """Count one request of `relpath`; how to serve it: "damage", a fault, or None (whole)."""
        with self._lock:
            self.requests[relpath] += 1
            if self.damage[relpath] > 0:
                self.damage[relpath] -= 1
                return "damage"
            return self.faults[relpath].pop(0) if self.faults[relpath] else None


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, origin: Origin, *args, **kwargs) -> None:
        self.origin = origin  # set first: the base __init__ already handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        relpath = self.path.lstrip("/")
        how = self.origin.record(relpath)
        if how is None:
            return super().do_GET()
        good = (self.origin.root / relpath).read_bytes()
        half = good[: len(good) // 2]
        self.send_response(200)
        if how == "chunked-short":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(good) + half)  # one chunk declared whole, cut at half
        else:
            self.send_header("Content-Length", str(len(half if how == "damage" else good)))
            self.end_headers()
            self.wfile.write(half)
        self.wfile.flush()
        if how == "stall":
            self.origin.released.wait(timeout=60)
        self.close_connection = True

    def log_message(self, *args) -> None:
        """Silent: request lines would only clutter pytest output."""


@pytest.fixture
def serve() -> Iterator[Callable[[Path], Origin]]:
    """`serve(root)` starts an Origin over `root`; every server started is shut down after the test."""
    running: list[tuple[Origin, threading.Thread]] = []

    def start(root: Path) -> Origin:
        server = Origin(root)
        # A short poll interval: shutdown() waits one interval, 0.5 s by default, on every test.
        thread = threading.Thread(target=server.server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.released.set()
        server.server.shutdown()
        server.server.server_close()
        thread.join()


@pytest.fixture
def dead_url() -> str:
    """URL of a port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data cache and no mirror, whatever the user's environment says (use it autouse per file)."""
    monkeypatch.setenv("SUITE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SUITE_DATA_MIRROR", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A real single-node Slurm cluster with accounting, started by .ci/slurm-cluster.sh (which installs it with
    apt when missing). Skips with the reason where it cannot run (not root, no apt); under CI=true it must."""
    import os
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[1] / ".ci" / "slurm-cluster.sh"
    reason = None
    if os.geteuid() != 0:
        reason = "starting a Slurm cluster needs root (bash .ci/slurm-cluster.sh start)"
    elif shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        reason = "no Slurm and no apt-get to install it"
    else:
        started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=900)
        if started.returncode:
            reason = f"the Slurm cluster did not start: {(started.stderr or started.stdout).strip()[-400:]}"
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Slurm tests: {reason}")
    if reason:
        pytest.skip(reason)
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
