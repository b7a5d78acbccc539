"""Compact per-document results (`leaderboard.samples`): lm-eval samples JSONL -> reproducible .jsonl.gz.

The raw lines are shaped like lm-eval 0.4.13's (`evaluator.py` + `EvaluationTracker.save_results_samples`):
doc, arguments, resps, hashes, filter, `metrics` and the values our tasks' `process_results` return. One test
runs lm-eval itself on a tiny model and checks the compact file against the results file it wrote.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
import pathlib
import re

import numpy as np
import pytest

from lm_eval_parallel.leaderboard import gate, samples

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def raw_line(doc_id: int, metrics: dict, filter_name: str = "none") -> str:
    sample = {
        "doc_id": doc_id,
        "doc": {"items": ["a " * 50], "query": "q"},
        "target": "7",
        "arguments": {"gen_args_0": {"arg_0": "a long prompt " * 20, "arg_1": {"until": []}}},
        "resps": [["some output"]],
        "filtered_resps": ["some output"],
        "filter": filter_name,
        "metrics": list(metrics),
        "doc_hash": "d" * 64,
        "prompt_hash": "p" * 64,
        "target_hash": "t" * 64,
        **metrics,
    }
    return json.dumps(sample) + "\n"


GENERATION = {3: (1.0, 2.5), 0: (0.0, 2.25), 2: (1.0, math.nan), 1: (0.0, 2.0)}  # doc: (subem, entropy)
PPL = {1: (-300.5, 256, 700, 3.0), 0: (-250.25, 256, 650, 3.5), 2: (-410.0, 256, 800, 2.75)}  # ll, tokens, bytes, H


def write_generation(path) -> None:
    with open(path, "w") as f:  # lm-eval's order is not doc order under batching
        f.writelines(
            raw_line(doc, {"subem": score, "score": score, "attn_entropy": entropy})
            for doc, (score, entropy) in GENERATION.items()
        )


def write_ppl(path) -> None:
    with open(path, "w") as f:
        f.writelines(
            raw_line(doc, {"perplexity": [ll, tokens], "bits_per_byte": [ll, n_bytes], "attn_entropy": h})
            for doc, (ll, tokens, n_bytes, h) in PPL.items()
        )


def test_compact_lines_hold_doc_id_metrics_and_ll_n_tokens(tmp_path):
    gen, ppl = tmp_path / "samples_pce_rag_nq_8k_D.jsonl", tmp_path / "samples_pce_ppl_pg19_8k_D.jsonl"
    write_generation(gen)
    write_ppl(ppl)
    gen_out, ppl_out = samples.compact_samples(str(gen)), samples.compact_samples(str(ppl))
    assert gen_out == str(gen) + ".gz" and ppl_out == str(ppl) + ".gz"
    with gzip.open(gen_out, "rt") as f:
        lines = f.read().splitlines()
    assert lines[0] == '{"doc_id":0,"subem":0.0,"score":0.0,"attn_entropy":2.25}'
    assert lines[2] == '{"doc_id":2,"subem":1.0,"score":1.0,"attn_entropy":null}'  # NaN is written as null
    records = samples.read_compact(gen_out)
    assert [r["doc_id"] for r in records] == [0, 1, 2, 3]
    assert [r["subem"] for r in records] == [GENERATION[d][0] for d in range(4)]
    assert math.isnan(records[2]["attn_entropy"]) and records[3]["attn_entropy"] == 2.5
    assert samples.read_compact(ppl_out) == [
        {
            "doc_id": d,
            "ll": PPL[d][0],
            "n_tokens": PPL[d][1],
            "bits_per_byte": [PPL[d][0], PPL[d][2]],
            "attn_entropy": PPL[d][3],
        }
        for d in range(3)
    ]


@pytest.mark.parametrize(
    "metric, higher", [("subem", True), ("score", True), ("perplexity", False), ("bits_per_byte", False)]
)
def test_gate_reads_the_compact_file_as_it_reads_the_raw_one(tmp_path, metric, higher):
    raw = tmp_path / ("samples_t_D.jsonl")
    (write_generation if higher else write_ppl)(raw)
    from_raw = gate.read_doc_scores(str(raw), metric, higher)
    from_compact = gate.read_doc_scores(samples.compact_samples(str(raw)), metric, higher)
    assert from_raw is not None and from_compact is not None
    order = np.argsort(from_raw.doc_ids)
    assert from_compact.doc_ids == tuple(sorted(from_raw.doc_ids))
    for field in ("scores", "loglikelihoods", "n_tokens"):
        a, b = getattr(from_raw, field), getattr(from_compact, field)
        assert (a is None and b is None) or np.array_equal(a[order], b)
    if metric == "bits_per_byte":  # the byte count, not the token count
        assert list(from_compact.n_tokens) == [PPL[d][2] for d in range(3)]


def test_bytes_are_reproducible_and_the_gzip_header_has_no_name_or_time(tmp_path):
    raw = tmp_path / "samples_pce_rag_nq_8k_D.jsonl"
    write_generation(raw)
    first = samples.compact_samples(str(raw), str(tmp_path / "a.jsonl.gz"))
    os.utime(raw, (1, 1))
    second = samples.compact_samples(str(raw), str(tmp_path / "other_name.jsonl.gz"))
    data = pathlib.Path(first).read_bytes()
    assert data == pathlib.Path(second).read_bytes()
    assert data[:3] == b"\x1f\x8b\x08" and data[3] & 0x08 == 0 and data[4:8] == b"\0\0\0\0"  # no FNAME, mtime 0
    # lines in another order give the same file
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(reversed(raw.read_text().splitlines(keepends=True))))
    assert pathlib.Path(samples.compact_samples(str(shuffled))).read_bytes() == data


def test_other_filters_are_kept_and_the_gate_reads_the_same_first_filter(tmp_path):
    raw = tmp_path / "samples_t_D.jsonl"
    with open(raw, "w") as f:  # lm-eval writes filter by filter
        f.writelines(raw_line(doc, {"exact_match": 1.0}, "strict") for doc in (1, 0))
        f.writelines(raw_line(doc, {"exact_match": 0.0}, "loose") for doc in (1, 0))
    records = samples.read_compact(samples.compact_samples(str(raw)))
    assert [(r["doc_id"], r["filter"], r["exact_match"]) for r in records] == [
        (0, "strict", 1.0),
        (1, "strict", 1.0),
        (0, "loose", 0.0),
        (1, "loose", 0.0),
    ]
    docs = gate.read_doc_scores(str(raw) + ".gz", "exact_match", True)
    assert docs.doc_ids == (0, 1) and list(docs.scores) == [1.0, 1.0]
    assert list(gate.read_doc_scores(str(raw), "exact_match", True).scores) == [1.0, 1.0]


def make_sweep(root) -> dict[str, str]:
    """Two configuration folders with a results file each and raw samples beside it."""
    paths = {}
    for folder, task, writer in (
        ("P1_full", "pce_rag_nq_8k", write_generation),
        ("P2_naive", "pce_ppl_pg19_8k", write_ppl),
    ):
        os.makedirs(root / folder)
        (root / folder / "results_2025-01-01T00-00-00.json").write_text("{}")
        paths[task] = str(root / folder / f"samples_{task}_2025-01-01T00-00-00.jsonl")
        writer(paths[task])
    return paths


def test_compact_folder_keeps_or_deletes_the_raw_files(tmp_path):
    raw = make_sweep(tmp_path / "runs")
    results = {t: os.path.join(os.path.dirname(p), "results_2025-01-01T00-00-00.json") for t, p in raw.items()}
    assert samples.find_samples(results["pce_rag_nq_8k"], "pce_rag_nq_8k") == raw["pce_rag_nq_8k"]
    done = samples.compact_folder(str(tmp_path / "runs"))
    assert sorted(c.raw for c in done) == sorted(raw.values()) and all(os.path.isfile(p) for p in raw.values())
    assert all(c.n_lines in (3, 4) and c.compact_bytes < c.raw_bytes for c in done)
    for task, path in raw.items():  # the compact file wins once it is there
        assert samples.find_samples(results[task], task) == path + ".gz"
    before = {p: pathlib.Path(p + ".gz").read_bytes() for p in raw.values()}
    assert samples.main([str(tmp_path / "runs"), "--delete_raw"]) == 0
    assert not any(os.path.exists(p) for p in raw.values())
    assert {p: pathlib.Path(p + ".gz").read_bytes() for p in raw.values()} == before
    assert samples.compact_folder(str(tmp_path / "runs")) == []  # nothing raw left


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json\n", "line 1: not JSON"),
        ('{"doc": 1}\n', "line 1: no doc_id"),
        (raw_line(0, {"score": 1.0}) + raw_line(0, {"score": 0.0}), "line 2: doc_id 0 (filter none) appears twice"),
        (raw_line(0, {"perplexity": [1.0, 2.0, 3.0]}), "perplexity must be a number or a [value, count] pair"),
        (raw_line(0, {"score": "high"}), "score: expected a number, got 'high'"),
    ],
)
def test_bad_samples_lines_are_named(tmp_path, content, message):
    raw = tmp_path / "samples_t_D.jsonl"
    raw.write_text(content)
    with pytest.raises(ValueError, match="^" + re.escape(str(raw)) + ".*" + re.escape(message)):
        samples.compact_samples(str(raw))
    assert not os.path.exists(str(raw) + ".gz")


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    raw = tmp_path / "samples_t_D.jsonl"
    write_generation(raw)
    with pytest.raises(ValueError, match="must end in .jsonl.gz"):
        samples.compact_samples(str(raw), str(tmp_path / "out.json"))
    with pytest.raises(ValueError, match="expected a name ending in .jsonl"):
        samples.compact_samples(str(tmp_path / "samples.txt"))
    assert samples.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such folder: " + str(tmp_path / "nowhere") in err


def test_a_real_lm_eval_run_compacts_to_its_own_scores(tiny_llama_dir, tmp_path, monkeypatch):
    """lm-eval's own samples files (pce_smoke; PG19 1k when ../shared/data is there) -> compact -> the gate's
    per-document values, whose mean / token-weighted perplexity is the score in the results file."""
    from lm_eval_parallel.sweep import main_sweep

    tasks = "pce_smoke"
    if os.path.isdir(os.path.join(SHARED_DATA, "ppl")):
        monkeypatch.setenv("PCE_DATA_DIR", SHARED_DATA)
        tasks += ",pce_ppl_pg19_1k"
    out = tmp_path / "sweep"
    assert (
        main_sweep(
            [
                "--model_args",
                f"pretrained={tiny_llama_dir},dtype=float32",
                "--P",
                "2",
                "--methods",
                "naive",
                "--tasks",
                tasks,
                "--output_path",
                str(out),
                "--device",
                "cpu",
                "--limit",
                "2",
                "--log_samples",
            ]
        )
        == 0
    )
    (results_path,) = glob.glob(str(out / "P2_naive" / "results_*.json"))
    results = json.loads(pathlib.Path(results_path).read_text())["results"]
    done = samples.compact_folder(str(out), delete_raw=True)
    assert len(done) == len([t for t in results if t.startswith(("pce_ruler_", "pce_json_kv_", "pce_ppl_"))])
    for task, values in results.items():
        path = samples.find_samples(results_path, task)
        if task.startswith("pce_ppl_"):
            docs = gate.read_doc_scores(path, "perplexity", False)
            ppl = math.exp(-docs.loglikelihoods.sum() / docs.n_tokens.sum())
            assert ppl == pytest.approx(values["perplexity,none"], rel=1e-12)
            assert set(docs.n_tokens) == {256}  # a 1k window scores its last 256 tokens
        elif path is not None:
            metric = "ruler_recall" if task.startswith("pce_ruler_") else "subem"
            docs = gate.read_doc_scores(path, metric, True)
            assert docs.doc_ids == (0, 1)
            assert docs.scores.mean() == pytest.approx(values[f"{metric},none"], abs=1e-12)
            entropies = [r["attn_entropy"] for r in samples.read_compact(path)]
            assert np.mean(entropies) == pytest.approx(values["attn_entropy,none"], rel=1e-12)
