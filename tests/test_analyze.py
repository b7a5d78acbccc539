"""`lm-eval-parallel analyze` on synthetic sweep folders written here.

Scores, entropies and per-layer analysis records follow formulas (below); every expected CSV value, interval and r
is recomputed in the test from those formulas (Wilson by statsmodels, Pearson by numpy, Fisher z by hand), not
hard-coded. The folders look like `lm-eval-parallel sweep` output: `P{P}_{method}/results_<date>.json` with
config.model_args and config.pce, samples JSONL for perplexity, and one analysis JSON-lines file per sweep.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from lm_eval_parallel.analysis import main as analyze_main
from lm_eval_parallel.analysis.runs import attach_analysis, read_runs
from lm_eval_parallel.analysis.tables import perplexity_interval, proportion_interval
from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.leaderboard import stats

MODEL = "tiny-model"
Z = 1.959963984540054
N_DOCS = 100
TASKS = ["pce_icl_trec_coarse_8k", "pce_rag_nq_8k", "pce_ruler_mk2_8k", "pce_json_kv_8k", "pce_ppl_pg19_8k"]
METRIC = {"icl": "exact_match", "rag": "subem", "ruler": "ruler_recall", "json": "subem", "ppl": "perplexity"}
FULL_SCORE = {
    "pce_icl_trec_coarse_8k": 0.60,
    "pce_rag_nq_8k": 0.50,
    "pce_ruler_mk2_8k": 0.80,
    "pce_json_kv_8k": 0.0,
    "pce_ppl_pg19_8k": 10.0,
}
DROP = {"naive": 0.10, "sink+sel": 0.02, "oracle": 0.03, "serial": 0.01, "sinktext": 0.04}
PPL_TOKENS = [100, 200, 300, 400]
PPL_SPREAD = [1.10, 0.90, 1.05, 0.95]
AGGR_BONUS = {"none": 0.0, "T": 0.05, "HT": 0.10, "LHT": 0.03}
TASK_OFFSET = {"pce_icl_trec_coarse_8k": 0.0, "pce_rag_nq_8k": 0.10, "pce_ruler_mk2_8k": 0.20, "pce_json_kv_8k": 0.0}
LAYERS = 3


def family(task: str) -> str:
    return task.split("_")[1]


def score_of(task: str, variant: str, P: int, top_k: int = 2, aggr: str = "HT") -> float:
    """Accuracy-like: a multiple of 1/100 (N=100 documents); perplexity: grows by the drop per doubling."""
    if task == "pce_json_kv_8k":
        return 0.0  # full attention at 0: the floor
    if variant == "sel":  # only at P=64 (Table 2)
        return round(0.30 + 0.02 * top_k + AGGR_BONUS[aggr] + TASK_OFFSET[task], 2)
    drop = 0.0 if variant == "full" else DROP[variant] * math.log2(P)
    if family(task) == "ppl":
        return FULL_SCORE[task] * (1 + drop)
    return round(max(FULL_SCORE[task] - drop, 0.0), 2)


def entropy_of(task: str, variant: str, P: int) -> float:
    lp = math.log2(P)
    slope = {"full": 0.0, "naive": 0.25}.get(variant, 0.05)
    return 1.0 + 0.01 * TASKS.index(task) + slope * lp + (0.05 * lp * lp if variant == "naive" else 0.0)


def ppl_documents(ppl: float) -> list[tuple[float, int]]:
    """Per-document (loglikelihood, tokens) whose token-weighted perplexity is exactly `ppl`."""
    weights = [n * s for n, s in zip(PPL_TOKENS, PPL_SPREAD)]
    total = -math.log(ppl) * sum(PPL_TOKENS)
    return [(total * w / sum(weights), n) for w, n in zip(weights, PPL_TOKENS)]


def write_run(
    root: str, method: str, P: int, variant: str, date: float, tasks=TASKS, analysis_path=None, **settings
) -> str:
    """A results file shaped like lm-eval 0.4.13 via `lm-eval-parallel sweep`, and its PPL samples file."""
    date_id = datetime.datetime.fromtimestamp(date).isoformat().replace(":", "-")
    folder = os.path.join(root, f"P{P}_{method}")
    os.makedirs(folder, exist_ok=True)
    model_args = {"pretrained": MODEL, "dtype": "float32", **settings, "P": P, "method": method}
    if analysis_path:
        model_args["analysis_path"] = analysis_path
    pce = PCEConfig.from_args(**{k: v for k, v in model_args.items() if k not in ("pretrained", "dtype")}).as_dict()
    results, higher, n_samples = {}, {}, {}
    for task in tasks:
        metric = METRIC[family(task)]
        score = score_of(task, variant, P, settings.get("top_k", 2), settings.get("aggr", "HT"))
        entry = {"alias": task, "attn_entropy,none": entropy_of(task, variant, P), "attn_entropy_stderr,none": 0.01}
        if family(task) == "ppl":
            entry[f"{metric},none"] = score
            entry[f"{metric}_stderr,none"] = "N/A"
            higher[task] = {metric: False, "attn_entropy": False}
            n_samples[task] = {"original": len(PPL_TOKENS), "effective": len(PPL_TOKENS)}
            lines = [
                json.dumps({"doc_id": i, "filter": "none", metric: [ll, n], "attn_entropy": 1.0}) + "\n"
                for i, (ll, n) in enumerate(ppl_documents(score))
            ]
            with open(os.path.join(folder, f"samples_{task}_{date_id}.jsonl"), "w") as f:
                f.writelines(lines)
        else:
            entry.update({"score,none": score, f"{metric},none": score, f"{metric}_stderr,none": 0.05})
            higher[task] = {metric: True, "score": True, "attn_entropy": False}
            n_samples[task] = {"original": N_DOCS, "effective": N_DOCS}
        results[task] = entry
    payload = {
        "results": results,
        "group_subtasks": {},
        "configs": {},
        "higher_is_better": higher,
        "n-samples": n_samples,
        "date": date,
        "config": {"model": "parallel_hf", "model_args": model_args, "pce": pce, "limit": None},
    }
    path = os.path.join(folder, f"results_{date_id}.json")
    with open(path, "w") as f:
        json.dump(payload, f)
    return path


# ---------------------------------------------------------------------------------------- analysis records

RECORD_TASKS = {"pce_icl_trec_coarse_8k": [(0, 0), (0, 1), (1, 0), (2, 0)], "pce_ppl_pg19_8k": [(0, 0), (1, 0)]}
BASE = {("full", 1): 1.0, ("naive", 2): 1.5}


def record_values(method: str, P: int, doc: int, idx: int) -> dict:
    base = BASE[method, P]
    return {
        "layer_entropy": [base + 0.5 * layer + 0.1 * doc + 0.02 * idx for layer in range(LAYERS)],
        "key_norm": [[(10.0 * (layer + 1) + doc) * (1.2 if method == "naive" else 1.0)] for layer in range(LAYERS)],
        "abs_logit": [[2.0 * layer + doc + base, 2.0 * layer + doc + base + 2.0] for layer in range(LAYERS)],  # 2 heads
    }


def write_analysis(path: str) -> None:
    """Records of full (P=1) and naive P=2 in one file, as a sweep appends them; one request is written twice
    (a re-run): its first, wrong copy must lose to the last."""
    lines = []
    for method, P in BASE:
        for task, requests in RECORD_TASKS.items():
            for doc, idx in requests:
                record = {
                    "request_type": "generate_until",
                    "task": task,
                    "doc_id": doc,
                    "idx": idx,
                    "P": P,
                    "method": method,
                    "pos": "even",
                    "n_pieces": P,
                    "attn_entropy": 0.0,
                    "head_entropy": None,
                    **record_values(method, P, doc, idx),
                }
                if (task, doc, idx) == ("pce_icl_trec_coarse_8k", 1, 0):
                    lines.append({**record, "layer_entropy": [999.0] * LAYERS})
                lines.append(record)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)


def expected_band(method: str, P: int, tasks: list[str], stat: str) -> tuple[np.ndarray, ...]:
    """Per document: the mean of its requests; then mean ± 1.96 SD/sqrt(n) over documents."""
    docs = []
    for task in tasks:
        for doc in sorted({d for d, _ in RECORD_TASKS[task]}):
            rows = []
            for _, idx in (r for r in RECORD_TASKS[task] if r[0] == doc):
                values = record_values(method, P, doc, idx)
                if stat == "entropy":
                    rows.append(values["layer_entropy"])
                else:
                    rows.append([sum(h) / len(h) for h in values[stat]])
            docs.append(np.mean(rows, axis=0))
    docs = np.array(docs)
    mean = docs.mean(0)
    half = Z * docs.std(0, ddof=1) / math.sqrt(len(docs))
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------------------------ fixtures

NAIVE_P = [2, 4, 64]
T0 = 1_750_000_000.0


def write_main_sweep(root: str, with_analysis: bool = True) -> None:
    os.makedirs(root, exist_ok=True)
    analysis = os.path.join(root, "analysis.jsonl") if with_analysis else None
    if with_analysis:
        write_analysis(analysis)
    write_run(root, "full", 1, "full", T0, analysis_path=analysis)
    for i, P in enumerate(NAIVE_P):
        write_run(root, "naive", P, "naive", T0 + 10 + i, analysis_path=analysis)
        write_run(root, "sink+sel", P, "sink+sel", T0 + 20 + i, analysis_path=analysis)
    write_run(root, "sel", 64, "sel", T0 + 30, tasks=GEN_TASKS, analysis_path=analysis)


TABLE2_RUNS = [(1, "HT"), (5, "HT"), (10, "HT"), (5, "none"), (5, "T"), (5, "LHT"), (2, "none"), (2, "T")]
GEN_TASKS = TASKS[:4]  # Table 2 has no LM column


@pytest.fixture(scope="module")
def full_analysis(tmp_path_factory):
    """Main sweep + every ablation; `analyze` run once through the CLI entry point."""
    root = tmp_path_factory.mktemp("runs")
    write_main_sweep(str(root / "main"))
    for i, (k, aggr) in enumerate(TABLE2_RUNS):
        write_run(str(root / f"sel_k{k}_{aggr}"), "sel", 64, "sel", T0 + 100 + i, tasks=GEN_TASKS, top_k=k, aggr=aggr)
    for i, P in enumerate([2, 4]):
        write_run(str(root / "oracle"), "naive", P, "oracle", T0 + 200 + i, oracle_keys=True)
        write_run(str(root / "serial"), "sink+sel", P, "serial", T0 + 210 + i, pos="serial")
        write_run(str(root / "sink_nl"), "sink+sel", P, "sinktext", T0 + 220 + i, sink_text="\n\n")
    write_run(str(root / "floor_check"), "naive", 2, "naive", T0 + 300, pos_round="floor")  # not an analysis
    reference = root / "table2_ref.csv"
    reference.write_text("# fake reference\nsetting,ICL,RAG,Synthetic\nTopK=1,40.0,50.0,60.0\nAggr=T,10.0,20.0,30.0\n")
    out = root / "out"
    from lm_eval_parallel.cli import main as cli_main

    rc = cli_main(["analyze", str(root), "--out", str(out), "--table2_reference", str(reference)])
    assert rc == 0
    return out


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_float(text: str) -> float:
    return float(text) if text != "" else math.nan


# --------------------------------------------------------------------------------------------------- tests


def test_interval_helpers_against_independent_implementations():
    for k, n in [(0, 100), (1, 100), (50, 100), (99, 100), (100, 100), (3, 7), (57.5, 100)]:
        lo, hi = proportion_interval(k, n)
        ref_lo, ref_hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert proportion_interval(0, 100)[0] == 0.0 and proportion_interval(100, 100)[1] == 1.0
    assert all(math.isnan(v) for v in proportion_interval(0, 0) + proportion_interval(0, None))

    docs = [(np.array([-30.0, -50.0, -20.0]), np.array([10.0, 20.0, 10.0]))]
    assert all(math.isnan(v) for v in perplexity_interval(docs, 0) + perplexity_interval(docs + [None], 100))
    interval = stats.bootstrap_macro_perplexity(docs, n_resamples=500)
    assert perplexity_interval(docs, 500) == (interval.low, interval.high)

    from scipy import stats as sps

    x = [1.0, 2.0, 3.5, 4.0, 6.0, 7.5]
    y = [2.1, 2.9, 4.2, 3.8, 6.5, 6.9]
    result = stats.naive_entropy_correlation([("naive", a, b) for a, b in zip(x, y)])
    ref = sps.pearsonr(x, y)
    ci = ref.confidence_interval(0.95)  # scipy's own Fisher-z interval
    assert result.n == 6 and result.r == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert (result.low, result.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert result.pvalue == pytest.approx(ref.pvalue)
    assert stats.naive_entropy_correlation([("naive", 1, 3), ("naive", 2, 4)]) is None  # n < 3
    assert stats.naive_entropy_correlation([("naive", v, 5) for v in (1, 2, 3)]) is None  # constant series


def test_every_section_is_written_with_pngs(full_analysis):
    page = (full_analysis / "analysis.md").read_text()
    assert "Skipped" not in page
    for name in [
        "fig1_2_layers_8k_all.png",
        "fig3_7_entropy_vs_score_8k.png",
        "fig6_8k.png",
        "fig11_8k.png",
        "sink_text_8k.png",
    ]:
        path = full_analysis / name
        assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"({name})" in page
    assert "pos_round" in page.split("## Runs not used by any analysis")[1]  # the pos_round=floor run is listed


def test_layer_profiles_are_document_means_with_1_96_se(full_analysis):
    rows = read_csv(full_analysis / "fig1_2_layers.csv")
    for scope, tasks in [
        ("pce_icl_trec_coarse_8k", ["pce_icl_trec_coarse_8k"]),
        ("all", ["pce_icl_trec_coarse_8k", "pce_ppl_pg19_8k"]),
    ]:
        for method, P in BASE:
            for stat in ("entropy", "key_norm", "abs_logit"):
                mean, lo, hi = expected_band(method, P, tasks, stat)
                got = sorted(
                    (r for r in rows if (r["scope"], r["method"], r["P"], r["stat"]) == (scope, method, str(P), stat)),
                    key=lambda r: int(r["layer"]),
                )
                assert [int(r["layer"]) for r in got] == list(range(LAYERS))
                n_docs = sum(len({d for d, _ in RECORD_TASKS[t]}) for t in tasks)
                assert [int(r["n_docs"]) for r in got] == [n_docs] * LAYERS
                for column, want in (("mean", mean), ("lo", lo), ("hi", hi)):
                    assert [float(r[column]) for r in got] == pytest.approx(list(want), rel=1e-5), (scope, stat, column)
    assert not [r for r in rows if r["method"] == "naive" and r["P"] == "4"]  # no records for P=4


def test_entropy_vs_score_is_naive_only_with_fisher_interval_and_floor(full_analysis):
    correlations = {r["task"]: r for r in read_csv(full_analysis / "fig3_7_correlations.csv")}
    points = read_csv(full_analysis / "fig3_7_points.csv")
    for task in ("pce_icl_trec_coarse_8k", "pce_rag_nq_8k", "pce_ppl_pg19_8k"):
        Ps = [1] + NAIVE_P
        x = [entropy_of(task, "full" if P == 1 else "naive", P) for P in Ps]
        y = [score_of(task, "full" if P == 1 else "naive", P) * (1 if family(task) == "ppl" else 100) for P in Ps]
        r = float(np.corrcoef(x, y)[0, 1])
        half = Z / math.sqrt(len(Ps) - 3)
        row = correlations[task]
        assert int(row["n_points"]) == len(Ps)
        assert float(row["r"]) == pytest.approx(r, rel=1e-5)
        assert float(row["r_lo"]) == pytest.approx(math.tanh(math.atanh(r) - half), rel=1e-5)
        assert float(row["r_hi"]) == pytest.approx(math.tanh(math.atanh(r) + half), rel=1e-5)
        assert row["used"] == "True"
        mine = sorted((p for p in points if p["task"] == task), key=lambda p: int(p["P"]))
        assert [p["method"] for p in mine] == ["full"] + ["naive"] * len(NAIVE_P)  # no sink+sel, sel, ablations
        assert [float(p["score"]) for p in mine] == pytest.approx(y, rel=1e-5)
    trec = next(p for p in points if p["task"] == "pce_icl_trec_coarse_8k" and p["P"] == "2")
    lo, hi = proportion_confint(50, 100, alpha=0.05, method="wilson")
    assert (float(trec["score_lo"]), float(trec["score_hi"])) == (
        pytest.approx(100 * lo, rel=1e-5),
        pytest.approx(100 * hi, rel=1e-5),
    )
    assert float(trec["entropy_hi"]) - float(trec["entropy"]) == pytest.approx(Z * 0.01, rel=1e-5)
    floor = correlations["pce_json_kv_8k"]
    assert floor["floor"] == "floor" and floor["used"] == "False"
    assert correlations["pce_icl_trec_coarse_8k"]["floor"] == "above chance"
    assert float(correlations["pce_icl_trec_coarse_8k"]["chance"]) == pytest.approx(1 / 6)
    assert correlations["pce_ppl_pg19_8k"]["floor"] == "n/a (perplexity)"
    ppl = next(p for p in points if p["task"] == "pce_ppl_pg19_8k" and p["P"] == "4")
    assert float(ppl["score_lo"]) < float(ppl["score"]) < float(ppl["score_hi"])  # bootstrap over the 4 documents


def expected_category(category_tasks: list[str], top_k: int, aggr: str) -> tuple[float, float, float]:
    """Documents pooled over the category's tasks, Wilson by statsmodels."""
    k = sum(round(score_of(t, "sel", 64, top_k, aggr) * N_DOCS) for t in category_tasks)
    n = N_DOCS * len(category_tasks)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return 100 * k / n, 100 * lo, 100 * hi


