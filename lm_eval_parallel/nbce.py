"""``method=nbce``: Naive Bayes-based Context Extension, every piece a query row of its own (SPEC §4, §9a).

Su et al., "Naive Bayes-based Context Extension for Large Language Models", NAACL 2024, arXiv 2403.17552 (github bojone/NBCE; the paper's experiments: amurtadha/NBCE-master). The query is read once after each
piece, so that it sees the shared prefix and that one piece, and once after the shared prefix alone (no context).
At every predicted token each row gives log-probabilities log p_i (log_softmax of its logits); the piece row of the
lowest entropy -sum p_i log p_i is the one read, k, and the prediction is

    log_softmax((1 + beta) log p_k - beta log p_0)            p_0: the no-context row, beta = nbce_beta

The context is encoded as for every parallel method (pieces as rows of a batch, one store). For the query stage,
request b becomes [no-context row] (when beta != 0) + one row per non-empty piece: each a store of its own
holding the shared prefix and that piece's keys, copied from b's store, and all of them the query rows of one
forward (one query forward per decoding step, as for the other methods). Each row's keys are the prefix and one
piece, so the query stage reads P_eff x prefix + the context's keys, never more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import QueryOutputs, QueryPlan, querying
from .engine import EncodedContext, ParallelEngine, _add_stats, _forward_stats, _per_call, _request_stats, take_tokens
from .kvstore import KVStore
from .selection import Selection

COMBINE_ELEMENTS = 2**26  # fp32 elements of one chunk of [rows, positions, vocabulary] log-probabilities


def prefix_length(store: KVStore) -> int:
    """Keys of the shared prefix at the head of a context's (single-row) store: the keys in no piece."""
    return int((store.key_group[0, : store.length] < 0).sum())


def row_context(context: EncodedContext, n_layers: int, piece_keys: torch.Tensor | None) -> EncodedContext:
    """A single-row store of the shared prefix of ``context`` and, when given, the piece whose cache indices are
    ``piece_keys`` [n] (long); the query starts where it starts in ``context``."""
    store = context.store
    s = prefix_length(store)
    index = torch.arange(s)
    if piece_keys is not None:
        index = torch.cat([index, piece_keys])
    n = len(index)
    key_group = torch.full((1, n), -1, dtype=torch.long)
    key_group[0, s:] = 0
    piece_index = torch.full((1, 1, max(1, n - s)), -1, dtype=torch.long)
    piece_index[0, 0, : n - s] = torch.arange(s, n)
    row = KVStore(n_layers, torch.ones(1, n, dtype=torch.bool), key_group, torch.tensor([int(n > s)]), piece_index, n)
    for layer in range(n_layers):
        if store.k[layer] is not None and n:
            on_device = index.to(store.k[layer].device)
            row.k[layer] = store.k[layer].index_select(2, on_device)  # [1, Hkv, n, D]
            row.v[layer] = store.v[layer].index_select(2, on_device)
    return EncodedContext(row, n, context.query_start)


@dataclass(frozen=True)
class RequestRows:
    """The query rows of a batch of requests: row r reads ``contexts[r]``, for request ``owner[r]``. A request's
    rows are consecutive, its no-context row first when there is one."""

    contexts: list[EncodedContext]
    owner: list[int]
    start: list[int]  # first row of each request
    count: list[int]  # rows of each request
    piece: torch.Tensor  # [R] bool: a piece row (False: the no-context row)

    def of(self, b: int) -> slice:
        return slice(self.start[b], self.start[b] + self.count[b])


def request_rows(contexts: list[EncodedContext], n_layers: int, no_context_row: bool) -> RequestRows:
    """Every request's rows: the no-context row (``no_context_row``), then one row per non-empty piece; a context
    without pieces (the shared prefix alone) gives one piece row over its prefix."""
    rows, owner, start, count, piece = [], [], [], [], []
    for b, context in enumerate(contexts):
        slots = context.store.piece_index[0]  # [P, Lmax] cache indices, -1 = none
        pieces = [keys[keys >= 0] for keys in slots if bool((keys >= 0).any())]
        own = [row_context(context, n_layers, keys) for keys in pieces or [torch.zeros(0, dtype=torch.long)]]
        if no_context_row:
            own.insert(0, row_context(context, n_layers, None))
        start.append(len(rows))
        count.append(len(own))
        rows.extend(own)
        owner.extend([b] * len(own))
        piece.extend([not no_context_row or i > 0 for i in range(len(own))])
    return RequestRows(rows, owner, start, count, torch.tensor(piece))


