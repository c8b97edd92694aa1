"""Greedy and beam search over a small step interface, shared by every task that generates sequences.

The search knows nothing about any model. The caller brings:

- `state`: a pytree (a tensor, or nested tuple/list/dict of tensors) whose leaves ALL have the batch
  as dim 0, e.g. `dict(h=(B, H), memory=(B, S, D))`, usually from the model's own `init_state`.
  Beam search repeats every leaf `beam` times on dim 0 (`repeat_interleave`) and reorders leaves with
  `index_select` on dim 0; both searches also drop the rows of sentences that are done, so a done
  sentence stops costing compute. Tokens and scores live on the device of the state's first leaf.
- `step(tokens, state) -> (log_probs, state)`: `tokens` (N,) long, the previous token of each row
  (`bos` at first); `log_probs` (N, V), log-softmaxed scores of the next token, in any float dtype:
  the search accumulates them in float32.

`max_len` (an int, or a (B,) tensor per sentence) bounds the steps: a hypothesis of sentence i holds at
most max_len[i] generated tokens counting its EOS, and one that fills them without EOS stops
unfinished, with no EOS appended and its score without EOS. So the returned tokens (without EOS) never
number more than max_len[i], and every hypothesis is a leaf of the max_len-deep tree cut at EOS.

A returned score is raw: the sum of the model's log-probabilities of the returned tokens, plus that of
the EOS when the hypothesis finished. `length_penalty` only ranks hypotheses inside beam search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map_only

State: TypeAlias = Any
"""A pytree of tensors, each with the batch (or batch x beam) as dim 0."""


class Step(Protocol):
    """One decoding step of a model: next-token log-probabilities given the previous token."""

    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]: ...


@dataclass(frozen=True)
class Hypotheses:
    """The best hypothesis of each sentence, in batch order."""

    tokens: list[list[int]]
    """Generated tokens, without BOS and without EOS."""
    scores: list[float]
    """Sum of the log-probabilities of `tokens`, plus the EOS's when finished; never length-normalised."""
    finished: list[bool]
    """True when the hypothesis ended with EOS, False when it stopped at max_len."""


def decode(step: Step, state: State, bos: int, eos: int, max_len: Tensor | int, beam: int = 1,
           length_penalty: float = 0.0) -> Hypotheses:
    """Greedy search for `beam == 1` (beam search of width 1 gives the same result), else beam search."""
    if beam == 1:
        return greedy_search(step, state, bos, eos, max_len)
    return beam_search(step, state, bos, eos, max_len, beam, length_penalty)


def greedy_search(step: Step, state: State, bos: int, eos: int, max_len: Tensor | int) -> Hypotheses:
    """Take the most likely next token of every sentence until EOS or max_len."""
    batch, device = _batch(state)
    limit = _limits(max_len, batch, device)                    # (B,)
    out = torch.full((batch, _longest(limit)), eos, device=device)  # (B, T) EOS-padded
    score = torch.zeros(batch, device=device)                  # (B,)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.nonzero(limit > 0).squeeze(1)                 # (N,) sentences still decoding
    state = _select(state, rows)
    tokens = torch.full_like(rows, bos)                        # (N,)
    for t in range(out.size(1)):
        if rows.numel() == 0:
            break
        log_probs, state = step(tokens, state)                 # (N, V)
        best, tokens = log_probs.float().topk(1, dim=-1)       # (N, 1)
        best, tokens = best.squeeze(1), tokens.squeeze(1)      # (N,)
        score[rows] += best
        out[rows, t] = tokens
        ended = tokens == eos
        finished[rows] = ended
        keep = torch.nonzero(~ended & (limit[rows] > t + 1)).squeeze(1)
        rows, tokens, state = rows[keep], tokens[keep], _select(state, keep)
    return _hypotheses(out, score, finished, eos)


def beam_search(step: Step, state: State, bos: int, eos: int, max_len: Tensor | int, beam: int,
                length_penalty: float = 0.0) -> Hypotheses:
    """Fairseq-style beam search: `beam` live hypotheses per sentence; a sentence is done once it has
    `beam` finalized ones or reaches max_len; the best finalized one by score / lp(len) wins, with GNMT's
    lp(len) = ((5 + len) / 6) ** length_penalty and len counting the EOS."""
    if beam < 1:
        raise ValueError(f"beam must be at least 1, got {beam}")
    batch, device = _batch(state)
    limit = _limits(max_len, batch, device)                    # (B,)
    best = _Best(batch, _longest(limit), eos, device)
    rows = torch.nonzero(limit > 0).squeeze(1)                 # (N,) sentences still decoding
    state = tree_map_only(Tensor, lambda x: x.repeat_interleave(beam, dim=0), _select(state, rows))
    scores = torch.full((rows.numel(), beam), float("-inf"), device=device)  # (N, K)
    scores[:, 0] = 0.0                                         # one live hypothesis per sentence at first
    seqs = torch.empty((rows.numel(), beam, 0), dtype=torch.long, device=device)  # (N, K, t)
    tokens = torch.full((rows.numel() * beam,), bos, device=device)  # (N*K,)
    for t in range(best.seq.size(1)):
        if rows.numel() == 0:
            break
        log_probs, state = step(tokens, state)                 # (N*K, V)
        penalty = ((5 + t + 1) / 6) ** length_penalty
        scores, seqs, origin = _advance(log_probs, scores, seqs, eos, rows, best, penalty)
        at_limit = limit[rows] <= t + 1                        # (N,)
        best.offer(rows, seqs, scores, at_limit[:, None] & scores.isfinite(), False, penalty)
        done = at_limit | (best.count[rows] >= beam) | ~scores.isfinite().any(dim=-1)
        keep = torch.nonzero(~done).squeeze(1)                 # (N',)
        rows, scores, seqs = rows[keep], scores[keep], seqs[keep]
        state = _select(state, (keep[:, None] * beam + origin[keep]).view(-1))  # (N'*K,) source rows
        tokens = seqs[:, :, -1].reshape(-1)                    # (N'*K,)
    return _hypotheses(best.seq, best.score, best.finished, eos)


