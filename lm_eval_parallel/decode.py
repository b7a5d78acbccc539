"""Decode steps of greedy generation: one new token per row over the KV store (SPEC §9).

* ``dynamic``: every step is an ordinary query forward over keys [0, length + 1); shapes grow by one key a step.
* ``static``: every step attends over the store's whole capacity; the new key goes to a store slot held in a
  device tensor and the slots not written yet are invalid keys (probability exactly 0). The shapes are the same
  at every step, so on CUDA the step is captured once as a CUDA graph and replayed (``graph``): no per-layer host
  work, which is what a decode step of a small model spends its time on. Equal to ``dynamic`` up to floating-
  point rounding (the masked columns add exact zeros, but longer reductions may sum in another order).
"""

from __future__ import annotations

import torch

from .attention import QueryPlan, querying
from .kvstore import KVStore
from .log import warn_once
from .selection import Selection

DECODE_MODES = ("auto", "dynamic", "static", "graph")
GRAPH_MIN_STEPS = 4  # a capture costs about one eager step; fewer steps than this are not worth it


def static_decode_applies(engine, selection: Selection | None, batch: int = 1, keys: int = 0) -> bool:
    """Whether a static step of ``batch`` rows over ``keys`` store slots computes what a dynamic one does: not for
    LHT (its two passes pick pieces on the host side of the forward), analysis (per-head key norms read the
    context length from the key count) or the grouped fast path (it splits keys on the host; a step small enough
    for ``query_fast.small_query_attention`` has no host work and keeps its static shapes)."""
    from . import attention
    from .query_fast import small_shape

    lht = selection is not None and selection.aggr == "LHT"
    heads = engine.model.config.get_text_config().num_attention_heads
    grouped = attention.fast_query_on(engine.device) and not small_shape(batch, heads, 1, keys)
    return not (lht or engine.analysis or grouped)


def single_cuda_device(model) -> bool:
    devices = {p.device for p in model.parameters()}
    return len(devices) == 1 and next(iter(devices)).type == "cuda"


class StaticDecoder:
    """The decode steps of one generation batch over ``store`` (capacity fixed for the batch), eager or replayed."""

    def __init__(self, engine, store: KVStore, batch: int, selection: Selection | None, graph: bool):
        device = torch.device(engine.device)
        self.engine = engine
        self.store = store
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, 1] last token of every row
        self.pos = torch.zeros(batch, 1, dtype=torch.float32, device=device)  # [B, 1] its position
        self.q_valid = torch.zeros(batch, 1, dtype=torch.bool, device=device)  # [B, 1] rows still decoding
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)  # [1] store slot of this step's key
        self.plan = QueryPlan(
            store,
            self.q_valid,
            selection=selection,
            want_stats=engine.want_stats,
            rule=engine.rule,
            write_at=self.write_at,
        )
        # every slot after the keys so far is invalid until its step writes it (a reused store may hold older rows)
        store.mark(store.length, torch.zeros(batch, store.capacity - store.length, dtype=torch.bool))
        self.use_graph = graph
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured: tuple | None = None  # (next token [B], stats) written by every replay

    def _step(self) -> tuple[torch.Tensor, dict | None]:
        with querying(self.plan) as outputs:
            out = self.engine._forward(self.ids, self.pos, keep_logits=0)
        stats = self.engine._stats(outputs) if self.engine.want_stats else None
        return out.logits[:, -1].argmax(-1), stats  # [B]

    def _capture(self) -> bool:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.captured = self._step()
        except RuntimeError as err:  # an op of this model family that a graph cannot hold: decode eagerly
            torch.cuda.synchronize()
            warn_once(
                "cuda_graph", f"decode steps run without CUDA graphs: capture failed ({str(err).splitlines()[0]})"
            )
            self.use_graph, self.captured = False, None
            return False
        self.graph = graph
        return True

    def __call__(self, tokens: list[int], positions: list[float], active: list[bool]):
        """One step: every row's last token, its position and whether the row still decodes -> (next tokens, stats).

        Rows that have finished are invalid query rows: their key is invalid and their statistics are zeros."""
        store = self.store
        valid = torch.tensor(active, dtype=torch.bool)[:, None]  # [B, 1]
        store.mark(store.length, valid)
        self.ids.copy_(torch.tensor(tokens, dtype=torch.long)[:, None])
        self.pos.copy_(torch.tensor(positions, dtype=torch.float32)[:, None])
        self.q_valid.copy_(valid)
        self.write_at.fill_(store.length)
        self.steps += 1
        if self.use_graph and self.graph is None and self.steps > 1:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            next_tok, stats = self.captured
        elif self.use_graph:  # the first step runs eagerly on a side stream: the warm-up before a capture
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                next_tok, stats = self._step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            next_tok, stats = self._step()
        store.length += 1
        return next_tok.tolist(), stats
