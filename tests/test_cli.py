"""End to end through the stock `lm_eval` CLI (subprocess) with a small structured task written here."""

import glob
import json
import os
import subprocess
import sys

import pytest
from probe_task import write_probe_task


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_probe_task(
        tmp_path_factory.mktemp("cli_task"), "pce_cli_probe", n_docs=3, n_items=5, max_gen_toks=6, until='["\\n"]'
    )


def _run(cmd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_lm_eval_cli_runs_parallel_hf(tiny_llama_dir, task_dir, tmp_path):
    out = tmp_path / "out"
    proc = _run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "parallel_hf",
            "--model_args",
            f"pretrained={tiny_llama_dir},P=2,method=sink+sel,dtype=float32",
            "--device",
            "cpu",
            "--tasks",
            "pce_cli_probe",
            "--include_path",
            str(task_dir),
            "--output_path",
            str(out),
            "--log_samples",
        ]
    )
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
    args = [
        "--model",
        "parallel_hf",
        "--model_args",
        f"pretrained={tiny_llama_dir},P=2,method=naive,dtype=float32",
        "--device",
        "cpu",
        "--tasks",
        "pce_cli_probe",
        "--include_path",
        str(task_dir),
        "--limit",
        "1",
    ]
    off = {"LM_EVAL_PARALLEL_AUTOLOAD": "0"}
    stock = _run([sys.executable, "-m", "lm_eval", *args], off)
    assert stock.returncode != 0 and "parallel_hf" in (stock.stderr + stock.stdout)
    wrapped = _run([sys.executable, "-m", "lm_eval_parallel", *args, "--output_path", str(tmp_path / "w")], off)
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    assert glob.glob(str(tmp_path / "w" / "**" / "results_*.json"), recursive=True)


def test_every_command_has_a_help(capsys):
    """`lm-eval-parallel COMMAND --help` prints its usage and exits 0 for every command the top-level help lists."""
    import pytest

    from lm_eval_parallel import cli

    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            status = cli.main([name, "--help"])
            raise SystemExit(status)
        assert exit_.value.code in (0, None), name
        assert "usage:" in capsys.readouterr().out, name
