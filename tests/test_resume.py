"""--use_cache with parallel_hf: a run killed mid-way and restarted gives the results of an
uninterrupted run, and two parallel configurations never share cache entries."""
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
    cmd = [sys.executable, "-m", "lm_eval", "--model", "parallel_hf", "--model_args",
           f"pretrained={model_dir},P=3,method={method},dtype=float32", "--device", "cpu", "--tasks", "pce_resume_probe",
           "--include_path", str(task_dir), "--output_path", str(out), "--log_samples"]
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

    proc = subprocess.Popen(_cmd(tiny_llama_dir, task_dir, tmp_path / "killed", cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while _cached_rows(cache) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _cached_rows(cache)
    assert 0 < partial < 30, f"kill came too late or too early: {partial} cached rows"

    resumed = subprocess.run(_cmd(tiny_llama_dir, task_dir, tmp_path / "resumed", cache), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _cached_rows(cache) == 30
    fresh = subprocess.run(_cmd(tiny_llama_dir, task_dir, tmp_path / "fresh"), capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _samples(tmp_path / "resumed") == _samples(tmp_path / "fresh")

    other = subprocess.run(_cmd(tiny_llama_dir, task_dir, tmp_path / "naive", cache, method="naive", limit=3),
                           capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-2000:]
    assert len(glob.glob(f"{cache}*.db")) == 2  # its own cache file, not the sel entries
    assert _samples(tmp_path / "naive") != _samples(tmp_path / "fresh")[:3]
