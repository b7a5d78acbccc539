"""Flat KV store: prefix + every piece + query/generated tokens, one buffer per layer.

Buffers are [B, Hkv, capacity, D] and allocated lazily on each layer's own device (so a model split
over GPUs works); ``length`` is the number of filled positions, shared by every row (rows are
left-padded to a common context length). Piece encoding writes each piece at its offset; a query
forward writes its keys at ``[length, length + Q)`` and the engine decides whether to keep them
(generation) or to rewind (scoring several continuations of one context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


@dataclass(frozen=True)
class RowRun:
    """Rows of one encode forward copied into the store by one strided copy: ``n_rows`` consecutive batch rows
    from ``first_row``, each ``length`` tokens from column ``src_start``, back to back from store position
    ``dest``."""

    first_row: int
    n_rows: int
    src_start: int
    length: int
    dest: int


class RowScatter(NamedTuple):
    """Every kept token of one encode forward, copied into the store by one gather + one scatter per layer (instead
    of one copy per :class:`RowRun`): token ``src[i]`` of the forward's rows flattened [N * T] goes to store slot
    ``dest[i]``. Both on the forward's device."""

    src: torch.Tensor  # [M] long: row * T + column
    dest: torch.Tensor  # [M] long: store position


def scatter_indices(runs: list[RowRun], width: int) -> np.ndarray:
    """[2, M] int64: the ``src`` and ``dest`` of the :class:`RowScatter` that copies what ``runs`` copy, for
    forward rows of ``width`` tokens (host arrays, to be sent to the device with others)."""
    src, dest = [], []
    for run in runs:
        rows = np.arange(run.first_row, run.first_row + run.n_rows)[:, None]  # [n_rows, 1]
        cols = np.arange(run.length)[None, :]  # [1, length]
        src.append((rows * width + run.src_start + cols).ravel())
        dest.append((run.dest + (rows - run.first_row) * run.length + cols).ravel())
    return np.stack([np.concatenate(src), np.concatenate(dest)])


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """An encode forward's k or v [N, Hkv, T, D] as [Hkv, N * T, D] (token ``row * T + column``), for scatters."""
    n, hkv, t, d = x.shape
    return x.transpose(0, 1).reshape(hkv, n * t, d)


