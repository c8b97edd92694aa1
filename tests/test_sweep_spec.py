"""`suite sweep` checks every key of its spec against one table (SHAPES): a wrong type in the TOML file or
on the command line is one line `error: ...` naming the file, the key, what it takes and what it holds, exit 2,
never a traceback and never a silent coercion. Dry runs only: nothing trains."""
from __future__ import annotations

import datetime
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from suite import sweep, sweep_spec
from suite.errors import UserError

VALID = {"task": '"ptb"', "model": '"gru"', "source": '"synthetic"', "budget": '"smoke"'}
"""A spec that plans one run; each case replaces the keys it names."""
SEED = "seed must be an integer, a list of integers or a comma-separated string of integers, got"
SETS = "must be a string SECTION.KEY=VALUE or a list of such strings, got"
NAMES = "must be a name, a comma-separated string of names or a list of names, got"


def spec_text(case: str) -> str:
    """VALID less the keys `case` sets (as `key =`, `[key]` or `[[key]]`), then `case`: tables come last."""
    named = set(re.findall(r"^\[*\s*(\w+)", case, flags=re.MULTILINE))
    return "".join(f"{k} = {v}\n" for k, v in VALID.items() if k not in named) + case + "\n"


def sweep_cli(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    """`suite sweep grid.toml --dry-run` in a fresh process, in `tmp_path`: results would go there."""
    (tmp_path / "grid.toml").write_text(text)
    return subprocess.run([sys.executable, "-m", "suite.cli", "sweep", "grid.toml", "--dry-run", *flags],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


CLI_CASES = [  # (id, TOML case, flags, message): the cases, through the real command line
    ("seed-nested-list", "seed = [[1]]", (), f"grid.toml: {SEED} [[1]]"),
    ("seed-float-was-coerced", "seed = [1.7]", (), f"grid.toml: {SEED} [1.7]"),
    ("set-int", "set = 5", (), f"grid.toml: set {SETS} 5"),
    ("set-list-of-int", "set = [1]", (), f"grid.toml: set {SETS} [1]"),
    ("task-int", "task = 5", (), f"grid.toml: task {NAMES} 5"),
    ("task-list-with-int", 'task = ["ptb", 3]', (), f"grid.toml: task {NAMES} ['ptb', 3]"),
    ("source-list-with-int", 'source = ["synthetic", 1]', (), f"grid.toml: source {NAMES} ['synthetic', 1]"),
    ("task-array-of-tables", '[[task]]\nname = "ptb"', (), f"grid.toml: task {NAMES} an array of tables"),
    ("task-table", '[task]\nname = "ptb"', (), f"grid.toml: task {NAMES} a table"),
    ("results-int", "results = 5", (), "grid.toml: results must be a directory (a string), got 5"),
    ("retry-failed-string-was-true", 'retry_failed = "no"', (), "grid.toml: retry_failed must be true or false, "
                                                              "got 'no'"),
    ("workers-bool", "workers = true", (), "grid.toml: workers must be a whole number >= 1, got True"),
    ("unknown-key", 'models = "gru"', (), "grid.toml: unknown key 'models': did you mean 'model'?"),
    ("malformed-toml", 'task = = "ptb"', (), "grid.toml: not valid TOML: Invalid value (at line 4, column 8)"),
    ("flag-seed-float", "", ("--seed", "1.7"), f"--{SEED} '1.7'"),
]


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Every CLI case started at once, a few at a time: each process spends seconds importing torch."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {name: pool.submit(sweep_cli, tmp_path_factory.mktemp(name), spec_text(case), *flags)
               for name, case, flags, _ in CLI_CASES}
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("name, message", [(c[0], c[3]) for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_a_wrong_type_is_one_line_and_exit_2(cli_outcomes: dict[str, Future], name: str, message: str) -> None:
    proc = cli_outcomes[name].result()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()  # exactly one line
    assert line.startswith("error: ") and message in line, line
    assert proc.stdout == ""  # nothing planned


@pytest.mark.parametrize("case, message", [
    ("seed = 2.0", f"grid.toml: {SEED} 2.0"),
    ("seed = true", f"grid.toml: {SEED} True"),
    ("retry_failed = 0", "grid.toml: retry_failed must be true or false, got 0"),
    ("workers = 1.5", "grid.toml: workers must be a whole number >= 1, got 1.5"),
    ("workers = 0", "grid.toml: workers must be a whole number >= 1, got 0"),
    ("executor = 1", "grid.toml: executor must be a name (local or slurm), got 1"),
    ("time = 10:00:00", "grid.toml: time must be a whole number >= 1, got datetime.time(10, 0)"),
    ('variant = {name = "dense"}', f"grid.toml: variant {NAMES} a table"),
    ('task = "ptb"', "grid.toml: not valid TOML: Cannot overwrite a value (at line 5"),  # task twice
])
def test_a_spec_file_is_checked_as_it_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                                                message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("grid.toml").write_text("".join(f"{k} = {v}\n" for k, v in VALID.items()) + case + "\n")
    with pytest.raises(UserError) as err:
        sweep_spec.load_spec(Path("grid.toml"))
    assert str(err.value).startswith(message)


def test_a_valid_spec_with_every_local_setting_is_planned(tmp_path: Path) -> None:
    text = spec_text('seed = [1, 2]\nretry_failed = false\nvariant = ["dense"]\nprecision = "fp32, bf16"\n'
                     'set = ["train.lr=0.5"]\nworkers = 2\nexecutor = "local"\ngpus_per_run = 0\nresults = "out"')
    proc = sweep_cli(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert "plan: 4 runs (4 todo), 2 at once, executor local" in proc.stdout
    assert all(f"--seed {s} " in proc.stdout for s in (1, 2)) and "--set train.lr=0.5" in proc.stdout


def test_every_key_a_spec_may_hold_has_a_shape() -> None:
    spec = sweep_spec
    assert set(spec.SHAPES) == set(spec.GRID + spec.SETTINGS) == set(spec.DEFAULTS) | {"task", "model"}


@pytest.mark.parametrize("spec, message", [
    ({"time": datetime.time(10, 0)}, "--time must be a whole number >= 1, got datetime.time(10, 0)"),
    ({"gpus_per_run": -1}, "--gpus-per-run must be a whole number >= 0, got -1"),
    ({"procs_per_run": "2"}, "--procs-per-run must be a whole number >= 1, got '2'"),
    ({"cpus_per_run": False}, "--cpus-per-run must be a whole number >= 1, got False"),
    ({"partition": 5}, "--partition must be a name (a string), got 5"),
    ({"account": ["lab"]}, "--account must be a name (a string), got ['lab']"),
    ({"variant": {"a": 1}}, f"--variant {NAMES} a table"),
    ({"budget": ["smoke", ["small"]]}, f"--budget {NAMES} ['smoke', ['small']]"),
    ({"seed": "1,x"}, f"--{SEED} '1,x'"),
    ({"sed": 1}, "unknown key 'sed': did you mean 'seed'?"),
])
def test_the_checker_names_the_flag_for_a_spec_built_in_code(spec: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        sweep_spec.check_spec(spec)
    assert str(err.value) == message


def test_the_checker_accepts_every_valid_shape() -> None:
    good = {"task": ["ptb", "imdb"], "model": "all", "source": "synthetic,real", "budget": "smoke", "seed": " 1, -2",
            "precision": [], "variant": None, "set": "train.lr=1", "workers": 3, "results": "r", "retry_failed": True,
            "executor": "slurm", "procs_per_run": None, "gpus_per_run": 0, "cpus_per_run": 4, "partition": "gpu",
            "account": "lab", "time": 90}
    assert sweep_spec.check_spec(good, "grid.toml") is good
    assert sweep.grid_values({"seed": " 1, -2"}, "seed") == [1, -2]


def test_an_unreadable_spec_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"sweep spec .*missing.toml cannot be read: No such file or directory$"):
        sweep_spec.load_spec(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'task = "\xe9"\n')
    with pytest.raises(UserError, match=r"latin1.toml: not valid TOML: 'utf-8' codec can't decode"):
        sweep_spec.load_spec(tmp_path / "latin1.toml")
