"""What the captioning task writes beside its record: the generated captions the metrics were computed on,
and a few test images with their caption and the attention map of each word."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from suite.decoding import decode
from suite.durable import atomic_write_text
from tasks.subwords import BOS, EOS

if TYPE_CHECKING:
    from tasks.captioning import Captioning


def save_captions(task: Captioning, out_dir: Path) -> dict[str, Path]:
    """The captions of the last evaluation of each split, one per image in split order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, captions in sorted(task.captions.items()):
        files[f"{split}_captions"] = out_dir / f"{split}.captions.txt"
        atomic_write_text(files[f"{split}_captions"], "".join(line + "\n" for line in captions))
    return files


def save_examples(task: Captioning, model: nn.Module, out_dir: Path) -> dict[str, Path]:
    """PNGs of the first `options.examples` test images: the image, its caption, and per word the
    attention over the feature grid (when the model attends; a Transformer decoder's is its last layer's
    cross-attention averaged over heads)."""
    count = min(task.cfg.options.examples, len(task.splits["test"].images))
    if count == 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        images = task.inputs["test"][i:i + 1].float().to(task.device)
        opts = task.cfg.options  # the search that made the scored captions
        tokens = decode(model.step, model.init_state(images), BOS, EOS, opts.max_caption_len + 1, opts.beam,
                        opts.length_penalty).tokens[0]
        _, weights = model.teacher_forced(images, torch.tensor([[BOS, *tokens]], device=task.device))
        words = [task.words[t] for t in tokens]
        picture = _picture(task, i)
        maps = None if weights is None else weights[0, :len(words)].float().cpu().numpy()  # (T, N)
        files[f"example_test_{i}"] = plot_example(picture, words, maps, out_dir / f"example-test-{i}.png")
    return files


def _picture(task: Captioning, i: int) -> np.ndarray | None:
    """The test image as (H, W, 3) in [0, 1]: pixels for the synthetic scenes, else read from its file."""
    if task.cfg.source == "synthetic":
        return task.inputs["test"][i].permute(1, 2, 0).numpy()
    from tasks.caption_data import load_image

    return load_image(task.splits["test"].images[i], task.cfg.options.image_size).permute(1, 2, 0).numpy()


def plot_example(picture: np.ndarray, words: list[str], maps: np.ndarray | None, path: Path) -> Path:
    """The image titled with its caption, then one panel per word with its attention map over the image."""
    panels = 1 + (len(words) if maps is not None else 0)
    fig = Figure(figsize=(2 * min(panels, 6), 2.2 * ((panels + 5) // 6)), dpi=80)
    side = int(round(np.sqrt(maps.shape[1]))) if maps is not None else 0
    for k in range(panels):
        ax = fig.add_subplot((panels + 5) // 6, min(panels, 6), k + 1)
        ax.imshow(picture)
        ax.axis("off")
        if k == 0:
            ax.set_title(" ".join(words) or "(empty)", fontsize=7, wrap=True)
        else:
            grid = maps[k - 1].reshape(side, side)
            ax.imshow(grid, cmap="gray", alpha=0.6, extent=(0, picture.shape[1], picture.shape[0], 0),
                      interpolation="bilinear")
            ax.set_title(words[k - 1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
