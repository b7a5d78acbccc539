"""Layout of one request: shared prefix, pieces, query; their positions and masks (SPEC §3, §5, §6).

Everything here is a small pure function of token counts and indices, so the engine, the dense
reference of the tests and the documentation all share one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch


def split_evenly(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous groups of ``n`` units: ``n // parts`` each, the first ``n % parts`` one
    more."""
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


def split_ceil(n: int, parts: int) -> list[int]:
    """Sizes of contiguous chunks of ``ceil(n / parts)`` units, the last one shorter (the released code's LM
    split, SPEC §11): 1066 tokens, P=8 -> 134 x 7 + 128. Fewer than ``parts`` chunks when the last ones would
    be empty (9 tokens, P=4 -> 3 x 3)."""
    if n <= 0:
        return []
    size = -(-n // max(1, parts))
    return [min(size, n - start) for start in range(0, n, size)]


def chunk_ceil(items: list, n_pieces: int) -> list[list]:
    """``items`` cut into the contiguous chunks of :func:`split_ceil`."""
    pieces, start = [], 0
    for size in split_ceil(len(items), n_pieces):
        pieces.append(items[start : start + size])
        start += size
    return pieces


class TokenKind(IntEnum):
    """The group a token belongs to (SPEC §1)."""

    PREFIX = 0  # the shared prefix: BOS, preamble, sink text
    PIECE = 1  # a token of one of the pieces
    QUERY = 2  # query, continuation and generated tokens


@dataclass(frozen=True)
class TokenGroups:
    """Group of every token of one sequence, in cache order."""

    kind: torch.Tensor  # [N] long: TokenKind
    piece: torch.Tensor  # [N] long: the piece id where kind is PIECE (not read elsewhere)


@dataclass(frozen=True)
class Layout:
    """Token ids of one request: ``prefix`` (BOS + preamble + sink), ``pieces`` (encoded independently)."""

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

    def token_groups(self, n_query: int = 0) -> TokenGroups:
        """The group of every token in cache order: the prefix, each piece, then ``n_query`` query tokens."""
        s, lengths = len(self.prefix), [len(p) for p in self.pieces]
        end = s + sum(lengths)  # first query token
        kind = torch.full((end + n_query,), TokenKind.QUERY, dtype=torch.long)  # [N]
        kind[:s] = TokenKind.PREFIX
        kind[s:end] = TokenKind.PIECE
        piece = torch.zeros_like(kind)  # [N]
        piece[s:end] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
        return TokenGroups(kind, piece)


def piece_positions(
    s: int, lengths: list[int], pos: str, pos_round: str, query_round: str = "none", harmonic_prefix: str = "tokens"
) -> tuple[list[list[float]], float]:
    """Positions of every piece token and the position of the first query token (SPEC §6).

    ``s`` = prefix length, ``lengths`` = piece lengths. Returns ``(positions per piece, query_start)``.
    """
    arrays, query_start = piece_position_arrays(s, lengths, pos, pos_round, query_round, harmonic_prefix)
    return [piece.tolist() for piece in arrays], query_start


def piece_position_arrays(
    s: int, lengths: list[int], pos: str, pos_round: str, query_round: str = "none", harmonic_prefix: str = "tokens"
) -> tuple[list[np.ndarray], float]:
    """:func:`piece_positions` as one float64 array per piece (what the engine fills its rows from).

    ``pos_round=floor``: piece positions become integers, floored after rounding to float32 (the positions the
    model reads; the released code casts its float32 positions to long). ``query_round=floor``: the query start
    too. ``harmonic_prefix=min1``: under ``harmonic`` an empty prefix still spans one position, so every piece
    and query position moves up by one (the released code clamps every length at 1 in its harmonic mean).
    """
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
        start = max(s, 1) if harmonic_prefix == "min1" else s
        span = len(nonempty) / sum(1.0 / n for n in nonempty) if nonempty else 0.0
        for n in lengths:
            out.append(start + np.arange(n) * span / n)  # start + j * span / n
        query_start = start + span
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
        out = [np.floor(piece.astype(np.float32)).astype(np.float64) for piece in out]
    if query_round == "floor":
        query_start = float(np.floor(np.float32(query_start)))
    return out, query_start


def layout_positions(
    layout: Layout, pos: str, pos_round: str, query_round: str = "none", harmonic_prefix: str = "tokens"
) -> tuple[list[float], float]:
    """Positions of all context tokens in cache order and the first query position."""
    s = len(layout.prefix)
    per_piece, query_start = piece_positions(
        s, [len(p) for p in layout.pieces], pos, pos_round, query_round, harmonic_prefix
    )
    flat = [float(j) for j in range(s)]
    for piece in per_piece:
        flat.extend(piece)
    return flat, query_start


# ---------------------------------------------------------------------------------------------- masks (SPEC §5)
# A mask function answers "may the token at q_idx attend to the token at kv_idx?" for index tensors that
# broadcast against each other, with FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` signature (b and h are
# not read: one sequence, every head alike). Small predicates combine with and_masks / or_masks.
MaskFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal(b, h, q_idx, kv_idx):
    """A token never sees a later one."""
    return kv_idx <= q_idx


def query_rows(groups: TokenGroups) -> MaskFunction:
    """Rows of query tokens (they see everything before them)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return groups.kind[q_idx] == TokenKind.QUERY

    return mask_mod


def prefix_keys(groups: TokenGroups) -> MaskFunction:
    """Keys of the shared prefix (every later token sees them)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return groups.kind[kv_idx] == TokenKind.PREFIX

    return mask_mod


def same_piece(groups: TokenGroups) -> MaskFunction:
    """A piece token and a key of the same piece."""

    def mask_mod(b, h, q_idx, kv_idx):
        both_pieces = (groups.kind[q_idx] == TokenKind.PIECE) & (groups.kind[kv_idx] == TokenKind.PIECE)
        return both_pieces & (groups.piece[q_idx] == groups.piece[kv_idx])

    return mask_mod


def and_masks(*mask_mods: MaskFunction) -> MaskFunction:
    """True where every one of ``mask_mods`` is."""

    def mask_mod(b, h, q_idx, kv_idx):
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for other in mask_mods[1:]:
            result = result & other(b, h, q_idx, kv_idx)
        return result

    return mask_mod


def or_masks(*mask_mods: MaskFunction) -> MaskFunction:
    """True where any one of ``mask_mods`` is."""

    def mask_mod(b, h, q_idx, kv_idx):
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for other in mask_mods[1:]:
            result = result | other(b, h, q_idx, kv_idx)
        return result

    return mask_mod


def may_attend(groups: TokenGroups) -> MaskFunction:
    """SPEC §5 as one mask function: causal, and the row is a query token, or the key is a prefix token, or both
    are tokens of the same piece. Prefix tokens: causal among themselves. A piece token: all prefix tokens +
    causal within its own piece, never another piece. Query tokens: everything before them.

    ``may_attend(groups)(0, 0, idx[:, None], idx[None, :])`` is the dense [N, N] mask; the function itself is a
    FlexAttention ``mask_mod``.
    """
    return and_masks(causal, or_masks(query_rows(groups), prefix_keys(groups), same_piece(groups)))
