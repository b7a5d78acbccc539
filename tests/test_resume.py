"""--use_cache with parallel_hf: a run killed mid-way and restarted gives the results of an
uninterrupted run, and two parallel configurations never share cache entries."""
import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time


YAML = textwrap.dedent("""\
    task: pce_resume_probe
    dataset_path: ""
    custom_dataset: !function utils.make_docs
    test_split: test
    output_type: generate_until
    doc_to_text: !function utils.doc_to_text
    doc_to_target: answer
    generation_kwargs: {until: [], max_gen_toks: 24, do_sample: false}
    process_results: !function utils.process_results
    metric_list:
      - {metric: contains, aggregation: mean, higher_is_better: true}
      - {metric: attn_entropy, aggregation: mean, higher_is_better: false}
    metadata: {version: 1.0}
    """)
UTILS = textwrap.dedent("""\
    import datasets
    from lm_eval_parallel import parallel_prompt
    from lm_eval_parallel.response import attn_entropy_of

    def make_docs(**kwargs):
        rows = [{"docs": [f"Fact {j}: value {i * 7 + j} is blue.\\n" for j in range(6)], "q": f"Value {i}?", "answer": "blue"}
                for i in range(30)]
        return {"test": datasets.Dataset.from_list(rows)}

    def doc_to_text(doc):
        return parallel_prompt(doc["docs"], doc["q"] + "\\nAnswer:")

    def process_results(doc, results):
        return {"contains": float(doc["answer"] in results[0]), "attn_entropy": attn_entropy_of(results[0])}
    """)


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
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "pce_resume_probe.yaml").write_text(YAML)
    (task_dir / "utils.py").write_text(UTILS)
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