def test_table2_cells_pool_documents_use_the_papers_top_k_and_show_the_reference(full_analysis):
    rows = {(r["method"], r["setting"], r["category"]): r for r in read_csv(full_analysis / "table2_selection.csv")}
    assert {m for m, _, _ in rows} == {"sel"}  # the main sweep's sink+sel P=64 alone is no ablation
    category_tasks = {
        "ICL": ["pce_icl_trec_coarse_8k"],
        "RAG": ["pce_rag_nq_8k"],
        "Synthetic": ["pce_ruler_mk2_8k"],
    }  # json_kv is at the floor: excluded
    for setting, top_k, aggr in [(f"TopK={k}", {c: k for c in category_tasks}, "HT") for k in (1, 2, 5, 10)] + [
        (f"Aggr={a}", {"ICL": 5, "RAG": 5, "Synthetic": 2}, a) for a in ("none", "T", "HT", "LHT")
    ]:
        for category, tasks in category_tasks.items():
            row = rows["sel", setting, category]
            k = top_k[category]
            present = (k, aggr) in TABLE2_RUNS or (k, aggr) == (2, "HT")  # (2, HT): the main sweep's sel run
            if not present:
                assert row["n_tasks"] == "0" and row["score"] == "", (setting, category)
                continue
            score, lo, hi = expected_category(tasks, k, aggr)
            assert (float(row["score"]), float(row["lo"]), float(row["hi"])) == (
                pytest.approx(score, rel=1e-5),
                pytest.approx(lo, rel=1e-5),
                pytest.approx(hi, rel=1e-5),
            )
            assert row["n_docs"] == str(N_DOCS * len(tasks))
            if category == "Synthetic":
                assert row["excluded"] == "pce_json_kv_8k"
    assert float(rows["sel", "TopK=1", "RAG"]["paper"]) == 50.0
    assert float(rows["sel", "TopK=1", "RAG"]["delta"]) == pytest.approx(
        100 * score_of("pce_rag_nq_8k", "sel", 64, 1, "HT") - 50.0, rel=1e-5
    )
    assert rows["sel", "TopK=2", "ICL"]["paper"] == ""  # not in the reference
    page = (full_analysis / "analysis.md").read_text()
    assert "paper ICL" in page and "not its expected values" in page  # side by side, with the model caveat