class StoreSlab:
    """The per-layer buffers of several fresh single-row stores as views of one allocation [Hkv, sum of
    capacities, D], so that an encode forward holding rows of all of them writes them with one gather + one scatter
    per layer. Packed forwards of short piece rows hold rows of every context of their batch (rows go longest
    first), and one gather + scatter per store and layer would cost a few thousand kernel launches a forward.

    Store ``i`` owns slots ``[offsets[i], offsets[i] + capacity_i)``; a :class:`RowScatter` for the slab has its
    ``dest`` in slab slots. A store keeps the whole slab alive: :meth:`KVStore.own_buffers` before keeping one.
    """

    def __init__(self, stores: list[KVStore]):
        if any(k is not None for s in stores for k in s.k):
            raise ValueError("StoreSlab: every store must be fresh (no buffers yet)")
        caps = [s.capacity for s in stores]
        self.stores = stores
        self.offsets: list[int] = np.cumsum([0, *caps[:-1]]).tolist()  # slab slot of each store's position 0
        self.total = sum(caps)
        self.k: list[torch.Tensor | None] = [None] * len(stores[0].k)  # per layer [Hkv, total, D]
        self.v: list[torch.Tensor | None] = [None] * len(stores[0].k)
        self._prefix_slots: torch.Tensor | None = None  # slab slots of every store's prefix, [stores * s]

    def _buffers(self, layer: int, like: torch.Tensor):
        """The slab's buffers of ``layer`` (like: [Hkv, M, D]), allocated at the first write with every store's
        views [1, Hkv, capacity, D]."""
        if self.k[layer] is None:
            hkv, _, d = like.shape
            self.k[layer] = like.new_zeros(hkv, self.total, d)
            self.v[layer] = like.new_zeros(hkv, self.total, d)
            for store, start in zip(self.stores, self.offsets):
                store.k[layer] = self.k[layer][None, :, start : start + store.capacity]
                store.v[layer] = self.v[layer][None, :, start : start + store.capacity]
        return self.k[layer], self.v[layer]

    def put_prefix(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the shared prefix's k, v [Hkv, s, D] at the head of every store of the slab (one copy each)."""
        kb, vb = self._buffers(layer, k)
        s = k.shape[1]
        if self._prefix_slots is None or self._prefix_slots.numel() != s * len(self.offsets):
            slots = (np.asarray(self.offsets)[:, None] + np.arange(s)[None]).reshape(-1)  # [stores * s]
            self._prefix_slots = torch.from_numpy(slots).to(k.device)
        n = len(self.offsets)
        kb.index_copy_(1, self._prefix_slots, k.repeat(1, n, 1))
        vb.index_copy_(1, self._prefix_slots, v.repeat(1, n, 1))

    def put_scatter(self, layer: int, scatter: RowScatter, flat_k: torch.Tensor, flat_v: torch.Tensor) -> None:
        """As :meth:`KVStore.put_scatter`, with ``scatter.dest`` in slab slots."""
        kb, vb = self._buffers(layer, flat_k)
        for buffer, flat in ((kb, flat_k), (vb, flat_v)):
            buffer.index_copy_(1, scatter.dest, flat.index_select(1, scatter.src))


class KeyLayout(NamedTuple):
    """What the query stage reads about every key of the store, on one device."""

    key_valid: torch.Tensor  # [B, cap] bool: False for left padding, unused slots and padded query rows
    group_index: torch.Tensor  # [B, cap] long: piece id of each key, P for always-kept keys (prefix, query)
    piece_index: torch.Tensor  # [B, P, Lmax] long: cache index of every piece token (-1 = none)
    n_pieces: torch.Tensor  # [B] long: number of pieces of each row


class KeyGroups(NamedTuple):
    """The keys of one query forward split for the grouped query stage (``query_fast``), on one device.

    Each piece is a group: a key range shared by every row (``spans``) or, when rows hold their pieces at
    different offsets, piece slot i of ``KeyLayout.piece_index`` (``gathered``). Every piece key is a context
    key, visible to every query row. The rest (prefix, query and generated keys) needs the causal mask.
    """

    spans: tuple[tuple[int, int, int], ...]  # (start, end, piece slot): keys [start, end) of every row
    gathered: bool  # pieces are read per row through piece_index (spans is then empty)
    rest_index: torch.Tensor  # [B, R] long: the valid keys in no piece, padded with index 0
    rest_valid: torch.Tensor  # [B, R] bool: False for that padding


def _first_false(valid: torch.Tensor) -> int:
    """Index of the first column of ``valid`` [B, N] (bool) that is not all True; N if there is none."""
    columns = valid.numpy().all(0)
    return int(columns.argmin()) if not columns.all() else valid.shape[1]


class KVStore:
    def __init__(
        self,
        n_layers: int,
        key_valid: torch.Tensor,
        key_group: torch.Tensor,
        n_pieces: torch.Tensor,
        piece_index: torch.Tensor,
        length: int,
    ):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.key_valid = key_valid  # [B, cap] bool: False for left padding and unused slots
        self.key_group = key_group  # [B, cap] long: piece id, -1 for always-kept keys
        self.n_pieces = n_pieces  # [B]
        self.piece_index = piece_index  # [B, P, Lmax] cache index of every piece token (-1 = none)
        self.length = length
        self.dense = False  # no invalid key among the keys the last query forward wrote up to
        self._dense_upto = _first_false(key_valid)  # key_valid[:, :n] is all True for n <= this
        self._on_device: dict[str, KeyLayout] = {}  # kept up to date by mark

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]

    @property
    def capacity(self) -> int:
        return self.key_valid.shape[1]

    def group_index(self) -> torch.Tensor:
        """Per key: its piece id, or P (= number of piece slots) for always-kept keys. [B, capacity]."""
        groups = self.key_group.numpy()
        return torch.from_numpy(np.where(groups < 0, self.piece_index.shape[1], groups))

    def layout_on(self, device) -> KeyLayout:
        """The key layout on ``device``: copied at the first query forward, then kept up to date by :meth:`mark`
        (a decode step copies one column, not the whole layout)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = KeyLayout(
                *(
                    t.to(device, copy=True)
                    for t in (self.key_valid, self.group_index(), self.piece_index, self.n_pieces)
                )
            )
        return self._on_device[key]

    def key_groups(self, n_k: int, device) -> KeyGroups:
        """The :class:`KeyGroups` of the first ``n_k`` keys, from the host copy of the layout."""
        pieces = self.piece_index.numpy()  # [B, P, Lmax]
        lengths = (pieces >= 0).sum(-1)  # [B, P]
        spans: list[tuple[int, int, int]] = []
        gathered = bool((pieces != pieces[:1]).any())
        if not gathered:
            for slot, n in enumerate(lengths[0].tolist()):
                start = int(pieces[0, slot, 0])
                if n and not (pieces[0, slot, :n] == np.arange(start, start + n)).all():
                    gathered = True
                    break
                if n:
                    spans.append((start, start + n, slot))
        if gathered:
            spans = []
        rest = (self.key_group[:, :n_k].numpy() < 0) & self.key_valid[:, :n_k].numpy()  # [B, K]
        n_rest = max(1, int(rest.sum(-1).max()))
        rest_index = np.zeros((self.batch, n_rest), dtype=np.int64)
        rest_valid = np.zeros((self.batch, n_rest), dtype=bool)
        for row in range(self.batch):
            keys = np.flatnonzero(rest[row])
            rest_index[row, : len(keys)] = keys
            rest_valid[row, : len(keys)] = True
        return KeyGroups(
            tuple(spans), gathered, torch.from_numpy(rest_index).to(device), torch.from_numpy(rest_valid).to(device)
        )

    def ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        self._on_device.clear()
        grow = max(needed, 2 * self.capacity) - self.capacity
        b = self.batch
        self.key_valid = torch.cat([self.key_valid, self.key_valid.new_zeros(b, grow)], 1)
        self.key_group = torch.cat([self.key_group, self.key_group.new_full((b, grow), -1)], 1)
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            if k is not None:
                pad = k.new_zeros(k.shape[0], k.shape[1], grow, k.shape[3])
                self.k[layer], self.v[layer] = torch.cat([k, pad], 2), torch.cat([v, pad], 2)

    def own_buffers(self) -> None:
        """Copy buffers that are views of a larger allocation (a :class:`StoreSlab`) into buffers of their own."""
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            if k is not None and k.untyped_storage().nbytes() > k.numel() * k.element_size():
                self.k[layer], self.v[layer] = k.clone(), v.clone()

    def _buffers(self, layer: int, like: torch.Tensor):
        if self.k[layer] is None:
            shape = (self.batch, like.shape[1], self.capacity, like.shape[3])
            self.k[layer] = like.new_zeros(shape)
            self.v[layer] = like.new_zeros(shape)
        return self.k[layer], self.v[layer]

    def put_prefix(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the shared prefix's k, v [Hkv, s, D] at the head of the (single-row) store."""
        kb, vb = self._buffers(layer, k[None])
        kb[0, :, : k.shape[1]] = k
        vb[0, :, : v.shape[1]] = v

    def put_run(self, layer: int, run: RowRun, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy ``run`` of an encode forward's k, v [N, Hkv, T, D] into the (single-row) store."""
        k = k[run.first_row : run.first_row + run.n_rows, :, run.src_start : run.src_start + run.length]
        v = v[run.first_row : run.first_row + run.n_rows, :, run.src_start : run.src_start + run.length]
        m, hkv, n, d = k.shape  # [m, Hkv, n, D]
        kb, vb = self._buffers(layer, k)
        kb[0, :, run.dest : run.dest + m * n].view(hkv, m, n, d).copy_(k.transpose(0, 1))
        vb[0, :, run.dest : run.dest + m * n].view(hkv, m, n, d).copy_(v.transpose(0, 1))

    def put_scatter(self, layer: int, scatter: RowScatter, flat_k: torch.Tensor, flat_v: torch.Tensor) -> None:
        """Copy tokens of an encode forward into the (single-row) store by ``scatter``; ``flat_k``, ``flat_v``
        [Hkv, N * T, D] are the forward's k, v [N, Hkv, T, D] with rows and columns flattened (:func:`flat_rows`)."""
        kb, vb = self._buffers(layer, flat_k[None])
        for buffer, flat in ((kb, flat_k), (vb, flat_v)):
            buffer[0].index_copy_(1, scatter.dest, flat.index_select(1, scatter.src))

    def append_query(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, write_at: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a query forward's k, v [B, Hkv, Q, D] at ``length``; return views [B, Hkv, length + Q, D] of
        every key and value so far (``length`` moves only when the engine keeps them).

        With ``write_at`` (a device long tensor [Q] of store slots, a static decode step): write there and return
        the whole buffers [B, Hkv, capacity, D]; slots not yet written are invalid keys (``key_valid``)."""
        kb, vb = self._buffers(layer, k)
        if write_at is not None:
            kb.index_copy_(2, write_at, k)
            vb.index_copy_(2, write_at, v)
            return kb, vb
        end = self.length + k.shape[2]
        kb[:, :, self.length : end] = k
        vb[:, :, self.length : end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def mark(self, start: int, valid: torch.Tensor) -> None:
        """Validity of the keys written at [start, start + Q): valid [B, Q] (query padding is invalid)."""
        end = start + valid.shape[1]
        self.key_valid[:, start:end] = valid
        self.key_group[:, start:end] = -1
        # keys before ``start`` are untouched: [0, end) is dense iff [0, start) was and every new key is valid
        if self._dense_upto >= start:
            self._dense_upto = start + _first_false(valid)
        self.dense = self._dense_upto >= end
        for device, layout in self._on_device.items():
            layout.key_valid[:, start:end] = valid.to(device)
            layout.group_index[:, start:end] = self.piece_index.shape[1]

    @classmethod
    def stack(cls, stores: list[KVStore], extra: int) -> KVStore:
        """Left-pad single-row stores to one batch with room for ``extra`` more positions."""
        if len(stores) == 1 and stores[0].capacity >= stores[0].length + extra:
            return stores[0]
        longest = max(s.length for s in stores)
        cap = longest + extra
        b = len(stores)
        n_slots = max(s.piece_index.shape[1] for s in stores)
        l_max = max(s.piece_index.shape[2] for s in stores)
        key_valid = torch.zeros(b, cap, dtype=torch.bool)
        key_group = torch.full((b, cap), -1, dtype=torch.long)
        piece_index = torch.full((b, n_slots, l_max), -1, dtype=torch.long)
        n_pieces = torch.zeros(b, dtype=torch.long)
        for row, s in enumerate(stores):
            pad = longest - s.length
            key_valid[row, pad:longest] = s.key_valid[0, : s.length]
            key_group[row, pad:longest] = s.key_group[0, : s.length]
            src = s.piece_index[0]
            piece_index[row, : src.shape[0], : src.shape[1]] = torch.where(src < 0, -1, src + pad)
            n_pieces[row] = s.n_pieces[0]
        out = cls(len(stores[0].k), key_valid, key_group, n_pieces, piece_index, longest)
        for layer in range(len(out.k)):
            like = next((s.k[layer] for s in stores if s.k[layer] is not None), None)
            if like is None:  # every context is empty: the query writes the first keys
                continue
            kb = like.new_zeros((b, like.shape[1], cap, like.shape[3]))
            vb = kb.clone()
            for row, s in enumerate(stores):
                if s.length == 0:
                    continue
                pad = longest - s.length
                kb[row, :, pad:longest] = s.k[layer][0, :, : s.length]
                vb[row, :, pad:longest] = s.v[layer][0, :, : s.length]
            out.k[layer], out.v[layer] = kb, vb
        return out
