"""Responses that carry the request's attention entropy to the task's metrics (SPEC §8).

``parallel_hf`` returns these instead of plain ``str`` / ``(float, bool)``; they behave exactly like
them for lm-eval (filters, caching, logging), and ``attn_entropy_of`` reads the value back in a
task's ``process_results``. Under any other model the value is NaN.
"""

from __future__ import annotations

import math


class GenerationResult(str):
    """A generated string with ``.attn_entropy`` (nats, mean over layers, heads and query rows)."""

    def __new__(cls, text: str, attn_entropy: float = math.nan):
        self = super().__new__(cls, text)
        self.attn_entropy = float(attn_entropy)
        return self

    def __reduce__(self):
        return (GenerationResult, (str(self), self.attn_entropy))


class LoglikelihoodResult(tuple):
    """``(logprob, is_greedy)`` with ``.attn_entropy``."""

    def __new__(cls, logprob: float, is_greedy: bool, attn_entropy: float = math.nan):
        self = super().__new__(cls, (float(logprob), bool(is_greedy)))
        self.attn_entropy = float(attn_entropy)
        return self

    def __reduce__(self):
        return (LoglikelihoodResult, (self[0], self[1], self.attn_entropy))


class RollingResult(float):
    """A rolling loglikelihood (float) with ``.attn_entropy`` (mean over its windows)."""

    def __new__(cls, logprob: float, attn_entropy: float = math.nan):
        self = super().__new__(cls, logprob)
        self.attn_entropy = float(attn_entropy)
        return self

    def __reduce__(self):
        return (RollingResult, (float(self), self.attn_entropy))


def attn_entropy_of(response) -> float:
    """Entropy carried by one response (or the mean over a list of responses); NaN if none."""
    carried = (GenerationResult, LoglikelihoodResult)
    is_tuple_of_results = (
        isinstance(response, tuple)
        and not isinstance(response, LoglikelihoodResult)
        and response
        and isinstance(response[0], carried)
    )
    if isinstance(response, list) or is_tuple_of_results:
        values = [attn_entropy_of(r) for r in response]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    return float(getattr(response, "attn_entropy", math.nan))