def _advance(log_probs: Tensor, scores: Tensor, seqs: Tensor, eos: int, rows: Tensor, best: _Best,
             penalty: float) -> tuple[Tensor, Tensor, Tensor]:
    """Extend every live hypothesis by one token: rank the top 2K candidates, finalize those ending in
    EOS within the top K, continue with the first K others. Returns their scores (N, K), sequences
    (N, K, t+1) and the beam (N, K) each extends."""
    n, k = scores.shape
    vocab = log_probs.size(-1)
    cand = (scores[:, :, None] + log_probs.float().view(n, k, vocab)).view(n, k * vocab)  # (N, K*V)
    top, index = cand.topk(min(2 * k, k * vocab), dim=-1)      # (N, C) best first
    origin, token = index // vocab, index % vocab              # (N, C) beam extended, token added
    is_eos = token == eos
    history = seqs.gather(1, origin[:, :, None].expand(-1, -1, seqs.size(2)))  # (N, C, t)
    ended = torch.cat([history[:, :k], token[:, :k, None]], dim=2)  # (N, K, t+1)
    best.offer(rows, ended, top[:, :k], is_eos[:, :k] & top[:, :k].isfinite(), True, penalty)
    # The first K non-EOS candidates go on: rank by position, with EOS ones pushed behind all others.
    position = torch.arange(top.size(1), device=top.device) + is_eos * top.size(1)  # (N, C)
    go_on = position.topk(k, dim=-1, largest=False).indices    # (N, K)
    scores = top.gather(1, go_on).masked_fill(is_eos.gather(1, go_on), float("-inf"))  # (N, K)
    history = history.gather(1, go_on[:, :, None].expand(-1, -1, seqs.size(2)))  # (N, K, t)
    seqs = torch.cat([history, token.gather(1, go_on)[:, :, None]], dim=2)  # (N, K, t+1)
    return scores, seqs, origin.gather(1, go_on)


class _Best:
    """Each sentence's best finalized hypothesis so far by normalised score, and how many were finalized."""

    def __init__(self, batch: int, longest: int, eos: int, device: torch.device):
        self.eos = eos
        self.norm = torch.full((batch,), float("-inf"), device=device)  # (B,) score / lp(len)
        self.score = torch.zeros(batch, device=device)         # (B,) raw; 0 for the empty max_len 0 case
        self.seq = torch.full((batch, longest), eos, device=device)  # (B, T) EOS-padded
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)

    def offer(self, rows: Tensor, seqs: Tensor, scores: Tensor, mask: Tensor, finished: bool,
              penalty: float) -> None:
        """Finalize the hypotheses `mask` (N, M) picks from seqs (N, M, L) with raw scores (N, M)
        for sentences `rows` (N,), all of length L; keep a sentence's first best on a tie."""
        norm = (scores / penalty).masked_fill(~mask, float("-inf"))  # (N, M)
        top, pick = norm.max(dim=-1)                           # (N,) first maximum on a tie
        win = torch.nonzero(top > self.norm[rows]).squeeze(1)  # (W,) sentences with a new best
        target, pick = rows[win], pick[win]
        self.norm[target] = top[win]
        self.score[target] = scores[win, pick]
        self.seq[target] = self.eos
        self.seq[target, : seqs.size(2)] = seqs[win, pick]
        self.finished[target] = finished
        self.count[rows] += mask.sum(dim=-1)


def _batch(state: State) -> tuple[int, torch.device]:
    """Batch size and device, read from the state's first tensor leaf."""
    leaves = [leaf for leaf in tree_leaves(state) if isinstance(leaf, Tensor)]
    if not leaves:
        raise ValueError("state must hold at least one tensor with the batch as dim 0")
    return leaves[0].size(0), leaves[0].device


def _limits(max_len: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """`max_len` as a (B,) long tensor on `device`."""
    limit = torch.as_tensor(max_len, dtype=torch.long, device=device)
    if limit.dim() > 1 or (limit.dim() == 1 and limit.numel() != batch):
        raise ValueError(f"max_len must be an int or a ({batch},) tensor, got shape {tuple(limit.shape)}")
    if (limit < 0).any():
        raise ValueError("max_len must not be negative")
    return limit.expand(batch)


def _longest(limit: Tensor) -> int:
    return int(limit.max()) if limit.numel() else 0


def _select(state: State, index: Tensor) -> State:
    """Rows `index` of every tensor leaf (dim 0)."""
    return tree_map_only(Tensor, lambda x: x.index_select(0, index), state)


def _hypotheses(seq: Tensor, score: Tensor, finished: Tensor, eos: int) -> Hypotheses:
    """Cut each EOS-padded row (B, T) at its first EOS."""
    rows = seq.tolist()
    tokens = [row[: row.index(eos)] if eos in row else row for row in rows]
    return Hypotheses(tokens, score.tolist(), finished.tolist())
