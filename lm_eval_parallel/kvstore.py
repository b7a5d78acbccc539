"""Flat KV store: prefix + every piece + query/generated tokens, one buffer per layer.

Buffers are [B, Hkv, capacity, D] and allocated lazily on each layer's own device (so a model split
over GPUs works); ``length`` is the number of filled positions, shared by every row (rows are
left-padded to a common context length). Piece encoding writes each piece at its offset; a query
forward writes its keys at ``[length, length + Q)`` and the engine decides whether to keep them
(generation) or to rewind (scoring several continuations of one context).
"""
from __future__ import annotations

import numpy as np
import torch


def _first_false(valid: torch.Tensor) -> int:
    """Index of the first column of ``valid`` [B, N] (bool) that is not all True; N if there is none."""
    columns = valid.numpy().all(0)
    return int(columns.argmin()) if not columns.all() else valid.shape[1]


class KVStore:
    def __init__(self, n_layers: int, key_valid: torch.Tensor, key_group: torch.Tensor, n_pieces: torch.Tensor,
                 piece_index: torch.Tensor, length: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.key_valid = key_valid  # [B, cap] bool: False for left padding and unused slots
        self.key_group = key_group  # [B, cap] long: piece id, -1 for always-kept keys
        self.n_pieces = n_pieces  # [B]
        self.piece_index = piece_index  # [B, P, Lmax] cache index of every piece token (-1 = none)
        self.length = length
        self.dense = False  # no invalid key among the keys the last query forward wrote up to
        self._dense_upto = _first_false(key_valid)  # key_valid[:, :n] is all True for n <= this
        self._on_device: dict = {}  # device -> (key_valid, group_index, piece_index, n_pieces), kept up to date

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

    def layout_on(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(key_valid, group_index, piece_index, n_pieces) on ``device``: copied at the first query forward,
        then kept up to date by :meth:`mark` (a decode step copies one column, not the whole layout)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device, copy=True) for t in (
                self.key_valid, self.group_index(), self.piece_index, self.n_pieces))
        return self._on_device[key]

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

    def _buffers(self, layer: int, like: torch.Tensor):
        if self.k[layer] is None:
            shape = (self.batch, like.shape[1], self.capacity, like.shape[3])
            self.k[layer] = like.new_zeros(shape)
            self.v[layer] = like.new_zeros(shape)
        return self.k[layer], self.v[layer]

    def put(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, row: int = 0) -> None:
        """Write k, v [Hkv, n, D] of one row at positions [start, start + n)."""
        kb, vb = self._buffers(layer, k[None])
        kb[row, :, start : start + k.shape[1]] = k
        vb[row, :, start : start + v.shape[1]] = v

    def put_rows(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, row: int = 0) -> None:
        """Write m rows k, v [m, Hkv, n, D] back to back at positions [start, start + m * n)."""
        m, hkv, n, d = k.shape
        kb, vb = self._buffers(layer, k)
        kb[row, :, start : start + m * n].view(hkv, m, n, d).copy_(k.transpose(0, 1))
        vb[row, :, start : start + m * n].view(hkv, m, n, d).copy_(v.transpose(0, 1))

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this forward's k, v [B, Hkv, Q, D] at ``length``; return views of everything so far."""
        end = self.length + k.shape[2]
        kb, vb = self._buffers(layer, k)
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
        for device, (key_valid, group_index, _, _) in self._on_device.items():
            key_valid[:, start:end] = valid.to(device)
            group_index[:, start:end] = self.piece_index.shape[1]

    @classmethod
    def stack(cls, stores: list["KVStore"], extra: int) -> "KVStore":
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
