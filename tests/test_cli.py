"""End to end through the stock `lm_eval` CLI (subprocess) with a small structured task written here."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

TASK_YAML = textwrap.dedent("""\
    task: pce_cli_probe
    dataset_path: ""
    custom_dataset: !function utils.make_docs
    test_split: test
    output_type: generate_until
    doc_to_text: !function utils.doc_to_text
    doc_to_target: answer
    generation_kwargs: {until: ["\\n"], max_gen_toks: 6, do_sample: false}
    process_results: !function utils.process_results
    metric_list:
      - {metric: contains, aggregation: mean, higher_is_better: true}
      - {metric: attn_entropy, aggregation: mean, higher_is_better: false}
    metadata: {version: 1.0}
    """)

TASK_UTILS = textwrap.dedent("""\
    import datasets
    from lm_eval_parallel import parallel_prompt
    from lm_eval_parallel.response import attn_entropy_of

    def make_docs(**kwargs):
        rows = [{"docs": [f"Note {j}: item {i + j} is red.\\n" for j in range(5)], "question": f"Item {i}?", "answer": "red"}
                for i in range(3)]
        return {"test": datasets.Dataset.from_list(rows)}

    def doc_to_text(doc):
        return parallel_prompt(doc["docs"], doc["question"] + "\\nAnswer:")

    def process_results(doc, results):
        return {"contains": float(doc["answer"] in results[0]), "attn_entropy": attn_entropy_of(results[0])}
    """)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_task")
    (folder / "pce_cli_probe.yaml").write_text(TASK_YAML)
    (folder / "utils.py").write_text(TASK_UTILS)
    return folder


def _run(cmd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_lm_eval_cli_runs_parallel_hf(tiny_llama_dir, task_dir, tmp_path):
    out = tmp_path / "out"
    proc = _run([sys.executable, "-m", "lm_eval", "--model", "parallel_hf", "--model_args",
                 f"pretrained={tiny_llama_dir},P=2,method=sink+sel,dtype=float32", "--device", "cpu",
                 "--tasks", "pce_cli_probe", "--include_path", str(task_dir), "--output_path", str(out), "--log_samples"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    results = json.loads(open(results_file).read())
    row = results["results"]["pce_cli_probe"]
    assert 0.0 <= row["contains,none"] <= 1.0
    assert row["attn_entropy,none"] > 0
    assert results["config"]["model_args"]["P"] == 2 and results["config"]["model_args"]["method"] == "sink+sel"
    assert results["config"]["pce"]["method"] == "sink+sel"
    (samples_file,) = glob.glob(str(out / "**" / "samples_pce_cli_probe_*.jsonl"), recursive=True)
    samples = [json.loads(line) for line in open(samples_file)]
    assert len(samples) == 3 and all(s["attn_entropy"] > 0 for s in samples)


def test_hook_off_wrapper_still_works(tiny_llama_dir, task_dir, tmp_path):
    args = ["--model", "parallel_hf", "--model_args", f"pretrained={tiny_llama_dir},P=2,method=naive,dtype=float32",
            "--device", "cpu", "--tasks", "pce_cli_probe", "--include_path", str(task_dir), "--limit", "1"]
    off = {"LM_EVAL_PARALLEL_AUTOLOAD": "0"}
    stock = _run([sys.executable, "-m", "lm_eval", *args], off)
    assert stock.returncode != 0 and "parallel_hf" in (stock.stderr + stock.stdout)
    wrapped = _run([sys.executable, "-m", "lm_eval_parallel", *args, "--output_path", str(tmp_path / "w")], off)
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    assert glob.glob(str(tmp_path / "w" / "**" / "results_*.json"), recursive=True)