def test_ablation_figures_recognised_from_model_args(full_analysis):
    rows = read_csv(full_analysis / "fig6.csv")
    assert list(dict.fromkeys(r["series"] for r in rows)) == ["naive", "naive + oracle keys", "sink+sel"]
    oracle_icl = [r for r in rows if r["series"] == "naive + oracle keys" and r["category"] == "ICL"]
    assert [(r["P"], float(r["score"])) for r in oracle_icl] == [
        (str(P), pytest.approx(100 * score_of("pce_icl_trec_coarse_8k", "oracle", P), rel=1e-5)) for P in (2, 4)
    ]
    lm = next(r for r in rows if r["series"] == "naive" and r["category"] == "LM" and r["P"] == "2")
    assert float(lm["score"]) == pytest.approx(score_of("pce_ppl_pg19_8k", "naive", 2), rel=1e-5)
    assert float(lm["lo"]) < float(lm["score"]) < float(lm["hi"])
    synthetic = next(r for r in rows if r["category"] == "Synthetic")
    assert synthetic["excluded"] == "pce_json_kv_8k" and synthetic["n_tasks"] == "1"

    serial = read_csv(full_analysis / "fig11.csv")
    assert list(dict.fromkeys(r["series"] for r in serial)) == ["sink+sel (pos=even)", "sink+sel (pos=serial)"]
    rag = [r for r in serial if r["series"] == "sink+sel (pos=serial)" and r["category"] == "RAG" and r["P"] == "4"]
    assert float(rag[0]["score"]) == pytest.approx(100 * score_of("pce_rag_nq_8k", "serial", 4), rel=1e-5)

    sink = read_csv(full_analysis / "sink_text.csv")
    assert list(dict.fromkeys(r["series"] for r in sink)) == ["sink+sel: paper's sink", "sink+sel: sink '\\n\\n'"]
    entropy = next(r for r in sink if r["series"].endswith("'\\n\\n'") and r["category"] == "ICL" and r["P"] == "2")
    assert float(entropy["entropy"]) == pytest.approx(entropy_of("pce_icl_trec_coarse_8k", "sinktext", 2), rel=1e-5)
    assert float(entropy["entropy_hi"]) - float(entropy["entropy"]) == pytest.approx(Z * 0.01, rel=1e-5)


