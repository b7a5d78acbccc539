"""Request builder: lm-eval's request strings -> token ids laid out for parallel encoding (SPEC §1-§3).

A marked prompt (``parallel_prompt``) gives its items, query and sink; any other context is cut by the
unmarked-context rule. The result, a :class:`Prepared`, holds only token ids: the model turns it into
scores. No lm-eval import here.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import PCEConfig
from .layout import Layout, chunk_ceil, group_items
from .log import warn_once
from .split import parse_split, split_ids
from .structure import PromptParts, split_prompt


@dataclass
class Prepared:
    """One request after tokenization: its context layout and the query-side token ids."""

    layout: Layout
    query: list[int]
    continuation: list[int]  # scored tokens (loglikelihood); empty for generation


def token_ids(tokenizer, text: str, memo: TokenMemo | None = None) -> list[int]:
    """``text`` without special tokens (SPEC §2), through ``memo`` when given; no tokenizer call for ""."""
    if memo is not None:
        return memo.ids(tokenizer, text)
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def move_trailing_spaces(context: str, continuation: str) -> tuple[str, str]:
    """As HFLM's ``_encode_pair``: trailing spaces of the context belong to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(
    tokenizer, context: str, continuation: str, memo: TokenMemo | None = None
) -> tuple[list[int], list[int]]:
    """HFLM's ``_encode_pair`` without special tokens: (context ids, continuation ids), the continuation
    cut from the encoding of both together, after the context's own ids (through ``memo`` when given)."""
    context, continuation = move_trailing_spaces(context, continuation)
    ctx_ids = token_ids(tokenizer, context, memo)
    return ctx_ids, token_ids(tokenizer, context + continuation, memo)[len(ctx_ids) :]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_pair` of every (context, continuation), in two batched tokenizer calls."""
    if not pairs:
        return []
    moved = [move_trailing_spaces(context, continuation) for context, continuation in pairs]
    ctx_ids = tokenizer([c for c, _ in moved], add_special_tokens=False)["input_ids"]
    whole = tokenizer([c + t for c, t in moved], add_special_tokens=False)["input_ids"]
    return [(list(c), list(w[len(c) :])) for c, w in zip(ctx_ids, whole)]


class TokenMemo:
    """Token ids of the texts one tokenizer has encoded (items, queries, sinks), so that a sweep tokenizes each
    document once and not once per configuration. Ids are kept as int32 arrays (80 MB for the default bound) and
    the memo is cleared when it would hold more than ``max_tokens`` of them."""

    def __init__(self, max_tokens: int = 20_000_000):
        self.max_tokens = max_tokens
        self.n_tokens = 0
        self.entries: dict[str, np.ndarray] = {}
        self.warmed: set[str] = set()  # contexts whose items warm() has been given (skipped the next time)

    WARM_BATCH = 256  # texts per batched tokenizer call of warm()

    def warm(self, tokenizer, texts) -> None:
        """Tokenize the ``texts`` not held yet in batched calls (the tokenizer's own threads), as :meth:`ids`
        would one at a time; stops where the memo would be full (the rest is tokenized when it is asked for)."""
        todo = list(dict.fromkeys(t for t in texts if t and t not in self.entries))
        for start in range(0, len(todo), self.WARM_BATCH):
            chunk = todo[start : start + self.WARM_BATCH]
            for text, ids in zip(chunk, tokenizer(chunk, add_special_tokens=False)["input_ids"]):
                if self.n_tokens + len(ids) > self.max_tokens:
                    return
                self._put(text, ids)

    def _put(self, text: str, ids: list[int]) -> None:
        self.entries[text] = np.asarray(ids, dtype=np.int32)
        self.n_tokens += len(ids)

    def ids(self, tokenizer, text: str) -> list[int]:
        cached = self.entries.get(text)
        if cached is not None:
            return cached.tolist()
        ids = token_ids(tokenizer, text)
        if len(ids) <= self.max_tokens:
            if self.n_tokens + len(ids) > self.max_tokens:
                self.entries.clear()
                self.warmed.clear()
                self.n_tokens = 0
            self._put(text, ids)
        return ids


class RequestBuilder:
    """Turns request strings into :class:`Prepared` requests under one :class:`PCEConfig`."""

    def __init__(
        self, tokenizer, pce: PCEConfig, bos_token_id: int | None, prefix_token_id: int, memo: TokenMemo | None = None
    ):
        self.tokenizer = tokenizer
        self.memo = memo  # token ids of texts already seen, shared by the builders of one tokenizer
        self.pce = pce
        self.bos = [] if bos_token_id is None else [bos_token_id]  # SPEC §2: one BOS starts the prefix
        self.prefix_token_id = prefix_token_id  # the query of an empty context (lm-eval's convention)
        self.split_rule = parse_split(pce.split)  # unmarked contexts (docs/split.md)
        if self.split_rule.pattern is not None and not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"split={pce.split} needs a fast tokenizer (character offsets); this one is "
                f"{type(tokenizer).__name__}: use split=tokens"
            )

    def ids(self, text: str) -> list[int]:
        return token_ids(self.tokenizer, text, self.memo)

    def warm(self, contexts) -> None:
        """Fill the memo with the items of every marked context in ``contexts`` (the bulk of a request's tokens)
        in batched tokenizer calls, before the requests are prepared one by one; no memo: nothing to do."""
        if self.memo is None or self.pce.tokenize != "items":
            return
        new = [c for c in dict.fromkeys(contexts) if c not in self.memo.warmed]
        parts = (split_prompt(c) for c in new)
        self.memo.warm(self.tokenizer, (item for p in parts if p is not None for item in p.items))
        self.memo.warmed.update(new)

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, context: str, continuation: str) -> Prepared:
        parts = split_prompt(context)
        if parts is not None:
            return self._marked(parts, "loglikelihood", continuation)
        if context == "":
            c_ids = self.ids(continuation)
            if c_ids and c_ids[0] == self.prefix_token_id:
                q_ids, c_ids = c_ids[:1], c_ids[1:]
            else:
                q_ids = [self.prefix_token_id]
            return Prepared(Layout(self._prefix("loglikelihood", None), ()), q_ids, c_ids)
        if self.split_rule.pattern is None:
            return self.loglikelihood_tokens(*encode_pair(self.tokenizer, context, continuation, self.memo))
        context, continuation = move_trailing_spaces(context, continuation)  # encode_pair, with offsets
        enc = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        c_ids = self.ids(context + continuation)[len(ids) :]
        pieces = self._split(ids[:-1], enc["offset_mapping"], context)
        return Prepared(Layout(self._prefix("loglikelihood", None), pieces), ids[-1:], c_ids)

    def loglikelihood_tokens(self, context_ids: list[int], continuation_ids: list[int]) -> Prepared:
        """Unmarked context (SPEC §1): its last token is the query, the tokens before it are the pieces.
        Token ids without their text (``loglikelihood_rolling`` windows) are cut by ``split=tokens``."""
        if self.split_rule.pattern is not None:
            warn_once(
                "split-rolling",
                f"split={self.pce.split} does not apply to loglikelihood_rolling windows "
                "(token ids without text): they are cut by tokens; logged once",
            )
        rest, q_ids = context_ids[:-1], context_ids[-1:]
        return Prepared(Layout(self._prefix("loglikelihood", None), self._chunks(rest)), q_ids, continuation_ids)

    def generation(self, context: str) -> Prepared:
        """Unmarked context (SPEC §1): the query is the text after the last blank line when that is at most a
        quarter of the context's tokens, else the last token."""
        parts = split_prompt(context)
        if parts is not None:
            return self._marked(parts, "generate_until", None)
        enc = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if not ids:
            return Prepared(Layout(self._prefix("generate_until", None), ()), [self.prefix_token_id], [])
        n_query = 1
        blank = context.rfind("\n\n")
        if blank >= 0 and "offset_mapping" in enc:
            boundary = blank + 2
            after = sum(1 for start, _ in enc["offset_mapping"] if start >= boundary)
            if 0 < after <= len(ids) // 4:
                n_query = after
        rest, q_ids = ids[:-n_query], ids[-n_query:]
        if self.split_rule.pattern is None:
            return Prepared(Layout(self._prefix("generate_until", None), self._chunks(rest)), q_ids, [])
        pieces = self._split(rest, enc["offset_mapping"], context)
        return Prepared(Layout(self._prefix("generate_until", None), pieces), q_ids, [])

    def check_fits(self, prepared: Prepared, extra: int, sliding_window: int | None, max_length: int) -> None:
        """Sliding windows must cover the whole request (``extra``: tokens to generate); positions beyond
        the model's window are logged, never truncated."""
        n_tokens = prepared.layout.n_context + len(prepared.query) + len(prepared.continuation) + extra
        if sliding_window is not None and n_tokens > sliding_window:
            raise ValueError(
                f"request of {n_tokens} tokens is longer than the model's sliding window ({sliding_window}); "
                "parallel encoding needs every layer to see the whole request (use a shorter task length)"
            )
        lengths = [len(p) for p in prepared.layout.pieces]
        longest = sum(lengths) if self.pce.pos == "serial" else max(lengths, default=0)
        span = len(prepared.layout.prefix) + longest + len(prepared.query) + len(prepared.continuation) + extra
        if span > max_length:
            warn_once(
                "window",
                f"a request spans {span} positions (prefix + longest piece + query), more than the "
                f"model's window max_length={max_length}; nothing is truncated (logged once)",
            )

    # ------------------------------------------------------------------ marked prompts
    def _marked(self, parts: PromptParts, request_type: str, continuation: str | None) -> Prepared:
        """Both request types: the same checks, the same tokenization, the same layout."""
        if not parts.query.strip():
            raise ValueError(
                f"empty query after the items ({parts.query!r}): the query marker must be followed "
                "by text, not only whitespace"
            )
        preamble, units, q_ids, c_ids = self._segments(parts, continuation)
        if not q_ids:
            raise ValueError(
                "the query has no token of its own (it merged into the last item); tokenize=items avoids this"
            )
        layout = Layout(self._prefix(request_type, parts.sink, preamble), self._pieces(units))
        return Prepared(layout, q_ids, c_ids)

    def _segments(self, parts: PromptParts, continuation: str | None):
        """Token ids of (preamble, each item, query, continuation) of a marked prompt.

        ``tokenize=items`` (SPEC §2): every part on its own. ``tokenize=joint``: the plain prompt tokenized
        whole, as lm-eval's ``hf`` does, and cut where the items start (a token belongs to the part its first
        character is in), so ``full`` reads exactly ``hf``'s ids.
        """
        if self.pce.tokenize == "items":
            units = [self.ids(item) for item in parts.items]
            if continuation is None:
                return self.ids(parts.preamble), units, self.ids(parts.query), []
            q_ids, c_ids = encode_pair(self.tokenizer, parts.query, continuation, self.memo)
            return self.ids(parts.preamble), units, q_ids, c_ids
        plain = parts.preamble + "".join(parts.items) + parts.query
        c_ids: list[int] = []
        if continuation is not None:
            plain, continuation = move_trailing_spaces(plain, continuation)
        enc = self.tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if continuation is not None:
            c_ids = self.ids(plain + continuation)[len(ids) :]
        starts = [len(parts.preamble)]
        for item in parts.items:
            starts.append(starts[-1] + len(item))  # starts[i+1]: where item i ends; the last one: the query
        segments: list[list[int]] = [[] for _ in range(len(parts.items) + 2)]
        for token, (first, _) in zip(ids, enc["offset_mapping"]):
            segments[bisect.bisect_right(starts, first)].append(token)
        return segments[0], segments[1:-1], segments[-1], c_ids

    # ------------------------------------------------------------------ layout
    def _prefix(self, request_type: str, task_sink: str | None, preamble: Sequence[int] = ()) -> tuple[int, ...]:
        """BOS (if any) + preamble + sink (sink methods): what every piece attends to (SPEC §4).

        The preamble (a chat template's head, a task description) comes first, so the sink stands where it would
        as the first item; a preamble that starts with the BOS already (a chat template's) keeps it the only one.
        """
        sink = self.pce.sink_for(request_type, task_sink)
        bos = self.bos
        if bos and list(preamble[:1]) == bos:
            bos = []
        return tuple(bos + list(preamble) + self.ids(sink or ""))

    def _pieces(self, units: list[list[int]]) -> tuple[tuple[int, ...], ...]:
        """Items grouped into P contiguous pieces (SPEC §3)."""
        n_pieces = self.pce.n_pieces
        if 0 < len(units) < n_pieces:
            warn_once(
                "peff",
                f"P={n_pieces} is larger than the {len(units)} items of a request: every item becomes "
                f"its own piece (SPEC §3); logged once",
            )
        return tuple(tuple(t for unit in group for t in unit) for group in group_items(units, n_pieces))

    def _chunks(self, tokens: list[int]) -> tuple[tuple[int, ...], ...]:
        """Unmarked context: contiguous chunks of near-equal token count (SPEC §1, the rule of §3 on tokens), or
        with ``lm_split=ceil`` chunks of ceil(n/P) tokens and a shorter last one (the released code's LM split)."""
        if self.pce.lm_split == "ceil":
            return tuple(tuple(chunk) for chunk in chunk_ceil(tokens, self.pce.n_pieces))
        return tuple(tuple(chunk) for chunk in group_items(tokens, self.pce.n_pieces) if chunk)

    def _split(self, ids: list[int], offsets, text: str) -> tuple[tuple[int, ...], ...]:
        """Unmarked context under a ``split=`` rule other than tokens: ``ids``, the leading tokens of ``text``
        (``offsets``: the spans of all of text's tokens), in pieces of whole units (docs/split.md)."""
        pieces = split_ids(ids, offsets[: len(ids)], text, self.pce.n_pieces, self.split_rule)
        return tuple(tuple(piece) for piece in pieces)
