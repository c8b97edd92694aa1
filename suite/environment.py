"""Environment fingerprint and memory meter for result records."""
from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with '-dirty' when tracked files changed."""
    commit = _run(["git", "rev-parse", "HEAD"], ROOT)
    if commit and _run(["git", "status", "--porcelain", "--untracked-files=no"], ROOT):
        commit += "-dirty"
    return commit


def _version(dist: str) -> str | None:
    """An installed distribution's version, read from its metadata (importing torchaudio costs a second)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(device: torch.device, seed: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    return {
        "device": str(device),
        "device_name": device_name(device),
        "driver": driver.splitlines()[0] if driver else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "torchaudio": _version("torchaudio"),
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "seeds": {"torch": seed, "numpy": seed, "python": seed},
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak CUDA allocator bytes on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return {"kind": "cuda_allocator", "peak_bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"kind": "rss", "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