def test_missing_ablations_are_skipped_with_a_note(tmp_path, capsys):
    write_main_sweep(str(tmp_path / "runs"), with_analysis=False)
    rc = analyze_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--bootstrap_iters", "0"])
    assert rc == 0
    page = (tmp_path / "out" / "analysis.md").read_text()
    for title in ("Fig 1/2", "Table 2", "Fig 6", "Fig 11", "Sink content"):
        section = page.split(f"## {title}")[1].split("\n## ")[0]
        assert "Skipped: " in section, title
    assert "Skipped" not in page.split("## Fig 3/7")[1].split("\n## ")[0]
    assert "skipped fig1_2, table2, fig6, fig11, sink_text" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("fig6*")) and (tmp_path / "out" / "fig3_7_entropy_vs_score_8k.png").exists()
    assert not list((tmp_path / "out").glob("fig1_2*"))  # no analysis records: nothing of Fig 1/2


def test_shared_analysis_file_with_indistinguishable_runs_is_not_used(tmp_path):
    analysis = str(tmp_path / "a.jsonl")
    write_analysis(analysis)
    write_run(str(tmp_path / "main"), "naive", 2, "naive", T0, analysis_path=analysis)
    write_run(str(tmp_path / "oracle"), "naive", 2, "oracle", T0 + 1, analysis_path=analysis, oracle_keys=True)
    write_run(str(tmp_path / "main"), "full", 1, "full", T0 + 2, analysis_path=analysis)
    runs, _ = read_runs([str(tmp_path)])
    attach_analysis(runs, [str(tmp_path)])
    by_kind = {(r.method, r.kind): r for r in runs}
    assert by_kind["full", "main"].records and len(by_kind["full", "main"].records) == 6  # duplicate dropped
    for key in (("naive", "main"), ("naive", "oracle_keys")):
        assert by_kind[key].records == [] and "same P/method/pos" in by_kind[key].note


