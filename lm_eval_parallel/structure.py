"""Request structure: mark items, query and sink inside one prompt string (SPEC §1).

A structured prompt is a plain string that lm-eval carries as ``doc_to_text``. Four private-use
code points (U+E000..U+E003) delimit its parts; they never occur in natural text, and removing
them (with the sink they enclose) gives the plain prompt ``"".join(items) + query``.

    [SINK_OPEN sink SINK_CLOSE] (ITEM item)* QUERY query

Text before the first marker (a chat template, a task ``description``) is the *preamble*: it is
kept in the plain prompt and encoded in the shared prefix, which every piece attends to.
"""

from __future__ import annotations

SINK_OPEN = "\ue000"
SINK_CLOSE = "\ue001"
ITEM = "\ue002"
QUERY = "\ue003"
MARKERS = (SINK_OPEN, SINK_CLOSE, ITEM, QUERY)


class PromptParts(tuple):
    """``(items, query, sink)``; ``.preamble`` holds text that stood before the first marker."""

    preamble: str

    def __new__(cls, items: list[str], query: str, sink: str | None, preamble: str = ""):
        self = super().__new__(cls, (items, query, sink))
        self.preamble = preamble
        return self

    @property
    def items(self) -> list[str]:
        return self[0]

    @property
    def query(self) -> str:
        return self[1]

    @property
    def sink(self) -> str | None:
        return self[2]


def _check_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"parallel_prompt: {name} must be a str, got {type(text).__name__}")
    bad = [m for m in MARKERS if m in text]
    if bad:
        raise ValueError(f"parallel_prompt: {name} already contains a structure marker {bad[0]!r}")
    return text


def parallel_prompt(items: list[str], query: str, sink: str | None = None) -> str:
    """Join ``items`` (each becomes a unit of a piece) and ``query`` into one marked prompt.

    ``sink`` is an optional attention-sink text shared by every piece under ``method=sink`` and
    ``sink+sel``; it is not part of the plain prompt.
    """
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise TypeError(f"parallel_prompt: items must be a list of str, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("parallel_prompt: items is empty; give at least one item")
    parts = []
    if sink is not None:
        parts.append(SINK_OPEN + _check_text("sink", sink) + SINK_CLOSE)
    for i, item in enumerate(items):
        parts.append(ITEM + _check_text(f"items[{i}]", item))
    parts.append(QUERY + _check_text("query", query))
    return "".join(parts)


def is_marked(text: str) -> bool:
    return any(m in text for m in MARKERS)


def split_prompt(text: str) -> PromptParts | None:
    """Inverse of :func:`parallel_prompt`: ``(items, query, sink)``, or None for unmarked text.

    Raises ValueError with the reason for a malformed or nested structure.
    """
    if not is_marked(text):
        return None
    preamble = ""
    rest = text
    sink = None
    first = min(rest.find(m) for m in MARKERS if m in rest)
    preamble, rest = rest[:first], rest[first:]
    if rest.startswith(SINK_OPEN):
        close = rest.find(SINK_CLOSE)
        if close < 0:
            raise ValueError("split_prompt: sink opened (U+E000) but never closed (U+E001)")
        sink = rest[1:close]
        if any(m in sink for m in MARKERS):
            raise ValueError("split_prompt: markers nested inside the sink text")
        rest = rest[close + 1 :]
    if rest.count(QUERY) != 1:
        raise ValueError(f"split_prompt: expected exactly one query marker (U+E003), found {rest.count(QUERY)}")
    body, query = rest.split(QUERY)
    if any(m in query for m in MARKERS):
        raise ValueError("split_prompt: a structure marker follows the query marker; the query must come last")
    if SINK_OPEN in body or SINK_CLOSE in body:
        raise ValueError("split_prompt: the sink must come first, before every item")
    if not body.startswith(ITEM):
        raise ValueError("split_prompt: text between the sink and the first item marker (U+E002)")
    items = body.split(ITEM)[1:]
    if not items:
        raise ValueError("split_prompt: no items before the query")
    return PromptParts(items, query, sink, preamble)


def plain_prompt(text: str) -> str:
    """The prompt without markers and sink: what a model without parallel encoding reads."""
    parts = split_prompt(text)
    if parts is None:
        return text
    return parts.preamble + "".join(parts.items) + parts.query
