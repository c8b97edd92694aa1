"""A synthetic language with real sequential structure and a known entropy rate.

Words fall into disjoint classes; the class sequence is a second-order Markov chain with a few
likely successors per context, and each class emits its own words with Zipf-like frequencies.
Because a word names its class, the entropy rate has a closed form:
    H = sum_ab pi(a, b) H(T[a, b, :]) + sum_c mu(c) H(E_c)
so a record can carry the optimal perplexity exp(H) beside the achieved one.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassMarkovSource:
    vocab_size: int = 10_000
    n_classes: int = 16
    branching: int = 3
    """Likely successor classes per (previous, current) class pair."""
    smoothing: float = 0.02
    """Probability mass spread uniformly over all classes (keeps the chain irreducible)."""
    zipf: float = 1.5
    seed: int = 0

    def tables(self) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(transitions [K, K, K], members per class, emission probabilities per class)."""
        rng = np.random.default_rng(self.seed)
        k = self.n_classes
        trans = np.full((k, k, k), self.smoothing / k)
        for a in range(k):
            for b in range(k):
                succ = rng.choice(k, size=self.branching, replace=False)
                trans[a, b, succ] += (1 - self.smoothing) * rng.dirichlet(np.ones(self.branching))
        members = np.array_split(rng.permutation(self.vocab_size), k)
        emissions = []
        for words in members:
            p = np.arange(1, len(words) + 1, dtype=np.float64) ** -self.zipf
            emissions.append(p / p.sum())
        return trans, members, emissions

    def entropy_rate(self) -> float:
        """Exact entropy rate in nats per token."""
        trans, _, emissions = self.tables()
        k = self.n_classes
        pair = np.full((k, k), 1.0 / k**2)  # stationary distribution of (previous, current) class
        for _ in range(10_000):
            nxt = np.einsum("ab,abc->bc", pair, trans)
            done = np.abs(nxt - pair).max() < 1e-15
            pair = nxt
            if done:
                break
        marginal = pair.sum(axis=0)
        h_trans = -(trans * np.log(trans)).sum(axis=2)
        h_emit = np.array([-(p * np.log(p)).sum() for p in emissions])
        return float((pair * h_trans).sum() + marginal @ h_emit)

    def sample(self, n_tokens: int, burn_in: int = 1000) -> np.ndarray:
        """`n_tokens` word ids from the stationary chain (deterministic in `seed`)."""
        trans, members, emissions = self.tables()
        k = self.n_classes
        rng = np.random.default_rng(self.seed + 1)
        cum = [list(row) for row in np.cumsum(trans.reshape(k * k, k), axis=1)]
        u = rng.random(n_tokens + burn_in).tolist()
        classes = np.empty(n_tokens + burn_in, dtype=np.int64)
        a, b = 0, 0
        for t, r in enumerate(u):  # sequential by nature; bisect on lists keeps it ~0.5 us a step
            c = min(bisect.bisect_right(cum[a * k + b], r), k - 1)
            classes[t] = c
            a, b = b, c
        classes = classes[burn_in:]
        words = np.empty(n_tokens, dtype=np.int64)
        for c in range(k):
            at = np.flatnonzero(classes == c)
            words[at] = rng.choice(members[c], size=len(at), p=emissions[c])
        return words
