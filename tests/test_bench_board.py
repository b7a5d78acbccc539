"""`benchmarks/bench_board.py --tiny`: the 13 subtasks on a tiny random Llama and tiny generated data, through
the sweep and through lm-eval's `hf`; the JSON has every field and its times add up."""

from __future__ import annotations

import json
import math
import os

import pytest
from bench_scripts import load


@pytest.fixture(scope="module")
def bench_board():
    return load("bench_board")


def test_bad_arguments_fail_before_any_work(bench_board, tmp_path):
    with pytest.raises(SystemExit, match=r"--length '3k' has no pce_icl_banking77_3k; allowed: .*4k, 8k"):
        bench_board.main(["--length", "3k", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"unknown --model 'vllm'; allowed: parallel_hf, hf"):
        bench_board.main(["--model", "parallel_hf,vllm", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--query_impl 'quick'; allowed: auto, eager, fast"):
        bench_board.main(["--query_impl", "quick", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_tiny_run_records_every_field(bench_board, tmp_path, monkeypatch):
    from lm_eval_parallel.engine import ParallelEngine

    encode = ParallelEngine.__dict__["encode_many"]
    monkeypatch.delenv("PCE_DATA_DIR", raising=False)
    monkeypatch.setenv("PCE_CACHE_DIR", os.environ.get("PCE_CACHE_DIR", str(tmp_path / "cache")))  # --tiny sets both
    argv = ["--tiny", "--model", "parallel_hf,hf", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    argv += ["--progress", str(tmp_path / "progress.json")]
    assert bench_board.main(argv) == 0
    assert ParallelEngine.__dict__["encode_many"] is encode  # the timers are taken off again
    (path,) = (tmp_path / "out").iterdir()
    assert path.name.startswith("bench_board_tiny_cpu_") and path.suffix == ".json"
    record = json.loads(path.read_text())  # strict JSON: no NaN

    assert record["command"] == "python benchmarks/bench_board.py " + " ".join(argv)
    assert {"date", "device", "versions", "settings"} <= set(record)
    assert len(record["settings"]["tasks"]) == 13 and all(t.endswith("_4k") for t in record["settings"]["tasks"])

    sweep = record["parallel_hf"]
    for key in ("model_load_s", "task_build_s", "total_s", "startup_and_writing_s", "mean_requests_per_s"):
        assert sweep[key] >= 0, key
    configurations = sweep["configurations"]
    assert [(c["P"], c["method"]) for c in configurations] == [(1, "full"), (2, "naive")]
    progress = json.loads((tmp_path / "progress.json").read_text())  # rewritten after each configuration
    assert [(c["P"], c["method"], c["requests"]) for c in progress["configurations"]] == [
        (c["P"], c["method"], c["requests"]) for c in configurations
    ]
    stage_names = {"prefill_s", "query_s", "decode_s", "other_model_s", "model_s", "metrics_and_lm_eval_s"}
    for c in configurations + record["hf"]["configurations"]:
        assert c["requests"] == c["documents"] == 13  # one request per document, --limit 1 on 13 subtasks
        assert c["batch_size"] == record["settings"]["hf_batch_size" if c["model"] == "hf" else "batch_size"]
        assert c["requests_per_s"] == pytest.approx(c["requests"] / c["wall_s"])
        assert c["seconds_per_request"] == pytest.approx(c["wall_s"] / c["requests"])
        stages = c["stages"]
        assert stages["model_s"] + stages["metrics_and_lm_eval_s"] == pytest.approx(c["wall_s"])
        engine = [stages.get(name, 0.0) for name in ("prefill_s", "query_s", "decode_s")]
        assert sum(engine) + stages["other_model_s"] == pytest.approx(stages["model_s"])
        assert "peak_gpu_memory_bytes" in c and c["peak_gpu_memory_bytes"] is None  # CPU
        assert len(c["scores"]) == 13
    for c in configurations:
        assert set(c["stages"]) == stage_names and c["stages"]["prefill_s"] > 0 and c["stages"]["query_s"] > 0
        assert c["stages"]["decode_s"] > 0  # generation tasks decode after their query forward
        assert c["prefill_speedup_vs_full"] > 0
    assert configurations[0]["prefill_speedup_vs_full"] == 1.0
    assert set(record["hf"]["configurations"][0]["stages"]) == {"other_model_s", "model_s", "metrics_and_lm_eval_s"}
    assert record["hf"]["reuses_sweep_tasks"] and record["hf"]["task_build_s"] is None

    comparison = record["full_vs_hf"]
    hf = record["hf"]["configurations"][0]
    assert comparison["wall_ratio"] == pytest.approx(configurations[0]["wall_s"] / hf["wall_s"])
    assert comparison["scores_compared"] >= 13
    # the same requests: perplexities of parallel_hf method=full and hf agree to float32 reduction order
    for task in ("pce_ppl_pg19_4k", "pce_ppl_proof_pile_4k"):
        ours, theirs = configurations[0]["scores"][task], hf["scores"][task]
        assert math.isclose(ours["perplexity"], theirs["perplexity"], rel_tol=1e-4)
        assert ours["attn_entropy"] > 0 and theirs["attn_entropy"] is None  # hf has no entropy: NaN -> null


def test_a_resumed_run_adds_the_rest_of_the_grid_to_the_first_calls_records(bench_board, tmp_path, monkeypatch):
    """A grid in parts (one device call each): the second call with --resume skips what the first one finished,
    keeps its records and adds its own; --resume without its folder and file fails before any work."""
    monkeypatch.delenv("PCE_DATA_DIR", raising=False)
    monkeypatch.setenv("PCE_CACHE_DIR", os.environ.get("PCE_CACHE_DIR", str(tmp_path / "cache")))
    with pytest.raises(SystemExit, match="--resume needs --work and --progress"):
        bench_board.main(["--tiny", "--resume", "--out", str(tmp_path / "out")])
    common = ["--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    common += ["--progress", str(tmp_path / "progress.json")]
    assert bench_board.main([*common, "--methods", "full"]) == 0
    first = json.loads((tmp_path / "progress.json").read_text())["configurations"]
    assert [(c["P"], c["method"]) for c in first] == [(1, "full")]
    second = ["--methods", "full,naive", "--resume", "--log_samples", "--time_limit", "3600"]
    assert bench_board.main([*common, *second]) == 0
    (path,) = (tmp_path / "out").iterdir()  # the second call's file (same date) holds both parts
    sweep = json.loads(path.read_text())["parallel_hf"]
    assert sweep["sweep_argv"][-3:] == ["--log_samples", "--time_limit", "3600"]  # passed on to the sweep
    samples = list((tmp_path / "work" / "sweep" / "P2_naive").rglob("samples_*.jsonl"))
    assert len(samples) == 13  # per-document samples of every subtask, for the board
    assert [(c["P"], c["method"]) for c in sweep["configurations"]] == [(1, "full"), (2, "naive")]
    assert sweep["configurations"][0]["wall_s"] == first[0]["wall_s"]  # not run again
    assert len(sweep["calls"]) == 2
