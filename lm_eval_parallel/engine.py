"""Parallel context encoding engine: prefill, flat KV store, scoring and greedy generation.

    pieces --(batched forwards, each row: prefix + piece, causal)--> KVStore --> query forward(s)

No forward ever sees an L x L mask: pieces are rows of a batch (square causal SDPA, the shared
prefix at the head of every row, or its cached keys prepended when it is long), and query rows
attend over the flat store. Numbers are per SPEC §5-§9.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .attention import EncodePlan, QueryOutputs, QueryPlan, StoreWrite, encoding, querying
from .decode import DECODE_MODES, GRAPH_MIN_STEPS, StaticDecoder, single_cuda_device, static_decode_applies
from .kvstore import KVStore, RowRun, RowScatter, StoreSlab, scatter_indices
from .layout import Layout, piece_position_arrays
from .query_rules import QueryRule
from .selection import Selection, piece_weights, select_pieces, topn_sum_layers

INLINE_PREFIX_RATIO = 16  # recompute the prefix in every piece row while it is <= 1/16 of the longest piece
SCATTER_MIN_RUNS = 3  # store writes of a prefill forward with this many runs go as one scatter per layer


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, device) -> tuple[torch.Tensor, np.ndarray]:
    """A zeroed host tensor (pinned when bound for a GPU) and a numpy view of it to fill."""
    t = torch.empty(shape, dtype=dtype, pin_memory=torch.device(device).type == "cuda")
    view = t.numpy()
    view.fill(0)
    return t, view


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> device without a stream sync (a pinned source is copied asynchronously)."""
    return t.to(device, non_blocking=t.is_pinned())


