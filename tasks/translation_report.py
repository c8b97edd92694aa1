"""What the translation task reports beyond its metrics: the no-attention reference line, the hypotheses
its BLEU was computed on, and attention heatmaps.

The reference is the same model with `attention="none"` (tasks/twin.py), trained under the run's budget
or for `options.reference_units` target tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure
from torch import nn

from suite.decoding import greedy_search
from suite.durable import atomic_write_text
from tasks.subwords import BOS, EOS
from tasks.twin import twin_reference

if TYPE_CHECKING:
    from tasks.translation import Translation


def no_attention_reference(task: Translation) -> dict[str, Any]:
    """{"name": "no-attention", "valid": metrics, "test": metrics} of the attention-free twin."""
    return twin_reference(task, {"attention": "none", "heatmaps": 0}, task.cfg.options.reference_units,
                          task.checksum)


def save_hypotheses(task: Translation, out_dir: Path) -> dict[str, Path]:
    """The detokenized hypotheses of the last evaluation of each split, one per line in corpus order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, hyps in sorted(task.hypotheses.items()):
        files[f"{split}_hypotheses"] = out_dir / f"{split}.hyp.{task.cfg.options.tgt_lang}"
        atomic_write_text(files[f"{split}_hypotheses"], "".join(line + "\n" for line in hyps))
    return files


def save_heatmaps(task: Translation, model: nn.Module, out_dir: Path) -> dict[str, Path]:
    """Attention weights of the greedy translation of the first `options.heatmaps` validation sentences."""
    count = min(task.cfg.options.heatmaps, len(task.splits["valid"].src))
    if model.attention is None or count == 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        src = torch.from_numpy(task.splits["valid"].src[i])[None].to(task.device)  # (1, S)
        lengths = torch.tensor([src.size(1)])
        limit = int(src.size(1) * task.cfg.options.max_len_a) + task.cfg.options.max_len_b
        found = greedy_search(model.step, model.init_state(src, lengths), BOS, EOS, limit)
        tokens, end = found.tokens[0], ["</s>"] if found.finished[0] else []
        tgt_in = torch.tensor([[BOS, *tokens]], device=task.device)
        _, weights = model.teacher_forced(src, lengths, tgt_in)  # (1, T, S)
        files[f"attention_valid_{i}"] = plot_attention(
            weights[0].float().cpu().numpy(), [task.src_tok.id_to_token(int(t)) for t in src[0]],
            [*(task.tgt_tok.id_to_token(t) for t in tokens), *end], out_dir / f"attention-valid-{i}.png")
    return files


def plot_attention(weights: Any, src: list[str], out: list[str], path: Path) -> Path:
    """One heatmap: output tokens down, source tokens across, weight as grey level."""
    fig = Figure(figsize=(1 + 0.35 * len(src), 1 + 0.3 * len(out)), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(weights[:len(out), :len(src)], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src)), src, rotation=90, fontsize=8)
    ax.set_yticks(range(len(out)), out, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.tight_layout()
    fig.savefig(path)
    return path
