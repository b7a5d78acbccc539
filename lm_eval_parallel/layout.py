"""Layout of one request: shared prefix, pieces, query; their positions and masks (SPEC §3, §5, §6).

Everything here is a small pure function of token counts and indices, so the engine, the dense
reference of the tests and the documentation all share one definition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def split_evenly(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous groups of ``n`` units: ``n // parts`` each, the first ``n % parts`` get one more."""
    parts = max(1, min(parts, n)) if n > 0 else 1
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def group_items(items: list, n_pieces: int) -> list[list]:
    """SPEC §3: n items -> min(P, n) contiguous pieces, earlier pieces one item larger."""
    pieces, start = [], 0
    for size in split_evenly(len(items), n_pieces):
        pieces.append(items[start : start + size])
        start += size
    return pieces


@dataclass(frozen=True)
class Layout:
    """Token ids of one request: ``prefix`` (BOS + sink + preamble), ``pieces`` (encoded independently)."""

    prefix: tuple[int, ...]
    pieces: tuple[tuple[int, ...], ...]

    @property
    def n_context(self) -> int:
        return len(self.prefix) + sum(len(p) for p in self.pieces)

    def flat_ids(self) -> list[int]:
        """Context ids in cache order: prefix, then every piece in order (what `full` reads)."""
        out = list(self.prefix)
        for piece in self.pieces:
            out.extend(piece)
        return out

    def key_groups(self) -> list[int]:
        """Per context key: -1 for the prefix, i for piece i (SPEC §7: prefix keys are always kept)."""
        out = [-1] * len(self.prefix)
        for i, piece in enumerate(self.pieces):
            out.extend([i] * len(piece))
        return out


def piece_positions(s: int, lengths: list[int], pos: str, pos_round: str) -> tuple[list[list[float]], float]:
    """Positions of every piece token and the position of the first query token (SPEC §6).

    ``s`` = prefix length, ``lengths`` = piece lengths. Returns ``(positions per piece, query_start)``.
    """
    arrays, query_start = piece_position_arrays(s, lengths, pos, pos_round)
    return [piece.tolist() for piece in arrays], query_start


def piece_position_arrays(s: int, lengths: list[int], pos: str, pos_round: str) -> tuple[list[np.ndarray], float]:
    """:func:`piece_positions` as one float64 array per piece (what the engine fills its rows from)."""
    lengths = [int(n) for n in lengths]
    nonempty = [n for n in lengths if n > 0]
    longest = max(lengths, default=0)
    # Token j of a piece of n tokens. Vectorised; the float64 operations are the ones the Python
    # expressions in the comments perform, in the same order, so the values are identical.
    out: list = []
    if pos == "serial":
        offset = s
        for n in lengths:
            out.append(offset + np.arange(n, dtype=np.float64))  # offset + j
            offset += n
        return out, float(offset)
    if pos == "harmonic":
        span = len(nonempty) / sum(1.0 / n for n in nonempty) if nonempty else 0.0
        for n in lengths:
            out.append(s + np.arange(n) * span / n)  # s + j * span / n
        query_start = s + span
    else:
        for n in lengths:
            j = np.arange(n)
            if pos == "even":
                out.append(s + j * longest / n)  # s + j * longest / n
            elif pos == "left":
                out.append((s + j).astype(np.float64))  # s + j
            elif pos == "right":
                out.append((s + longest - n + j).astype(np.float64))  # s + longest - n + j
            else:
                raise ValueError(f"pos={pos!r} is not allowed; choose one of even, left, right, harmonic, serial")
        query_start = float(s + longest)
    if pos_round == "floor":
        out = [np.floor(piece) for piece in out]
    return out, query_start


def layout_positions(layout: Layout, pos: str, pos_round: str) -> tuple[list[float], float]:
    """Positions of all context tokens in cache order and the first query position."""
    s = len(layout.prefix)
    per_piece, query_start = piece_positions(s, [len(p) for p in layout.pieces], pos, pos_round)
    flat = [float(j) for j in range(s)]
    for piece in per_piece:
        flat.extend(piece)
    return flat, query_start


def may_attend(q_group: int, q_index: int, k_group: int, k_index: int) -> bool:
    """SPEC §5 as a predicate on (group, cache index) pairs; groups: -1 prefix, i >= 0 piece i, -2 query.

    Prefix tokens: causal among themselves. A piece token: all prefix tokens + causal within its
    own piece. Query tokens: everything before them.
    """
    if k_index > q_index:
        return False
    if q_group == -2 or k_group == -1:
        return True
    return q_group == k_group
