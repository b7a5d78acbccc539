"""``method=star``: phase 1 of Star Attention, every piece after the first encoded after the first one (SPEC §4, §5).

Acharya, Jia, Ginsburg, "Star Attention: Efficient LLM Inference over Long Sequences", arXiv 2411.17116 (github
NVIDIA/Star-Attention). Phase 1 encodes block 1 alone and every later block i as (block 1, block i), at the
positions the blocks have in the whole context, and keeps only block i's keys. The prepended copy of block 1 (the
anchor) sees the shared prefix and itself only, wherever it is prepended, so its keys are those of block 1's own
row: the engine encodes

    shared prefix + piece 1       once, as the shared prefix of every other row (positions 0 .. s + L_1 - 1)
    piece i, i >= 2               as a row after it, at its serial positions; its own keys go to the store

which is phase 1's store, without any anchor copy. Phase 2 (the query over every key, one exact softmax) is the
engine's query stage as it is. The store holds each context token once, so the prefill stays one square causal
call per batch of rows (anchor + piece), never one over the whole context.
"""

from __future__ import annotations

from .engine import EncodedContext, ParallelEngine
from .layout import Layout


def anchored(layout: Layout) -> Layout:
    """The layout star encodes: the first piece (the anchor) joins the shared prefix, the others stay pieces.
    Cache order, and so every position under ``pos=serial``, is that of ``layout``."""
    if not layout.pieces:
        return layout
    return Layout(layout.prefix + layout.pieces[0], layout.pieces[1:])


class StarEngine(ParallelEngine):
    """The parallel engine on :func:`anchored` layouts, at serial positions."""

    KEEPS_PREFIXES = False  # the anchor is the request's own: it would only push shared prefixes out of the cache

    def __init__(self, model, device, **kwargs):
        pos = kwargs.pop("pos", "serial")
        if pos != "serial":
            raise ValueError(f"pos={pos} with method=star: its pieces keep their positions in the context (serial)")
        super().__init__(model, device, pos="serial", **kwargs)

    def encode_many(
        self, layouts: list[Layout], reserves: list[int], oracle_keys: bool = False
    ) -> list[EncodedContext]:
        """Prefill each layout as star does (or take it from the context cache, keyed by the anchored layout)."""
        return super().encode_many([anchored(layout) for layout in layouts], reserves, oracle_keys)
