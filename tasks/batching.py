"""Length-bucketed batch order, shared by the variable-length tasks: little padding, still shuffled."""
from __future__ import annotations

import numpy as np


def bucket_order(lengths: np.ndarray, batch_size: int, chunk_batches: int, rng: np.random.Generator) -> list:
    """Index batches: shuffle, sort by length inside chunks of `chunk_batches` batches, shuffle the batches."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
