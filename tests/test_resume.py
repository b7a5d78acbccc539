"""Killed runs: --use_cache with parallel_hf (a run killed mid-way and restarted gives the results of an
uninterrupted run, and two parallel configurations never share cache entries), and `sweep` killed at any point
resumes to the results of an uninterrupted sweep."""

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from probe_task import write_probe_task


def _cmd(model_dir, task_dir, out, cache=None, method="sel", limit=None):
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "parallel_hf",
        "--model_args",
        f"pretrained={model_dir},P=3,method={method},dtype=float32",
        "--device",
        "cpu",
        "--tasks",
        "pce_resume_probe",
        "--include_path",
        str(task_dir),
        "--output_path",
        str(out),
        "--log_samples",
    ]
    return cmd + (["--use_cache", str(cache)] if cache else []) + (["--limit", str(limit)] if limit else [])


def _cached_rows(prefix) -> int:
    total = 0
    for path in glob.glob(f"{prefix}*.db"):
        try:
            with sqlite3.connect(path) as db:
                total += db.execute("select count(*) from unnamed").fetchone()[0]
        except sqlite3.Error:
            pass
    return total


def _samples(out):
    (path,) = glob.glob(str(out / "**" / "samples_pce_resume_probe_*.jsonl"), recursive=True)
    return sorted((s["doc_id"], s["resps"], s["attn_entropy"]) for s in map(json.loads, open(path)))


def test_killed_run_resumes_to_identical_results(tiny_llama_dir, tmp_path):
    task_dir = write_probe_task(tmp_path / "task", "pce_resume_probe", n_docs=30, n_items=6, max_gen_toks=24)
    cache = tmp_path / "cache" / "lm"

    proc = subprocess.Popen(
        _cmd(tiny_llama_dir, task_dir, tmp_path / "killed", cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while _cached_rows(cache) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _cached_rows(cache)
    assert 0 < partial < 30, f"kill came too late or too early: {partial} cached rows"

    resumed = subprocess.run(
        _cmd(tiny_llama_dir, task_dir, tmp_path / "resumed", cache), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _cached_rows(cache) == 30
    fresh = subprocess.run(_cmd(tiny_llama_dir, task_dir, tmp_path / "fresh"), capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _samples(tmp_path / "resumed") == _samples(tmp_path / "fresh")

    other = subprocess.run(
        _cmd(tiny_llama_dir, task_dir, tmp_path / "naive", cache, method="naive", limit=3),
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert len(glob.glob(f"{cache}*.db")) == 2  # its own cache file, not the sel entries
    assert _samples(tmp_path / "naive") != _samples(tmp_path / "fresh")[:3]


# ---------------------------------------------------------------- `sweep` killed at any point
_KILL_WHILE_WRITING = """\
import os, signal, sys
from lm_eval.loggers import EvaluationTracker
from lm_eval_parallel.sweep import main_sweep

original, calls = EvaluationTracker.save_results_samples, []

def save_half_then_die(self, task_name, samples):
    calls.append(task_name)
    if len(calls) == int(os.environ["KILL_AT_SAMPLES_FILE"]):
        original(self, task_name=task_name, samples=samples[: len(samples) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, task_name=task_name, samples=samples)

EvaluationTracker.save_results_samples = save_half_then_die
sys.exit(main_sweep(sys.argv[1:]))
"""
N_DOCS = 6


def _sweep_args(model_dir, task_dir, out):
    return [
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--tasks",
        "pce_sweep_probe",
        "--include_path",
        str(task_dir),
        "--output_path",
        str(out),
        "--device",
        "cpu",
        "--P",
        "1,3",
        "--methods",
        "naive,sel",
        "--log_samples",
    ]


def _finished(out) -> list[str]:
    """Configuration folders the sweep takes as done; each must be whole (results and every sample)."""
    from lm_eval_parallel.sweep import is_done

    done = []
    for name in sorted(os.listdir(out)) if out.is_dir() else []:
        if name.startswith("."):
            continue  # a configuration being written
        assert is_done(str(out / name)), name
        (samples,) = glob.glob(str(out / name / "samples_pce_sweep_probe_*.jsonl"))
        with open(samples) as f:
            assert sum(1 for _ in f) == N_DOCS, name
        done.append(name)
    return done


def _run(out) -> dict:
    """Per configuration: its scores and its samples."""
    runs = {}
    for name in _finished(out):
        (path,) = glob.glob(str(out / name / "results_*.json"))
        with open(path) as f:
            data = json.load(f)
        (samples,) = glob.glob(str(out / name / "samples_pce_sweep_probe_*.jsonl"))
        with open(samples) as f:
            rows = sorted(map(json.loads, f), key=lambda s: s["doc_id"])
        runs[name] = (data["results"], data["n-samples"], data["config"]["model_args"], rows)
    return runs


def _kill_when(proc, ready, delay: float, deadline: float = 300) -> bool:
    """SIGKILL the process group ``delay`` seconds after ``ready()`` holds; False if it ended before."""
    stop = time.time() + deadline
    while not ready() and proc.poll() is None and time.time() < stop:
        time.sleep(0.05)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def test_killed_sweep_resumes_to_the_results_of_an_uninterrupted_one(tiny_llama_dir, tmp_path):
    """Killed at seeded points (after some configurations, at a random moment from the start, and while it
    writes a samples file), the sweep never takes a partly written configuration as done, and its resumed
    results equal those of a sweep that was never stopped."""
    import random

    from lm_eval_parallel.sweep import main_sweep

    task_dir = write_probe_task(tmp_path / "task", "pce_sweep_probe", n_docs=N_DOCS, n_items=6, max_gen_toks=12)
    out = tmp_path / "killed"
    rng = random.Random(19)
    command = [sys.executable, "-m", "lm_eval_parallel", "sweep", *_sweep_args(tiny_llama_dir, task_dir, out)]
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    killed = []

    # 1: some configurations done, then a moment into the next one
    after = rng.randint(1, 2)
    proc = subprocess.Popen(command, **popen)
    killed.append(_kill_when(proc, lambda: len(_finished(out)) >= after, rng.uniform(0.0, 1.0)))
    assert len(_finished(out)) >= after
    # 2: at a random moment from the start (loading, building the tasks, or inside a configuration)
    proc = subprocess.Popen(command, **popen)
    killed.append(_kill_when(proc, lambda: True, rng.uniform(0.0, 25.0)))
    # 3: while a samples file is half written (the results file of that configuration is already there)
    before = _finished(out)
    env = {**os.environ, "KILL_AT_SAMPLES_FILE": "1"}
    writing = subprocess.run(
        [sys.executable, "-c", _KILL_WHILE_WRITING, *command[4:]], env=env, check=False, capture_output=True, text=True
    )
    if len(before) < 4:
        assert writing.returncode == -signal.SIGKILL, writing.stderr[-2000:]
        assert _finished(out) == before  # the half-written configuration is not taken as done
        partial = glob.glob(str(out / ".*.partial" / "results_*.json"))
        assert partial, "the kill came before the results file was written"
    assert any(killed) or len(before) < 4

    resumed = subprocess.run(command, check=False, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not glob.glob(str(out / ".*"))  # no partial folder left
    assert main_sweep(_sweep_args(tiny_llama_dir, task_dir, tmp_path / "uninterrupted")) == 0
    got, want = _run(out), _run(tmp_path / "uninterrupted")
    assert sorted(got) == ["P1_naive", "P1_sel", "P3_naive", "P3_sel"] == sorted(want)
    assert got == want
