"""The twin reference cache: keyed by the code that trains the twin as well as its config and data, so that
a line cached by older code is trained again rather than read back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from suite.registry import TASKS
from tasks import twin
from tasks.twin import CODE_PACKAGES, code_digest

digest = code_digest.__wrapped__  # uncached: the tests below edit the files between calls


def write_tree(root: Path) -> Path:
    for name, text in {"suite/a.py": "A = 1\n", "tasks/b.py": "B = 2\n", "tasks/sub/c.py": "C = 3\n",
                       "tasks/notes.txt": "not code\n", "other/d.py": "D = 4\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_code_digest_follows_every_source_file_of_the_packages_and_nothing_else(tmp_path: Path) -> None:
    root = write_tree(tmp_path)
    packages = ("suite", "tasks")
    first = digest(root, packages)
    assert first == digest(root, packages) and len(first) == 64
    (root / "tasks/notes.txt").write_text("edited\n")
    (root / "other/d.py").write_text("D = 5\n")  # outside the packages
    assert digest(root, packages) == first
    (root / "tasks/sub/c.py").write_text("C = 4\n")  # a nested module counts
    edited = digest(root, packages)
    assert edited != first
    (root / "tasks/e.py").write_text("")  # so does a new, even empty, one
    assert digest(root, packages) not in (first, edited)
    (root / "tasks/e.py").unlink()
    (root / "tasks/b.py").rename(root / "tasks/b2.py")  # and a rename: the path is hashed with the bytes
    assert digest(root, packages) not in (first, edited)


def test_the_default_digest_covers_the_installed_packages() -> None:
    root = Path(twin.__file__).resolve().parents[1]
    assert all((root / p / "__init__.py").is_file() for p in CODE_PACKAGES)
    assert code_digest() == digest(root, CODE_PACKAGES)


def test_a_line_cached_by_other_code_is_trained_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def reference() -> dict:
        task = TASKS["translation"](tiny_config("gru", task_name="translation"), torch.device("cpu"))
        task.prepare()
        return task.reference()

    line = reference()
    (entry,) = (cache / "references").glob("*.json")
    assert json.loads(entry.read_text()) == line and line["name"] == "no-attention"
    entry.write_text(json.dumps({**line, "name": "read back"}))  # so that a read-back is told from a retrain
    assert reference()["name"] == "read back"
    monkeypatch.setattr(twin, "code_digest", lambda: "the code after an edit")
    again = reference()
    assert again["name"] == "no-attention" and len(list((cache / "references").glob("*.json"))) == 2
    assert again == line  # the same seed, config and data: the same twin