def bucketed(width: int) -> int:
    """``width`` rounded up to a multiple of 1/16 of its power of two: at most 6.25 % more columns, and 16 widths
    per doubling (8200 -> 8704, 130 -> 136, 15 -> 15)."""
    step = 1 << max(0, width.bit_length() - 5)
    return -(-width // step) * step


def take_tokens(tokens, active, next_tok, eos_ids, is_done, max_new_tokens: int) -> bool:
    """Append every decoding row's next token and retire the rows that are done; whether any row still decodes."""
    for b, token in enumerate(next_tok):
        if active[b]:
            tokens[b].append(token)
            if token in eos_ids or is_done(b, tokens[b]) or len(tokens[b]) >= max_new_tokens:
                active[b] = False
    return any(active)


def _row_runs(lengths: list[int], offsets: list[int], src_start: int, rows: list[int] | None = None) -> list[RowRun]:
    """Store writes of piece rows of one forward (row ``rows[j]``, default j: ``lengths[j]`` tokens from column
    ``src_start``, to store position ``offsets[j]``): consecutive rows of equal length that sit back to back in
    the store become one run."""
    runs: list[RowRun] = []
    for r, n, dest in zip(range(len(lengths)) if rows is None else rows, lengths, offsets):
        last = runs[-1] if runs else None
        if last and last.length == n and last.first_row + last.n_rows == r and last.dest + last.n_rows * n == dest:
            runs[-1] = RowRun(last.first_row, last.n_rows + 1, src_start, n, last.dest)
        else:
            runs.append(RowRun(r, 1, src_start, n, dest))
    return runs


@dataclass
class _Pending:
    """A context being prefilled: its layout, its store, where each piece goes and at which positions."""

    layout: Layout
    store: KVStore
    offsets: list[int]  # store position of each piece's first token
    positions: list[np.ndarray]  # per piece, float64 positions
    query_start: float
    nonempty: list[int]  # the pieces with tokens
    longest: int
    prefix_written: bool = False

    @property
    def inline(self) -> bool:
        """The shared prefix is short enough to be recomputed at the head of every piece row."""
        return len(self.layout.prefix) * INLINE_PREFIX_RATIO <= self.longest


@dataclass
class EncodedContext:
    """A context after prefill: its store (one row) and where query positions start."""

    store: KVStore
    length: int  # number of context keys (prefix + pieces)
    query_start: float  # position of the first query token


@dataclass
class RequestStats:
    """Attention statistics of one request, per layer (SPEC §8), plus optional per-head analysis."""

    entropy_sum: list[float]
    rows: list[float]
    head_entropy_sum: list[list[float]] | None = None
    head_abs_logit_sum: list[list[float]] | None = None
    head_logit_count: list[list[float]] | None = None
    key_norm: list[list[float]] | None = None

    @property
    def attn_entropy(self) -> float:
        per_layer = [s / n for s, n in zip(self.entropy_sum, self.rows) if n > 0]
        return sum(per_layer) / len(per_layer) if per_layer else math.nan

    def analysis_record(self) -> dict:
        n_heads = len(self.head_entropy_sum[0]) if self.head_entropy_sum else 0
        return {
            "attn_entropy": self.attn_entropy,
            "layer_entropy": [s / n if n else math.nan for s, n in zip(self.entropy_sum, self.rows)],
            "head_entropy": [
                [e / max(r / n_heads, 1.0) for e in layer] for layer, r in zip(self.head_entropy_sum, self.rows)
            ]
            if self.head_entropy_sum
            else None,
            "key_norm": self.key_norm,
            "abs_logit": [
                [s / c if c else math.nan for s, c in zip(ls, lc)]
                for ls, lc in zip(self.head_abs_logit_sum, self.head_logit_count)
            ]
            if self.head_abs_logit_sum
            else None,
        }


_SUMMED = ("entropy_sum", "rows", "head_entropy_sum", "head_abs_logit_sum", "head_logit_count")


def _forward_stats(outputs: QueryOutputs, n_layers: int, analysis: bool) -> dict[str, torch.Tensor]:
    """One forward's per-layer sums, stacked on one device in float64 without leaving it:
    entropy_sum / rows [L, B]; with analysis also head sums [L, B, H] and key_norm [L, B, Hkv]."""
    layers = [outputs.stats[layer] for layer in range(n_layers)]
    device = layers[0].entropy_sum.device
    names = _SUMMED + ("key_norm",) if analysis else _SUMMED[:2]
    return {name: torch.stack([getattr(st, name).to(device) for st in layers]).double() for name in names}


def _per_call(step: dict) -> dict:
    """``entropy_pool=calls`` (SPEC §8): one forward's sums rescaled so that the call counts as one row (per head,
    with analysis), its rows' mean; summed over calls they give the mean over calls of each call's mean."""
    n_heads = step["head_entropy_sum"].shape[-1] if "head_entropy_sum" in step else 1
    weight = torch.where(step["rows"] > 0, n_heads / step["rows"].clamp_min(1), 0.0)  # [L, B]
    out = dict(step, entropy_sum=step["entropy_sum"] * weight, rows=(step["rows"] > 0).double() * n_heads)
    if "head_entropy_sum" in step:
        out["head_entropy_sum"] = step["head_entropy_sum"] * weight[..., None]  # [L, B, H]
    return out


def _add_stats(total: dict | None, step: dict) -> dict:
    """Running sums over the forwards of a request batch; key norms are those of the context (first forward)."""
    if total is None:
        return dict(step)
    return {name: value if name == "key_norm" else value + step[name] for name, value in total.items()}


def _request_stats(total: dict) -> list[RequestStats]:
    """Per batch row, from the running sums: one device -> host transfer for the whole batch."""
    host = {name: value.cpu() for name, value in total.items()}
    out = []
    for row in range(host["rows"].shape[1]):
        stats = RequestStats(host["entropy_sum"][:, row].tolist(), host["rows"][:, row].tolist())
        if "key_norm" in host:
            stats.head_entropy_sum = host["head_entropy_sum"][:, row].tolist()
            stats.head_abs_logit_sum = host["head_abs_logit_sum"][:, row].tolist()
            stats.head_logit_count = host["head_logit_count"][:, row].tolist()
            stats.key_norm = host["key_norm"][:, row].tolist()
        out.append(stats)
    return out


class ContextCache:
    """Encoded contexts kept for reuse within a byte budget, keyed by everything that shapes them.

    A sweep shares it across configurations: ``naive``/``sel`` encode identical contexts, and so do
    ``sink``/``sink+sel``, so the second of each pair skips the prefill. The second method asks for the
    contexts in the order the first one stored them, so when the budget is full new contexts are turned
    away instead of evicting old ones (evicting the oldest would throw away exactly what comes next);
    the sweep calls :meth:`clear` when it moves to contexts that no later configuration shares.
    """

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.hits = 0
        self.entries: dict = {}

    @staticmethod
    def _size(ctx: EncodedContext) -> int:
        return sum(t.numel() * t.element_size() for t in ctx.store.k + ctx.store.v if t is not None)

    def get(self, key):
        ctx = self.entries.get(key)
        if ctx is not None:
            self.hits += 1
        return ctx

    def put(self, key, ctx: EncodedContext) -> None:
        size = self._size(ctx)
        if key in self.entries or self.used + size > self.budget:
            return
        ctx.store.own_buffers()  # a kept context must not keep its batch's StoreSlab alive
        self.entries[key] = ctx
        self.used += size

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0


class ParallelEngine:
    """Runs the three stages for a causal LM whose attention implementation is ``pce``."""

    # Tokens per prefill forward (piece rows, with their padding). 32K rows keep the GEMMs as efficient
    # as full attention's and the launches few; activations stay ~0.4x of a 128K full prefill's.
    PREFILL_BATCH_TOKENS = 32768
    KEEPS_PREFIXES = True  # encoded shared prefixes go to the prefix cache (star's are a request's own)

    def __init__(
        self,
        model,
        device,
        *,
        pos: str = "even",
        pos_round: str = "none",
        want_stats: bool = True,
        analysis: bool = False,
        max_batch_tokens: int = PREFILL_BATCH_TOKENS,
        prefix_cache_size: int = 8,
        query_round: str = "none",
        harmonic_prefix: str = "tokens",
        entropy_pool: str = "rows",
        rule: QueryRule | None = None,
        cuda_graphs: bool = True,
        decode: str = "auto",
    ):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={decode!r} is not allowed; choose one of {', '.join(DECODE_MODES)}")
        self.model = model
        self.cuda_graphs = cuda_graphs
        self.decode = decode  # decode.py; "auto" unless a test pins a mode
        self.device = device
        self.pos = pos
        self.pos_round = pos_round
        self.position_rules = (query_round, harmonic_prefix)  # SPEC §6, after pos_round
        self.entropy_pool = entropy_pool
        self.rule = rule  # a peer method's rule on the query rows' logits (SPEC §7a)
        self.want_stats = want_stats or analysis
        self.analysis = analysis
        self.max_batch_tokens = max_batch_tokens
        # On CUDA, SDPA's cuDNN kernel plans an execution graph for every new shape (~1.3 ms of host time a layer,
        # measured on an H200), and every context of a board has its own length: piece rows are right-padded to a
        # few widths so that plans are reused. Padding is never seen by real tokens (causal rows).
        self.bucket_prefill = torch.device(device).type == "cuda"
        # On CUDA the piece rows of several contexts share prefill forwards (fewer launches and host work per
        # context); on a CPU the work is the same either way and larger forwards measured a little slower.
        self.pack_prefill = torch.device(device).type == "cuda"
        # Packed contexts' stores share one allocation per layer: a forward's writes are one scatter (StoreSlab).
        self.slab_prefill = True
        self.n_layers = model.config.get_text_config().num_hidden_layers
        self._prefix_cache: OrderedDict = OrderedDict()
        self._prefix_cache_size = prefix_cache_size
        self.context_cache: ContextCache | None = None

    # ------------------------------------------------------------------ prefill
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, keep_logits: int = 1):
        return self.model(
            input_ids=ids.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            logits_to_keep=keep_logits,
        )

    def _encode_prefix(self, prefix: tuple[int, ...]):
        """Per layer (k, v) [1, Hkv, s, D] of the shared prefix, computed once per distinct prefix."""
        if not prefix:
            return None
        if prefix in self._prefix_cache:
            self._prefix_cache.move_to_end(prefix)
            return self._prefix_cache[prefix]
        with encoding(EncodePlan()) as captured:
            self._forward(torch.tensor([prefix]), torch.arange(len(prefix), dtype=torch.float32)[None])
        kv = [captured[layer] for layer in range(self.n_layers)]
        if not self.KEEPS_PREFIXES:
            return kv
        self._prefix_cache[prefix] = kv
        if len(self._prefix_cache) > self._prefix_cache_size:
            self._prefix_cache.popitem(last=False)
        return kv

    def _store_prefix(self, prefix: tuple[int, ...], targets: list):
        """Encode the prefix (or take it from the prefix cache), write it at the head of every store of ``targets``
        (stores, or one StoreSlab for all of its stores); its per-layer kv."""
        prefix_kv = self._encode_prefix(prefix)
        for layer, (k, v) in enumerate(prefix_kv):  # [1, Hkv, s, D]
            for target in targets:
                target.put_prefix(layer, k[0], v[0])
        return prefix_kv

    def _encode_pieces(self, items: list[_Pending]):
        """Encode the pieces of one or more contexts as right-padded batch rows (<= max_batch_tokens a forward).

        Every context of ``items`` has the same shared prefix, and the same :attr:`_Pending.inline`. A short
        prefix (BOS + sink, the usual case) is recomputed at the head of every row: each forward is then one plain
        square causal call and a context's prefix keys come from its first row. A long prefix (or one beside short
        pieces, e.g. a sink before P=64 pieces of 128 tokens) is encoded once (cached), written at the head of
        every store, and its keys are prepended to every row's keys instead. Rows go longest first, so that a
        forward's rows have similar widths; each forward writes into the stores of the contexts whose rows it holds.
        """
        prefix = items[0].layout.prefix
        s = len(prefix)
        rows = [(len(it.layout.pieces[i]), c, i) for c, it in enumerate(items) for i in it.nonempty]
        rows.sort(key=lambda row: -row[0])  # stable: a context's pieces stay in order among equal lengths
        inline = items[0].inline
        if any(it.inline != inline for it in items):
            raise ValueError("_encode_pieces: the contexts of one call must all have an inline prefix or none")
        head = s if inline else 0
        slab = StoreSlab([it.store for it in items]) if self.slab_prefill and len(items) > 1 else None
        prefix_kv = None
        if not inline:
            prefix_kv = self._store_prefix(prefix, [slab] if slab is not None else [it.store for it in items])
        start = 0
        while start < len(rows):
            width = head + rows[start][0]
            width = bucketed(width) if self.bucket_prefill else width
            keys = width + (s - head)  # a row's keys: the prepended prefix's too
            n = min(len(rows) - start, max(1, self.max_batch_tokens // keys))
            batch = rows[start : start + n]
            self._forward_rows(items, batch, width, head, prefix_kv, slab)
            start += n

    def _forward_rows(
        self,
        items: list[_Pending],
        batch: list[tuple[int, int, int]],
        width: int,
        head: int,
        prefix_kv,
        slab: StoreSlab | None = None,
    ):
        """One prefill forward of ``batch`` rows (length, context, piece), each ``head`` prefix tokens + a piece;
        with ``slab`` (the stores of ``items``), every store's writes go as one scatter into it."""
        prefix = items[0].layout.prefix
        ids, ids_host = _host_buffer((len(batch), width), torch.long, self.device)  # [R, width]
        pos, pos_host = _host_buffer((len(batch), width), torch.float32, self.device)  # [R, width]
        if head:
            ids_host[:, :head] = prefix
            pos_host[:, :head] = np.arange(head)
        by_context: dict[int, list[int]] = {}
        for r, (n, c, i) in enumerate(batch):
            ids_host[r, head : head + n] = np.fromiter(items[c].layout.pieces[i], dtype=np.int64, count=n)
            # float64 -> float32 rounds to nearest, as torch.tensor(list_of_floats, dtype=float32) does
            pos_host[r, head : head + n] = items[c].positions[i]
            pos_host[r, head + n :] = pos_host[r, head + n - 1]  # right padding: never seen by real tokens
            by_context.setdefault(c, []).append(r)
        writes, scattered = [], []  # scattered: (context, [2, M] host indices)
        for c, members in by_context.items():
            item = items[c]
            lengths = [batch[r][0] for r in members]
            runs = _row_runs(lengths, [item.offsets[batch[r][2]] for r in members], head, rows=members)
            if head and not item.prefix_written:
                runs.append(RowRun(first_row=members[0], n_rows=1, src_start=0, length=head, dest=0))  # the prefix
                item.prefix_written = True
            if slab is not None:  # store positions -> slab slots
                scattered.append((c, scatter_indices(runs, width) + np.array([[0], [slab.offsets[c]]])))
            elif len(runs) >= SCATTER_MIN_RUNS:  # pieces of many lengths: 4 ops per layer instead of 2 per run
                scattered.append((c, scatter_indices(runs, width)))
            else:
                writes.append(StoreWrite(item.store, runs=tuple(runs)))
        if scattered:  # every store's scatter indices in one pinned buffer: one transfer, no stream sync
            sizes = [index.shape[1] for _, index in scattered]
            both, both_host = _host_buffer((2, sum(sizes)), torch.long, self.device)
            both_host[:] = np.concatenate([index for _, index in scattered], axis=1)
            both = _to_device(both, self.device)
            if slab is not None:  # every store's tokens in one scatter
                writes.append(StoreWrite(slab, scatter=RowScatter(both[0], both[1])))
            else:
                for (c, _), start, n in zip(scattered, np.cumsum([0, *sizes[:-1]]).tolist(), sizes):
                    scatter = RowScatter(both[0, start : start + n], both[1, start : start + n])
                    writes.append(StoreWrite(items[c].store, scatter=scatter))
        ids, pos = _to_device(ids, self.device), _to_device(pos, self.device)  # one transfer each, no stream sync
        with encoding(EncodePlan(prefix_kv=prefix_kv, writes=tuple(writes))):
            self._forward(ids, pos)

    @torch.no_grad()
    def encode(self, layout: Layout, reserve: int = 0, oracle_keys: bool = False) -> EncodedContext:
        """Prefill one context (or take it from the context cache); room for ``reserve`` query tokens."""
        return self.encode_many([layout], [reserve], oracle_keys)[0]

    def _cache_key(self, layout: Layout, oracle_keys: bool):
        return (layout, self.pos, self.pos_round, *self.position_rules, oracle_keys)

    @torch.no_grad()
    def encode_many(
        self, layouts: list[Layout], reserves: list[int], oracle_keys: bool = False
    ) -> list[EncodedContext]:
        """Prefill several contexts (each from the context cache when it is there), their piece rows packed into
        shared forwards when their shared prefixes are equal (``pack_prefill``); room for ``reserves[i]``
        query tokens each. Each context gets what it gets alone (rows never see each other)."""
        out: list[EncodedContext | None] = [None] * len(layouts)
        packs: dict[tuple[tuple[int, ...], bool], list[_Pending]] = {}  # (prefix, inline) -> its contexts
        fresh: list[tuple[int, _Pending]] = []
        for j, (layout, reserve) in enumerate(zip(layouts, reserves)):
            cached = (
                None if self.context_cache is None else self.context_cache.get(self._cache_key(layout, oracle_keys))
            )
            if cached is not None:
                cached.store.ensure_capacity(cached.length + max(reserve, 1))
                out[j] = cached
                continue
            item = self._new_context(layout, reserve)
            fresh.append((j, item))
            if not item.nonempty:  # no piece: the prefix alone is the context
                if layout.prefix:
                    self._store_prefix(layout.prefix, [item.store])
            elif not self.pack_prefill or oracle_keys:
                self._encode_pieces([item])  # one at a time: no packing (CPU), or oracle keys (a second pass follows)
            else:
                packs.setdefault((layout.prefix, item.inline), []).append(item)
        for items in packs.values():
            self._encode_pieces(items)
        for j, item in fresh:
            if oracle_keys and item.nonempty:
                self._oracle_keys(item)
            context = EncodedContext(item.store, item.layout.n_context, item.query_start)
            if self.context_cache is not None:
                self.context_cache.put(self._cache_key(item.layout, oracle_keys), context)
            out[j] = context
        return out

    def _new_context(self, layout: Layout, reserve: int) -> _Pending:
        """The store of one context (no keys yet) and where its pieces go: host work only."""
        s = len(layout.prefix)
        lengths = [len(p) for p in layout.pieces]
        n_ctx = layout.n_context
        cap = n_ctx + max(reserve, 1)
        # Host-side layout in numpy: torch's CPU ops would wake its thread pool for every 65K-long
        # tensor, and that wake-up sometimes stalls for tens of ms while the GPU waits.
        offsets = (s + np.cumsum([0, *lengths[:-1]])).tolist()
        key_valid = np.zeros((1, cap), dtype=bool)
        key_valid[0, :n_ctx] = True
        key_group = np.full((1, cap), -1, dtype=np.int64)
        key_group[0, s:n_ctx] = np.repeat(np.arange(len(lengths)), lengths)
        nonempty = [i for i, n in enumerate(lengths) if n > 0]
        piece_index = np.full((1, max(1, len(lengths)), max([1, *lengths])), -1, dtype=np.int64)
        for i, (o, n) in enumerate(zip(offsets, lengths)):
            piece_index[0, i, :n] = np.arange(o, o + n)
        store = KVStore(
            self.n_layers,
            torch.from_numpy(key_valid),
            torch.from_numpy(key_group),
            torch.tensor([len(nonempty)]),
            torch.from_numpy(piece_index),
            n_ctx,
        )
        per_piece, query_start = piece_position_arrays(s, lengths, self.pos, self.pos_round, *self.position_rules)
        return _Pending(layout, store, offsets, per_piece, query_start, nonempty, max([0, *lengths]))

    def _oracle_keys(self, item: _Pending) -> None:
        """SPEC / paper §4.3.2: keys from full-attention encoding, values stay parallel."""
        layout, store = item.layout, item.store
        s = len(layout.prefix)
        full = Layout(layout.prefix, (tuple(layout.flat_ids()[s:]),))
        full_pos, item.query_start = piece_position_arrays(s, [layout.n_context - s], "serial", "none")
        values = [store.v[layer].clone() for layer in range(self.n_layers)]
        self._encode_pieces([_Pending(full, store, [s], full_pos, item.query_start, [0], layout.n_context - s)])
        for layer in range(self.n_layers):
            store.v[layer] = values[layer]

    # ------------------------------------------------------------------ query stage
    def _query_forward(
        self,
        store: KVStore,
        ids: torch.Tensor,
        positions: torch.Tensor,
        q_valid: torch.Tensor,
        selection: Selection | None,
    ) -> tuple[torch.Tensor, QueryOutputs]:
        """One query forward over ``store`` (LHT runs it twice); returns (logits [B, Q, V], outputs)."""
        store.mark(store.length, q_valid)
        q_valid = q_valid.to(self.device)  # before the forward: no host -> device copy inside a layer
        if selection is not None and selection.aggr == "LHT":
            # pass 1 reports every layer's piece scores; pass 2 keeps, in every layer, the pieces chosen from all
            with querying(QueryPlan(store, q_valid, selection=selection, scores_only=True, rule=self.rule)) as first:
                self._forward(ids, positions, keep_logits=1)
            layers = [first.piece_scores[layer] for layer in range(self.n_layers)]
            aggregated = topn_sum_layers(layers, selection.aggr_topn)
            n_pieces = store.n_pieces.to(layers[0].device)
            if selection.tau is not None:
                keep = piece_weights(aggregated, n_pieces, selection.tau)
            else:
                keep = select_pieces(aggregated, n_pieces, selection.top_k)
            plan = QueryPlan(
                store, q_valid, forced_keep=keep, want_stats=self.want_stats, analysis=self.analysis, rule=self.rule
            )
        else:
            plan = QueryPlan(
                store, q_valid, selection=selection, want_stats=self.want_stats, analysis=self.analysis, rule=self.rule
            )
        with querying(plan) as outputs:
            out = self._forward(ids, positions, keep_logits=0)
        return out.logits, outputs

    def _stats(self, outputs: QueryOutputs) -> dict[str, torch.Tensor]:
        stats = _forward_stats(outputs, self.n_layers, self.analysis)
        if self.entropy_pool == "calls":
            return _per_call(stats)
        return stats

    @staticmethod
    def _pad_rows(rows: list[list[int]], starts: list[float]):
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        pos = torch.zeros(len(rows), width, dtype=torch.float32)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, (row, q0) in enumerate(zip(rows, starts)):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            pos[b] = q0 + torch.arange(width, dtype=torch.float32)
            valid[b, : len(row)] = True
        return ids, pos, valid

    def _selection_that_drops(self, selection: Selection | None, store: KVStore) -> Selection | None:
        """``selection``, or None when it keeps every piece of every row of ``store`` (at most top_k pieces each,
        SPEC §7.2): the query stage then scores no pieces it could not drop. sel_soft re-weights its pieces and
        analysis records their scores, so both keep theirs."""
        if selection is None or selection.tau is not None or self.analysis:
            return selection
        return None if int(store.n_pieces.max()) <= selection.top_k else selection

    @torch.no_grad()
    def score(
        self,
        contexts: list[EncodedContext],
        queries: list[list[int]],
        continuations: list[list[int]],
        selection: Selection | None,
    ):
        """Loglikelihood of each continuation (query + continuation are one forward call, SPEC §7)."""
        rows = [q + c for q, c in zip(queries, continuations)]
        width = max(len(r) for r in rows)
        saved = [c.store.length for c in contexts]
        store = KVStore.stack([c.store for c in contexts], width)
        selection = self._selection_that_drops(selection, store)
        ids, pos, valid = self._pad_rows(rows, [c.query_start for c in contexts])
        logits, outputs = self._query_forward(store, ids, pos, valid, selection)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        stats = _request_stats(self._stats(outputs)) if self.want_stats else [None] * len(rows)
        results = []
        for b, (q, c) in enumerate(zip(queries, continuations)):
            span = slice(len(q) - 1, len(q) + len(c) - 1)
            target = torch.tensor(c, device=logprobs.device)
            picked = logprobs[b, span].gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((logprobs[b, span].argmax(-1) == target).all())
            results.append((float(picked.sum()), greedy, stats[b]))
        for c, length in zip(contexts, saved):
            c.store.length = length
        return results

    def _dynamic_step(self, store: KVStore, selection: Selection | None):
        """A decode step as an ordinary query forward over keys [0, length + 1) (``decode=dynamic``)."""

        def step(next_tok: list[int], next_pos: list[float], active: list[bool]):
            ids = torch.tensor(next_tok, dtype=torch.long)[:, None]
            pos = torch.tensor(next_pos, dtype=torch.float32)[:, None]
            valid = torch.tensor(active, dtype=torch.bool)[:, None]
            logits, outputs = self._query_forward(store, ids, pos, valid, selection)
            store.length += 1
            return logits[:, -1].argmax(-1).tolist(), self._stats(outputs) if self.want_stats else None

        return step

    def _decoder(self, store: KVStore, batch: int, selection: Selection | None, max_new_tokens: int):
        """The decode step of one batch (``decode.py``): ``auto`` replays CUDA graphs on one CUDA device where a
        static step applies and the batch decodes enough tokens, and runs dynamic steps everywhere else."""
        mode = self.decode if static_decode_applies(self, selection, batch, store.capacity) else "dynamic"
        if mode == "auto":
            graphs = self.cuda_graphs and max_new_tokens > GRAPH_MIN_STEPS and single_cuda_device(self.model)
            mode = "graph" if graphs else "dynamic"
        if mode == "dynamic":
            return self._dynamic_step(store, selection)
        return StaticDecoder(self, store, batch, selection, graph=mode == "graph")

    @torch.no_grad()
    def generate(
        self,
        contexts: list[EncodedContext],
        queries: list[list[int]],
        max_new_tokens: int,
        selection: Selection | None,
        is_done,
        eos_ids: set[int],
    ):
        """Greedy decoding; ``is_done(b, tokens)`` says when row b may stop. Returns (tokens, stats) per row."""
        b_size = len(contexts)
        saved = [c.store.length for c in contexts]
        width = max(len(q) for q in queries)
        store = KVStore.stack([c.store for c in contexts], width + max_new_tokens + 1)
        store.ensure_capacity(store.length + width + max_new_tokens + 1)
        selection = self._selection_that_drops(selection, store)
        ids, pos, valid = self._pad_rows(queries, [c.query_start for c in contexts])
        logits, outputs = self._query_forward(store, ids, pos, valid, selection)
        # stats stay on the device until the end: rows that have finished add zeros (their keys are invalid)
        total = self._stats(outputs) if self.want_stats else None
        store.length += width
        last = torch.tensor([len(q) - 1 for q in queries], device=logits.device)
        next_tok = logits[torch.arange(b_size, device=logits.device), last].argmax(-1).tolist()
        next_pos = [c.query_start + len(q) for c, q in zip(contexts, queries)]
        tokens: list[list[int]] = [[] for _ in range(b_size)]
        active = [True] * b_size
        step = self._decoder(store, b_size, selection, max_new_tokens)
        for _ in range(max_new_tokens):
            if not take_tokens(tokens, active, next_tok, eos_ids, is_done, max_new_tokens):
                break
            next_tok, step_stats = step(next_tok, next_pos, active)
            if self.want_stats:
                total = _add_stats(total, step_stats)
            next_pos = [p + 1 for p in next_pos]
        for c, length in zip(contexts, saved):
            c.store.length = length
        stats = _request_stats(total) if self.want_stats else [None] * b_size
        return list(zip(tokens, stats))