def combine(logprobs: torch.Tensor, no_context_row: bool, beta: float) -> torch.Tensor:
    """NBCE's prediction from one request's rows: log-probs [n, T, V] (its no-context row first when
    ``no_context_row``) -> [T, V] = (1 + beta) log p_k - beta log p_0, k the lowest-entropy piece row at each of the
    T positions (the first of equal ones); without the no-context row, log p_k."""
    pieces = logprobs[1:] if no_context_row else logprobs  # [n_p, T, V]
    entropy = torch.stack([-torch.where(lp > -torch.inf, lp.exp() * lp, 0.0).sum(-1) for lp in pieces])  # [n_p, T]
    chosen = entropy.argmin(0)  # [T]
    best = pieces[chosen, torch.arange(pieces.shape[1], device=pieces.device)]  # [T, V]
    if not no_context_row:
        return best
    return (1 + beta) * best - beta * logprobs[0]


class NBCEEngine(ParallelEngine):
    """The parallel engine's prefill; query rows per piece and their prediction combined (SPEC §9a)."""

    def __init__(self, model, device, *, beta: float = 0.25, **kwargs):
        super().__init__(model, device, **kwargs)
        self.beta = beta
        self.no_context_row = beta != 0  # beta = 0 reads no no-context row: log p_k alone

    def _rows(self, contexts: list[EncodedContext], selection: Selection | None) -> RequestRows:
        if selection is not None:
            raise ValueError("method=nbce reads every piece on its own; it takes no selection")
        return request_rows(contexts, self.n_layers, self.no_context_row)

    def _rows_forward(self, store: KVStore, ids, positions, q_valid, keep: int) -> tuple[torch.Tensor, QueryOutputs]:
        """One query forward of every row over ``store``; the logits [R, keep, V] of the last ``keep`` columns."""
        store.mark(store.length, q_valid)
        plan = QueryPlan(
            store, q_valid.to(self.device), want_stats=self.want_stats, analysis=self.analysis, rule=self.rule
        )
        with querying(plan) as outputs:
            out = self._forward(ids, positions, keep_logits=keep)
        return out.logits, outputs

    def _row_stats(self, outputs: QueryOutputs, rows: RequestRows) -> dict[str, torch.Tensor]:
        """One forward's per-layer sums per request (SPEC §8): its piece rows pooled, the no-context row left out;
        key norms: the mean over the piece rows' context keys."""
        step = _forward_stats(outputs, self.n_layers, self.analysis)  # [L, R], [L, R, H], [L, R, Hkv]
        device = step["rows"].device
        owner = torch.tensor(rows.owner, device=device)
        weight = rows.piece.to(device).double()  # [R]
        n_layers, n_requests = step["rows"].shape[0], len(rows.count)
        out = {}
        for name, value in step.items():
            shape = (n_layers, n_requests, *value.shape[2:])
            w = weight.view(1, -1, *[1] * (value.dim() - 2))
            if name == "key_norm":
                w = w * torch.tensor([c.length for c in rows.contexts], device=device).double().view_as(w)
                total = value.new_zeros(shape).index_add_(1, owner, value * w)
                norm = value.new_zeros(n_layers, n_requests, 1).index_add_(1, owner, w.expand(n_layers, -1, 1))
                out[name] = total / norm.clamp_min(1)
            else:
                out[name] = value.new_zeros(shape).index_add_(1, owner, value * w)
        return _per_call(out) if self.entropy_pool == "calls" else out

    def _combined_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """One request's rows' logits [n, T, V] -> the log-probabilities [T, V] NBCE predicts, in chunks of
        positions."""
        n, n_pos, vocab = logits.shape
        step = max(1, COMBINE_ELEMENTS // (n * vocab))
        chunks = []
        for t0 in range(0, n_pos, step):
            logprobs = torch.log_softmax(logits[:, t0 : t0 + step].float(), dim=-1)  # [n, t, V]
            chunks.append(torch.log_softmax(combine(logprobs, self.no_context_row, self.beta), dim=-1))
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    @torch.no_grad()
    def score(
        self,
        contexts: list[EncodedContext],
        queries: list[list[int]],
        continuations: list[list[int]],
        selection: Selection | None,
    ):
        """Loglikelihood of each continuation under NBCE's per-token prediction (query + continuation: one call)."""
        rows = self._rows(contexts, selection)
        sequences = [queries[b] + continuations[b] for b in rows.owner]
        width = max(len(x) for x in sequences)
        store = KVStore.stack([c.store for c in rows.contexts], width)
        ids, pos, valid = self._pad_rows(sequences, [c.query_start for c in rows.contexts])
        first = min(len(q) for q in queries) - 1  # the first column whose prediction is read
        logits, outputs = self._rows_forward(store, ids, pos, valid, keep=width - first)  # [R, width - first, V]
        stats = _request_stats(self._row_stats(outputs, rows)) if self.want_stats else [None] * len(contexts)
        results = []
        for b, (q, c) in enumerate(zip(queries, continuations)):
            span = slice(len(q) - 1 - first, len(q) + len(c) - 1 - first)
            logprobs = self._combined_logprobs(logits[rows.of(b), span])  # [len(c), V]
            target = torch.tensor(c, device=logprobs.device)
            picked = logprobs.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((logprobs.argmax(-1) == target).all())
            results.append((float(picked.sum()), greedy, stats[b]))
        return results

    def _next_tokens(self, logits: torch.Tensor, rows: RequestRows) -> list[int]:
        """Greedy choice of every request from its rows' logits [R, V] at its last position."""
        out = []
        for b in range(len(rows.count)):
            logprobs = torch.log_softmax(logits[rows.of(b), None].float(), dim=-1)  # [n, 1, V]
            out.append(int(combine(logprobs, self.no_context_row, self.beta)[0].argmax()))
        return out

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
        """Greedy decoding on NBCE's prediction; every row of a request is fed the request's token."""
        rows = self._rows(contexts, selection)
        b_size = len(contexts)
        width = max(len(q) for q in queries)
        store = KVStore.stack([c.store for c in rows.contexts], width + max_new_tokens + 1)
        store.ensure_capacity(store.length + width + max_new_tokens + 1)
        ids, pos, valid = self._pad_rows([queries[b] for b in rows.owner], [c.query_start for c in rows.contexts])
        first = min(len(q) for q in queries) - 1
        logits, outputs = self._rows_forward(store, ids, pos, valid, keep=width - first)  # [R, width - first, V]
        total = self._row_stats(outputs, rows) if self.want_stats else None
        store.length += width
        last = torch.tensor([len(queries[b]) - 1 - first for b in rows.owner], device=logits.device)
        next_tok = self._next_tokens(logits[torch.arange(len(rows.owner), device=logits.device), last], rows)
        next_pos = [c.query_start + len(q) for c, q in zip(contexts, queries)]
        tokens: list[list[int]] = [[] for _ in range(b_size)]
        active = [True] * b_size
        for _ in range(max_new_tokens):
            if not take_tokens(tokens, active, next_tok, eos_ids, is_done, max_new_tokens):
                break
            ids = torch.tensor([next_tok[b] for b in rows.owner], dtype=torch.long)[:, None]
            pos = torch.tensor([next_pos[b] for b in rows.owner], dtype=torch.float32)[:, None]
            valid = torch.tensor([active[b] for b in rows.owner], dtype=torch.bool)[:, None]
            logits, outputs = self._rows_forward(store, ids, pos, valid, keep=1)
            store.length += 1
            if self.want_stats:
                total = _add_stats(total, self._row_stats(outputs, rows))
            next_tok = self._next_tokens(logits[:, -1], rows)
            next_pos = [p + 1 for p in next_pos]
        stats = _request_stats(total) if self.want_stats else [None] * b_size
        return list(zip(tokens, stats))
