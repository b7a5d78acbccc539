"""`lm-eval-parallel sweep`: a 2 P x 2 method grid of pce_smoke on a tiny model in one process,
resumed after a configuration is removed, then turned into a board."""
import glob
import json
import os
import re
import shutil

from lm_eval_parallel.sweep import grid, main_sweep


def test_grid_runs_full_once():
    assert grid([1, 4], ["naive", "full", "sel"]) == [(1, "full"), (1, "naive"), (1, "sel"), (4, "naive"), (4, "sel")]
    assert grid([2], ["sink+sel", "sel", "sink", "naive"]) == [(2, "naive"), (2, "sel"), (2, "sink"), (2, "sink+sel")]


def test_sweep_writes_one_results_file_per_configuration_and_resumes(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["--model_args", f"pretrained={tiny_llama_dir},dtype=float32", "--P", "1,2", "--methods", "naive,sel",
            "--tasks", "pce_smoke", "--output_path", str(out), "--device", "cpu", "--limit", "1"]
    assert main_sweep(args) == 0
    folders = sorted(os.listdir(out))
    assert folders == ["P1_naive", "P1_sel", "P2_naive", "P2_sel"]
    reused = re.search(r"sweep: (\d+) encoded contexts reused", capsys.readouterr().out)
    assert reused and int(reused.group(1)) > 0  # sel found naive's contexts in the cache
    first = {}
    for folder in folders:
        (path,) = glob.glob(str(out / folder / "**" / "results_*.json"), recursive=True)
        data = json.load(open(path))
        P, method = folder[1:].split("_", 1)
        assert data["config"]["model_args"]["P"] == int(P) and data["config"]["model_args"]["method"] == method
        task_rows = {t: r for t, r in data["results"].items() if t.startswith("pce_ruler") or t.startswith("pce_json")}
        assert task_rows and all(r["attn_entropy,none"] > 0 for r in task_rows.values())
        first[folder] = (path, os.path.getmtime(path))
    _assert_equals_independent_run(first["P2_sel"][0], tiny_llama_dir)
    shutil.rmtree(out / "P2_naive")
    capsys.readouterr()
    assert main_sweep(args) == 0
    printed = capsys.readouterr().out
    assert "P=1 method=naive already in" in printed and "P=2 method=naive done" in printed
    for folder, (path, mtime) in first.items():
        if folder != "P2_naive":
            assert os.path.getmtime(path) == mtime  # untouched
    assert glob.glob(str(out / "P2_naive" / "**" / "results_*.json"), recursive=True)

    from lm_eval_parallel.leaderboard import main_leaderboard

    board = tmp_path / "board"
    assert main_leaderboard([str(out), "--out", str(board), "--no-plots"]) == 0
    rows = json.load(open(board / "board.json"))
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {(r["P"], r["method"]) for r in rows} >= {(1, "naive"), (2, "naive"), (2, "sel")}


def _assert_equals_independent_run(results_path, model_dir):
    """A configuration inside the sweep (tasks built once, contexts reused from the method before it)
    scores exactly what a run of that configuration alone scores."""
    from lm_eval import simple_evaluate

    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=model_dir, dtype="float32", P=2, method="sel", device="cpu")
    alone = simple_evaluate(model=lm, tasks=["pce_smoke"], limit=1, random_seed=0, numpy_random_seed=0,
                            torch_random_seed=0, fewshot_random_seed=0, metadata={"pretrained": model_dir})
    swept = json.load(open(results_path))["results"]
    compared = 0
    for task, row in alone["results"].items():
        for key, value in row.items():
            if isinstance(value, float) and "stderr" not in key:
                assert swept[task][key] == value, (task, key, swept[task][key], value)
                compared += 1
    assert compared >= 4


def test_context_cache_keeps_what_comes_next_when_full():
    """The second method of a pair reads contexts in the order the first stored them: with room for
    two of three, the first two are kept (an evict-oldest cache would keep only the last, then lose it)."""
    import torch

    from lm_eval_parallel.engine import ContextCache, EncodedContext
    from lm_eval_parallel.kvstore import KVStore

    def context(value):
        store = KVStore(1, torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.long),
                        torch.tensor([1]), torch.zeros(1, 1, 4, dtype=torch.long), 4)
        store.k[0] = torch.full((1, 1, 4, 2), float(value))
        store.v[0] = torch.full((1, 1, 4, 2), float(value))
        return EncodedContext(store, 4, 4.0)

    one = 2 * 8 * 4  # bytes of one context's k + v
    cache = ContextCache(2 * one)
    for key in ("a", "b", "c"):
        cache.put(key, context(ord(key)))
    assert [cache.get(k) is not None for k in ("a", "b", "c")] == [True, True, False]
    assert cache.hits == 2 and cache.used == 2 * one
    cache.clear()
    assert cache.get("a") is None and cache.used == 0
    cache.put("c", context(1))
    assert cache.get("c") is not None