def test_analysis_path_recorded_relative_is_found_beside_the_sweep(tmp_path):
    root = tmp_path / "sweep"
    os.makedirs(root)
    write_analysis(str(root / "analysis.jsonl"))
    write_run(str(root), "full", 1, "full", T0, analysis_path="runs/8k/analysis.jsonl")  # the cwd of the sweep
    runs, _ = read_runs([str(root)])
    attach_analysis(runs, [str(root)])
    assert runs[0].analysis_file == str(root / "analysis.jsonl") and len(runs[0].records) == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nowhere", "--out", "o"], "no such file or directory: nowhere"),
        (["RUNS", "--out", "o", "--chance", "trec_coarse=1.5"], "--chance 'trec_coarse=1.5'"),
        (["RUNS", "--out", "o", "--table2_reference", "missing.csv"], "--table2_reference missing.csv: no such file"),
        (["RUNS", "--out", "o", "--table2_length", "8000"], "--table2_length '8000'"),
        (["RUNS", "--out", "o", "--model", "other"], "--model 'other' is not in the runs"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, message):
    write_run(str(tmp_path / "runs"), "full", 1, "full", T0, tasks=TASKS[:1])
    argv = [
        str(tmp_path / "runs") if a == "RUNS" else str(tmp_path / a) if a in ("o", "missing.csv") else a for a in argv
    ]
    assert analyze_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.replace("missing.csv", str(tmp_path / "missing.csv")) in err
    assert not (tmp_path / "o").exists()


def test_several_models_need_a_choice(tmp_path, capsys):
    write_run(str(tmp_path / "a"), "full", 1, "full", T0, tasks=TASKS[:1])
    path = write_run(str(tmp_path / "b"), "full", 1, "full", T0 + 1, tasks=TASKS[:1])
    with open(path) as f:
        payload = json.load(f)
    payload["config"]["model_args"]["pretrained"] = "other-model"
    with open(path, "w") as f:
        json.dump(payload, f)
    assert analyze_main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "several models" in capsys.readouterr().err
    assert analyze_main([str(tmp_path), "--out", str(tmp_path / "o"), "--model", "other-model (float32)"]) == 0
