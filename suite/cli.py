"""`suite run | list | show`: the command line. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from suite import registry
from suite.config import BUDGETS, PRECISIONS, SOURCES, VARIANTS, build_config
from suite.errors import UserError

EXIT_USER, EXIT_RUN = 2, 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        registry.load_plugins()
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt as stop:  # a stop signal before a run had built anything it could resume
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name} before anything resumable existed (while preparing "
              "data or reading inputs); records already written are kept: run the same command again",
              file=sys.stderr)
        return 128 + signum


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="suite", description="Benchmark recurrent sequence models.")
    sub = top.add_subparsers(required=True, metavar="{run,sweep,list,show,leaderboard,compare}")
    run = sub.add_parser("run", help="train and evaluate one baseline on one task; write one JSON record")
    run.add_argument("--task", required=True)
    run.add_argument("--model", required=True)
    run.add_argument("--source", default="real", choices=SOURCES,
                     help="real data (downloaded once, checksummed) or the built-in synthetic source")
    run.add_argument("--budget", default="small", choices=list(BUDGETS))
    run.add_argument("--precision", default="fp32", choices=PRECISIONS)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    run.add_argument("--variant", default="dense", choices=VARIANTS)
    run.add_argument("--parent", type=Path, help="dense parent record of a variant (default: same flags, dense)")
    run.add_argument("--finetune-units", type=int, default=0, help="pruning variants: fine-tuning units")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value, e.g. --set train.lr=0.5 (repeatable)")
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    run.add_argument("--resume", action="store_true", help="continue from this config's last checkpoint")
    run.add_argument("--rerun", action="store_true",
                     help="train a finished run again; its record is replaced when the new run finishes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    _wandb_flags(run)
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="a grid of runs: planned and checked first, resumable, in parallel")
    sweep.add_argument("spec", nargs="?", type=Path, help="TOML spec with the same keys as the flags")
    for key in ("task", "model", "source", "budget", "precision", "seed", "variant"):
        sweep.add_argument(f"--{key}", help=f"comma-separated {key}s" + (" or all" if key in ("task", "model") else ""))
    sweep.add_argument("--set", action="append", default=None, metavar="SECTION.KEY=VALUE",
                       help="an override for every run (repeatable)")
    sweep.add_argument("--workers", type=int, help="runs at once (default 1; on Slurm the job array's limit)")
    sweep.add_argument("--results", type=Path, help="results directory (default results)")
    sweep.add_argument("--retry-failed", action="store_true", default=None, help="rerun runs whose record failed")
    sweep.add_argument("--executor", help="local (the default: processes on this machine) or slurm (submitit)")
    sweep.add_argument("--procs-per-run", type=int, help="DDP processes per run under torchrun (gloo on CPU)")
    sweep.add_argument("--gpus-per-run", type=int, help="GPUs per run, one DDP process each")
    sweep.add_argument("--cpus-per-run", type=int, help="Slurm: CPUs per job (default one per process)")
    sweep.add_argument("--partition", help="Slurm partition")
    sweep.add_argument("--account", help="Slurm account")
    sweep.add_argument("--time", type=int, help="Slurm time limit per job in minutes (default 60; a longer run "
                                                "checkpoints before the limit and is requeued)")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    sweep.set_defaults(func=cmd_sweep)
    lst = sub.add_parser("list", help="tasks, models, budgets, precisions, variants and what applies where")
    lst.set_defaults(func=cmd_list)
    board = sub.add_parser("leaderboard", help="LEADERBOARD.md, leaderboard.json and the static site from records")
    board.add_argument("--results", type=Path, default=Path("results"), help="results directory to read")
    board.add_argument("--out", type=Path, help="output directory (default: the results directory)")
    _wandb_flags(board)
    board.set_defaults(func=cmd_leaderboard)
    comp = sub.add_parser("compare", help="gate on quality and speed regressions between two result sets")
    comp.add_argument("base", type=Path, help="results directory or leaderboard.json of the reference")
    comp.add_argument("new", type=Path, help="results directory or leaderboard.json to check")
    comp.add_argument("--config", type=Path, help="TOML tolerances ([kinds] and [metrics] tables)")
    comp.add_argument("--markdown", type=Path, help="also write the table as Markdown (e.g. $GITHUB_STEP_SUMMARY)")
    comp.add_argument("--fail-on-missing", action="store_true", help="exit 1 when NEW lacks a row BASE has")
    comp.set_defaults(func=cmd_compare)
    show = sub.add_parser("show", help="readable summary of one result record")
    show.add_argument("record", type=Path)
    show.set_defaults(func=cmd_show)
    return top


def _wandb_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline unless logged in)")
    sub.add_argument("--wandb-project", default=None)
    sub.add_argument("--wandb-entity", default=None)


def cmd_sweep(args: argparse.Namespace) -> int:
    from suite import sweep, sweep_spec

    spec = sweep_spec.load_spec(args.spec) if args.spec else {}
    flags = {k: getattr(args, k) for k in (*sweep_spec.GRID, *sweep_spec.SETTINGS)}
    spec.update({k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None})  # flags win
    return sweep.main(spec, args.dry_run)


def cmd_run(args: argparse.Namespace) -> int:
    from suite import distributed, experiment, variant_run

    task_cls, model_cls = registry.get("task", args.task), registry.get("model", args.model)
    experiment.check_applicable(task_cls, model_cls)
    world = distributed.current()
    if world.size > 1 and args.variant != "dense":
        raise UserError("a variant compresses its parent in one process: run it without torchrun, with "
                        "--parent RECORD.json naming the multi-process parent")
    cfg = build_config(args.task, args.model, budget=args.budget, overrides=args.set, options_cls=task_cls.Options,
                       presets=task_cls.presets, source=args.source, precision=args.precision, seed=args.seed,
                       device=_resolved_device(args.device), world_size=world.size)
    bar, flags = False if args.no_progress else None, {"resume": args.resume, "rerun": args.rerun}
    if args.variant == "dense":
        if args.parent or args.finetune_units:
            raise UserError("--parent and --finetune-units apply to variant runs only: add --variant")
        path = experiment.record_file(args.results, cfg)
        start = functools.partial(experiment.run, cfg, args.results, progress_bar=bar, **flags)
    else:
        parent, parent_path = variant_run.find_parent(cfg, args.results, args.parent)
        variant = variant_run.variant_config(variant_run.parent_config(parent), parent["run_id"], args.variant,
                                            args.finetune_units)
        path = experiment.record_file(args.results, variant)
        start = functools.partial(variant_run.run_variant, args.variant, args.finetune_units, parent, parent_path,
                                  args.results, progress_bar=bar, **flags)
    done = experiment.finished_record(path)
    if done is not None and not args.rerun:
        print(f"{done['status']}: {one_line(done)}\nrecord: {path}\nthis run has finished already; nothing was "
              "trained (add --rerun to train it again)")
        return 0
    try:
        record, path = start()
    except UserError:
        raise
    except Exception as exc:
        if os.environ.get("SUITE_DEBUG"):
            raise
        print(f"error: the run failed ({type(exc).__name__}: {' '.join(str(exc).split())}); {_failed_record(path)}; "
              "set SUITE_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_RUN
    if record is None:  # a torchrun rank other than 0: rank 0 writes the record and reports
        return 0
    print(f"{record['status']}: {one_line(record)}\nrecord: {path}")
    for note in (record["variant"] or {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if args.wandb:  # after the local record exists: a W&B failure only prints a warning
        from suite import tracking
        tracking.log_run(record, args.wandb_project, args.wandb_entity)
    if record["status"] == "interrupted":
        again = " --rerun" if args.rerun else ""
        print(f"stopped during {record['stage']}: continue with the same command and{again} --resume",
              file=sys.stderr)
        return 128 + signal.Signals[record["stopped_by"]].value
    if record["status"] == "diverged":
        print("error: the loss became NaN/inf; lower train.lr or set train.clip", file=sys.stderr)
        return EXIT_RUN
    return 0


def _failed_record(path: Path) -> str:
    """What the user can read about a failed run: its record, only if one was written."""
    try:
        status = json.loads(path.read_text())["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no record was written"
    if status == "failed":
        return f"its record {path} has status failed"
    return f"the record {path} is unchanged (status {status})"


def _resolved_device(name: str) -> str:
    """'auto' becomes cpu or cuda before the config is hashed, so one run has one id whichever flag named it."""
    from suite.experiment import resolve_device

    return resolve_device(name).type if name == "auto" else name


def one_line(record: dict[str, Any]) -> str:
    task, used = record["task"], record["budget_used"]
    metric = task["primary_metric"]
    value = record["metrics"].get("test", {}).get(metric)
    shown = f"test {metric} {value:.2f}" if value is not None else "no test metric"
    if record["variant"] and record["variant"]["latency_ms"] is None:  # interrupted before it was measured
        return f"{record['variant']['name']} of {record['variant']['parent_run_id']}: {shown}"
    if record["variant"]:
        v = record["variant"]
        delta = v["quality_delta"].get(f"test/{metric}")
        change = f" ({delta:+.2f} vs parent)" if delta is not None else ""
        return f"{v['name']} of {v['parent_run_id']}: {shown}{change}, sparsity {v['sparsity']:.0%}, " \
               f"{v['size_bytes']:,} B, {v['latency_ms']:.2f} ms at batch 1 x 35 (parent {v['parent_latency_ms']:.2f})"
    rate = record["throughput"]["train_units_per_s"]
    speed = f", {rate:,.0f} {task['unit']}/s" if rate else ""
    return f"{record['config']['task']}/{record['config']['model']} {shown} after {used['units']:,} " \
           f"{task['unit']} in {used['seconds']:.1f} s{speed}"


def cmd_list(args: argparse.Namespace) -> int:
    from suite.experiment import applicable_models
    from suite.show import table

    tasks, models = registry.TASKS, registry.MODELS
    arrow = {True: "higher is better", False: "lower is better"}
    print("tasks:")
    print(table([[n, t.unit, f"{t.primary_metric} ({arrow[t.metrics[t.primary_metric]]})",
                  "causal" if t.causal else "non-causal"] for n, t in tasks.items()], indent=2))
    print("models:")
    print(table([[n, "causal" if m.causal else "bidirectional", (m.__doc__ or "").strip().splitlines()[0]]
                 for n, m in models.items()], indent=2))
    print("budgets:")
    print(table([[n, ", ".join(f"{k}={v}" for k, v in b.items())] for n, b in BUDGETS.items()], indent=2))
    print(f"precisions: {', '.join(PRECISIONS)}")
    print(f"variants: {', '.join(VARIANTS)}")
    print("applicability (yes = runs, n/a = not applicable):")
    rows = [[t, *("yes" if m in applicable_models(tc) else "n/a" for m in models)] for t, tc in tasks.items()]
    print(table([["task", *models], *rows], indent=2))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from suite.leaderboard import build_export, warn_skipped, write_outputs

    if not args.results.is_dir():
        raise UserError(f"no results directory at {args.results}: run `suite run ...` first or pass --results DIR")
    export = build_export(args.results)
    warn_skipped(export)
    out = args.out or args.results
    from suite.site import write_site

    for path in [*write_outputs(export, args.results, out), write_site(export, args.results, out)]:
        print(f"wrote {path}")
    if args.wandb:
        from suite import tracking
        tracking.log_leaderboard(export, args.wandb_project, args.wandb_entity, out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from suite.compare import main_compare

    return main_compare(args.base, args.new, args.config, args.markdown, args.fail_on_missing)


def cmd_show(args: argparse.Namespace) -> int:
    from suite.results import load_record
    from suite.show import summary

    print(summary(load_record(args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
