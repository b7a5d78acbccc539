"""KVStore bookkeeping: the layout kept on the device and the dense flag follow every mark (decode steps,
rewinds after scoring, padded and finished rows) exactly as if they were rebuilt from scratch."""

import random

import torch

from lm_eval_parallel.kvstore import KVStore


def _store(valid_prefix: list[list[bool]], cap: int) -> KVStore:
    b, n = len(valid_prefix), len(valid_prefix[0])
    key_valid = torch.zeros(b, cap, dtype=torch.bool)
    key_valid[:, :n] = torch.tensor(valid_prefix)
    key_group = torch.zeros(b, cap, dtype=torch.long)  # unused slots: a stale group a mark must overwrite
    key_group[:, 0] = -1  # the prefix key
    key_group[:, 1:n] = torch.arange(n - 1) % 3  # pieces 0, 1, 2, 0, ...
    piece_index = torch.full((b, 3, n), -1, dtype=torch.long)
    return KVStore(2, key_valid, key_group, torch.full((b,), 3), piece_index, n)


def test_marks_keep_device_layout_and_dense_flag_exact():
    rng = random.Random(0)
    for trial in range(40):
        b, n, cap = rng.choice([1, 2, 3]), rng.randint(2, 6), 40
        prefix = [[True] * n for _ in range(b)]
        if trial % 3 == 0:  # a left-padded row, as KVStore.stack makes
            prefix[-1][0] = False
        store = _store(prefix, cap)
        store.layout_on("cpu")  # cached from here on: marks must update it in place
        length = n
        for _ in range(8):
            start = rng.randint(n, length)  # scoring rewinds to the context end; generation appends
            q = rng.randint(1, 4)
            valid = torch.tensor([[rng.random() > 0.2 for _ in range(q)] for _ in range(b)])
            store.mark(start, valid)
            length = start + q
            key_valid, group_index, _, _ = store.layout_on("cpu")
            assert key_valid is not store.key_valid and torch.equal(key_valid, store.key_valid)
            assert torch.equal(group_index[:, :length], store.group_index()[:, :length])
            assert (group_index[:, n:length] == 3).all()  # query keys are always kept
            assert store.dense == bool(store.key_valid[:, :length].all()), (trial, start, valid)


def test_group_index_maps_always_kept_keys_to_the_extra_slot():
    store = _store([[True] * 5], 8)
    store.mark(5, torch.tensor([[True, False]]))
    assert store.group_index()[0].tolist() == [3, 0, 1, 2, 0, 3, 3, 0]


def test_row_runs_merge_back_to_back_rows_and_put_run_copies_them():
    from lm_eval_parallel.engine import _row_runs
    from lm_eval_parallel.kvstore import RowRun

    # rows of 3, 3, 2, 2 tokens after a 1-token inline prefix; the last row is not back to back with the others
    runs = _row_runs([3, 3, 2, 2], [1, 4, 7, 10], src_start=1)
    assert runs == [RowRun(0, 2, 1, 3, 1), RowRun(2, 1, 1, 2, 7), RowRun(3, 1, 1, 2, 10)]
    k = torch.randn(4, 2, 4, 5)  # [N, Hkv, T, D]: a batch of 4 rows, 1 prefix + 3 columns each
    v = torch.randn(4, 2, 4, 5)
    store = _store([[True] * 12], 12)
    for run in runs:
        store.put_run(0, run, k, v)
    for row, (n, dest) in enumerate(zip([3, 3, 2, 2], [1, 4, 7, 10])):
        assert torch.equal(store.k[0][0, :, dest : dest + n], k[row, :, 1 : 1 + n])
        assert torch.equal(store.v[0][0, :, dest : dest + n], v[row, :, 1 : 1 + n])
    assert (store.k[0][0, :, [0, 9]] == 0).all()  # the slots no run covers stay zero


def test_row_scatter_copies_exactly_what_the_runs_copy():
    from lm_eval_parallel.engine import _row_runs
    from lm_eval_parallel.kvstore import RowRun, RowScatter, flat_rows, scatter_indices

    lengths, offsets = [3, 3, 2, 1, 3], [2, 5, 8, 11, 13]
    runs = _row_runs(lengths, offsets, src_start=2) + [RowRun(0, 1, 0, 2, 0)]  # and a 2-token prefix from row 0
    k = torch.randn(5, 2, 5, 4)  # [N, Hkv, T, D]: 2 prefix + 3 piece columns
    v = torch.randn(5, 2, 5, 4)
    by_runs, by_scatter = _store([[True] * 17], 17), _store([[True] * 17], 17)
    for run in runs:
        by_runs.put_run(1, run, k, v)
    scatter = RowScatter(*torch.from_numpy(scatter_indices(runs, 5)))
    by_scatter.put_scatter(1, scatter, flat_rows(k), flat_rows(v))
    assert torch.equal(by_scatter.k[1], by_runs.k[1]) and torch.equal(by_scatter.v[1], by_runs.v[1])
    assert torch.equal(by_scatter.k[1][0, :, 8:10], k[2, :, 2:4]) and (by_scatter.k[1][0, :, 16] == 0).all()


def test_prefill_by_scatter_or_by_runs_fills_the_same_store(tiny_llama_dir, monkeypatch):
    """Pieces of many lengths: the engine's scatter writes equal one copy per run, bit for bit (fp32)."""
    from lm_eval_parallel import engine as engine_module
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="sink", P=5, dtype="float32", device="cpu")
    docs = [f"Document {i}: " + "word " * (3 * i + 1) + "\n" for i in range(5)]
    from lm_eval_parallel import parallel_prompt

    prepared = lm.prepare_generation(parallel_prompt(docs, "Question?"))
    assert len({len(p) for p in prepared.layout.pieces}) >= 3  # at least 3 runs
    stores = {}
    for threshold in (1, 10**9):
        monkeypatch.setattr(engine_module, "SCATTER_MIN_RUNS", threshold)
        stores[threshold] = lm.engine.encode(prepared.layout).store
    for layer in range(len(stores[1].k)):
        assert torch.equal(stores[1].k[layer], stores[10**9].k[layer])
        assert torch.equal(stores[1].v[layer], stores[10**9].v[layer])
