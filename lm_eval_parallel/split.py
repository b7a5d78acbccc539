"""`split=`: where an unmarked context is cut into its P pieces (docs/split.md).

``tokens`` (the default) cuts the context's token ids into P contiguous chunks of near-equal length, wherever
that falls (SPEC §1, the rule of §3 on tokens). The other rules first cut the text into **units** and then
deal whole units into P contiguous pieces of near-equal token count:

- ``paragraph``: a unit ends after a blank line (a newline, optional whitespace, a newline).
- ``sentence``: a unit ends after ``.``, ``!`` or ``?`` (and any closing quotes or brackets) when whitespace
  follows, and after a blank line; no abbreviation list, so "Mr. Smith" is two units.
- ``regex:PATTERN``: a unit ends where a match of PATTERN ends (Python ``re``); the matched text stays with
  the unit before it. A zero-width pattern such as ``regex:(?=Document)`` starts units at its matches.

A unit is never whitespace only: whitespace between two unit ends joins the unit before it (leading
whitespace joins the first unit). So a paragraph end is also a sentence end, and sentences refine paragraphs.

The text is tokenized once, whole. A unit boundary becomes a cut between two tokens: a token belongs to the
unit its first character is in (as the joint tokenization of marked prompts, SPEC §2). The pieces' ids put
together are therefore exactly the ids of the unsplit context, and ``full`` / P=1 read the same tokens as
lm-eval's ``hf``. Two boundaries inside one token give one cut.

Nothing here imports lm-eval or a tokenizer library: token ids and character offsets in, token-id pieces out.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .layout import group_items, split_evenly

SPLIT_RULES = ("tokens", "paragraph", "sentence", "regex:PATTERN")

PARAGRAPH_END = r"\n\s*\n"  # a blank line; the match runs to its last newline
SENTENCE_END = r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|" + PARAGRAPH_END


@dataclass(frozen=True)
class SplitRule:
    """A parsed ``split=`` value: ``name`` is tokens, paragraph, sentence or regex; ``pattern`` ends units."""

    name: str
    pattern: re.Pattern | None  # None for tokens

    def __str__(self) -> str:
        return f"regex:{self.pattern.pattern}" if self.name == "regex" else self.name


def parse_split(value: str | SplitRule) -> SplitRule:
    """The rule a ``split=`` value names; a one-line ValueError naming the value and the allowed ones."""
    if isinstance(value, SplitRule):
        return value
    allowed = ", ".join(SPLIT_RULES)
    if not isinstance(value, str):
        raise TypeError(f"split={value!r} is not allowed; choose one of {allowed}")
    if value == "tokens":
        return SplitRule("tokens", None)
    if value == "paragraph":
        return SplitRule("paragraph", re.compile(PARAGRAPH_END))
    if value == "sentence":
        return SplitRule("sentence", re.compile(SENTENCE_END))
    if value.startswith("regex:"):
        source = value[len("regex:") :]
        if not source:
            raise ValueError(f"split={value!r} has an empty pattern; write regex:PATTERN, e.g. regex:\\n")
        try:
            return SplitRule("regex", re.compile(source))
        except re.error as err:
            raise ValueError(f"split={value!r} is not a valid regular expression ({err})") from None
    raise ValueError(f"split={value!r} is not allowed; choose one of {allowed}")


def unit_starts(text: str, rule: str | SplitRule) -> list[int]:
    """Character offsets where every unit after the first begins, ascending (empty for ``tokens``)."""
    rule = parse_split(rule)
    if rule.pattern is None:
        return []
    ends = sorted({m.end() for m in rule.pattern.finditer(text) if 0 < m.end() < len(text)})
    starts: list[int] = []
    for i, start in enumerate(ends):
        stop = ends[i + 1] if i + 1 < len(ends) else len(text)
        if text[start:stop].isspace():
            continue  # a whitespace-only unit stays with the unit before it
        if not starts and text[:start].isspace():
            continue  # so does leading whitespace, with the first unit
        starts.append(start)
    return starts


def unit_cuts(token_starts: Sequence[int], char_starts: Sequence[int]) -> list[int]:
    """Token index where every unit after the first begins: the first token whose first character is at or
    after the unit's start. ``token_starts``: each token's first character offset, non-decreasing."""
    return sorted({cut for cut in (bisect_left(token_starts, c) for c in char_starts) if 0 < cut < len(token_starts)})


def deal_units(sizes: Sequence[int], n_pieces: int) -> list[int]:
    """Units dealt greedily into contiguous pieces of near-equal token count; returns units per piece.

    ``sizes``: token count of every unit, each >= 1. With n units there are ``min(P, n)`` pieces (P > n: every
    unit is its own piece, as items in SPEC §3). The ideal j-th cut is where the ``tokens`` rule cuts the same
    total count (the first ``total % P`` pieces one token longer). Cuts are placed left to right, each at the
    unit boundary nearest to its ideal cut, the earlier boundary on a tie, never moved again; every piece keeps
    at least one unit. With one-token units this is exactly ``layout.group_items`` on the tokens.
    """
    n_units = len(sizes)
    parts = max(1, min(n_pieces, n_units))
    cumulative = [0]
    for size in sizes:
        cumulative.append(cumulative[-1] + size)  # cumulative[i]: tokens in the first i units
    ideal = 0
    cuts = [0]
    for j, size in enumerate(split_evenly(cumulative[-1], parts)[:-1], start=1):
        ideal += size
        lo, hi = cuts[-1] + 1, n_units - (parts - j)  # room for one unit in every piece left
        cut = min(max(bisect_left(cumulative, ideal), lo), hi)  # first boundary at or after the ideal cut
        if cut > lo and ideal - cumulative[cut - 1] <= cumulative[cut] - ideal:
            cut -= 1
        cuts.append(cut)
    cuts.append(n_units)
    return [b - a for a, b in pairwise(cuts)] if n_units else []


def split_ids(
    ids: Sequence[int], offsets: Sequence[Sequence[int]], text: str, n_pieces: int, rule: str | SplitRule
) -> list[list[int]]:
    """The context ``ids`` cut into at most ``n_pieces`` contiguous non-empty pieces by ``rule``.

    ``offsets``: one (start, end) character span in ``text`` per id, as a tokenizer's ``offset_mapping``; the
    ids may be a leading part of the text's tokens (the query taken off the end). ``tokens`` ignores offsets
    and text and gives what ``[c for c in layout.group_items(ids, P) if c]`` gives. The pieces put together
    are ``ids``.
    """
    rule = parse_split(rule)
    if not isinstance(n_pieces, int) or n_pieces < 1:
        raise ValueError(f"n_pieces={n_pieces!r} is not allowed; it must be an integer >= 1")
    ids = list(ids)
    if rule.pattern is None:
        return [chunk for chunk in group_items(ids, n_pieces) if chunk]
    if len(offsets) != len(ids):
        raise ValueError(f"split={rule}: {len(offsets)} offsets for {len(ids)} token ids; give one per id")
    token_starts = [int(span[0]) for span in offsets]
    for i in range(1, len(token_starts)):
        if token_starts[i] < token_starts[i - 1]:
            raise ValueError(
                f"split={rule}: token offsets go backwards at token {i}; the tokenizer's "
                f"offset_mapping must follow the text (split=tokens needs none)"
            )
    bounds = [0, *unit_cuts(token_starts, unit_starts(text, rule)), len(ids)]
    units = [ids[a:b] for a, b in pairwise(bounds) if b > a]
    pieces, first = [], 0
    for count in deal_units([len(u) for u in units], n_pieces):
        pieces.append([t for unit in units[first : first + count] for t in unit])
        first += count
    return pieces


def split_context(text: str, tokenizer, n_pieces: int, rule: str | SplitRule) -> list[list[int]]:
    """``text`` tokenized once by a Hugging Face tokenizer (no special tokens) and cut by ``rule``.

    Rules other than ``tokens`` need character offsets (``return_offsets_mapping``, fast tokenizers).
    """
    rule = parse_split(rule)
    if rule.pattern is None:
        enc = tokenizer(text, add_special_tokens=False)
        return split_ids(enc["input_ids"], [], text, n_pieces, rule)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return split_ids(enc["input_ids"], enc["offset_mapping"], text, n_pieces, rule)
