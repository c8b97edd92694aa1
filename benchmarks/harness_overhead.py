"""What the suite's training loop costs: its throughput against a minimal hand-written PyTorch loop.

The hand loop is pytorch/examples word_language_model's step (forward, cross-entropy, zero_grad,
backward, clip_grad_norm_, optimizer.step, detach the hidden state, loss.item() every step) with
torch.optim in place of its manual SGD update. Both loops train a fresh copy of the same initial
weights with the same optimizer settings on the same batches (task.train_batches) for the same
number of tokens, and both leave the same number of warm-up steps out of the timing. The suite's
closing validation pass is not timed (its measured_* figures stop at the last step). Runs of the two
loops alternate in one process, and the median of each side is reported.

    python benchmarks/harness_overhead.py            # smoke LSTM and 2x200 LSTM, 5 repeats each
"""
from __future__ import annotations

import copy
import time

import common
import torch
import torch.nn.functional as F
from torch import nn

from baselines import detach_state
from suite.config import RunConfig
from tasks.ptb import PTB

TARGET = 0.95  # the suite should keep at least 95% of the hand loop's throughput
DEFAULT_UNITS = {"smoke": 16_000, "2x200": 14_000}  # 100 steps of 8x20 tokens; 20 steps of 20x35


def hand_loop(cfg: RunConfig, task: PTB, model: nn.Module) -> tuple[float, float]:
    """(tokens/s after the warm-up steps, mean training loss) of the pytorch/examples loop."""
    t = cfg.train
    optim = torch.optim.Adam if t.optimizer == "adam" else torch.optim.SGD
    optimizer = optim(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    model.train()
    hidden, steps, units, loss_sum = None, 0, 0, 0.0
    measured_units, measured_seconds = 0, 0.0
    batches = iter(task.train_batches(0))
    while units < cfg.budget.max_units:
        start = time.perf_counter()  # before fetching the batch, as the Trainer times its steps
        x, y = next(batches)  # (B, T) inputs and next-token targets
        output, hidden = model(x, hidden)  # (B, T, V)
        loss = F.cross_entropy(output.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        if t.clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), t.clip)
        optimizer.step()
        hidden = detach_state(hidden)  # repackage_hidden
        loss_sum += loss.item() * y.numel()
        seconds = time.perf_counter() - start
        steps, units = steps + 1, units + y.numel()
        if steps > cfg.budget.warmup_steps:
            measured_units, measured_seconds = measured_units + y.numel(), measured_seconds + seconds
    return measured_units / measured_seconds, loss_sum / units


def compare(size: str, units: int, repeats: int) -> dict:
    """Interleaved hand and suite runs on one model size; medians and the suite/hand ratio."""
    cfg = common.ptb_config("lstm", "smoke", common.SIZES[size], units=units)
    task = common.prepare_task(cfg)
    if units > task.units_per_epoch():
        raise SystemExit(f"--units for {size} must stay within one epoch ({task.units_per_epoch()} tokens)")
    initial = common.build_model(cfg, task)
    losses: dict[str, float] = {}

    def hand() -> float:
        rate, losses["hand"] = hand_loop(cfg, task, copy.deepcopy(initial))
        return rate

    def suite() -> float:
        outcome = common.train(cfg, task, copy.deepcopy(initial))
        losses["suite"] = outcome.progress.curve[-1]["train_loss"]
        return common.units_per_s(outcome)

    rates = common.interleaved({"hand": hand, "suite": suite}, repeats)
    hand_rate, suite_rate = common.median(rates["hand"]), common.median(rates["suite"])
    return {"size": size, "units": units, "steps": units // (cfg.train.batch_size * cfg.options.bptt),
            "warmup_steps": cfg.budget.warmup_steps, "optimizer": cfg.train.optimizer,
            "hand_tokens_per_s": hand_rate, "suite_tokens_per_s": suite_rate, "ratio": suite_rate / hand_rate,
            "runs": rates, "mean_train_loss": losses}


def main() -> None:
    p = common.parser("harness_overhead", __doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(common.SIZES), default=list(common.SIZES))
    p.add_argument("--units", type=int, default=None,
                   help=f"tokens per run for every size (default per size: {DEFAULT_UNITS})")
    p.add_argument("--repeats", type=int, default=5, help="runs of each loop; the median is reported")
    args = common.parse(p)
    device = torch.device("cpu")
    print(common.DATA_NOTE)
    figures = {"benchmark": "harness_overhead", "target_ratio": TARGET, "environment": common.environment(device),
               "results": [compare(s, args.units or DEFAULT_UNITS[s], args.repeats) for s in args.sizes]}
    rows = [[r["size"], r["units"], r["hand_tokens_per_s"], r["suite_tokens_per_s"], r["ratio"],
             "yes" if r["ratio"] >= TARGET else "NO"] for r in figures["results"]]
    common.print_table(f"LSTM LM training throughput, fp32, CPU ({torch.get_num_threads()} threads), "
                       f"median of {args.repeats}", ["size", "tokens", "hand tok/s", "suite tok/s",
                                                    "suite/hand", f">= {TARGET}"], rows)
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
