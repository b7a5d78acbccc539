"""Leaderboard and regression gate on synthetic lm-eval results files written here.

Scores follow simple formulas (below), so every expected table value, pooled perplexity and Pearson r is
recomputed independently in the test rather than hard-coded.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import statistics

import pytest

from lm_eval_parallel.leaderboard import (
    choose_score_metric,
    load_board_json,
    main_leaderboard,
    parse_model_args,
    parse_task_name,
    pearson,
    run_settings,
)

MODEL = "tiny-model"
BASE_SCORES = {
    "pce_icl_banking77_8k": 0.80,
    "pce_icl_trec_8k": 0.60,
    "pce_rag_nq_8k": 0.50,
    "pce_json_kv_8k": 0.90,
    "pce_ruler_mk2_8k": 0.70,
    "pce_ppl_pg19_8k": 10.0,
    "pce_ppl_proof_pile_8k": 4.0,
}
PPL_SAMPLES = {"pce_ppl_pg19_8k": [100, 100, 100], "pce_ppl_proof_pile_8k": [400, 500]}  # tokens per sample
DROP_PER_DOUBLING = {"full": 0.0, "naive": 0.10, "sink+sel": 0.02}
ENTROPY_PER_DOUBLING = {"full": 0.0, "naive": 0.30, "sink+sel": 0.05}
SWEEP = [("full", 1), ("naive", 2), ("naive", 4), ("sink+sel", 2), ("sink+sel", 4)]
SCORE_METRIC = {
    "icl": "exact_match",
    "rag": "substring_exact_match",
    "json": "subem",
    "ruler": "ruler_recall",
    "ppl": "perplexity",
}
T0 = 1_700_000_000.0


def is_ppl(task: str) -> bool:
    return task.startswith("pce_ppl_")


def expected_score(task: str, method: str, P: int) -> float:
    doublings = math.log2(P)
    if is_ppl(task):
        return BASE_SCORES[task] * (1 + DROP_PER_DOUBLING[method] * doublings)
    return BASE_SCORES[task] - DROP_PER_DOUBLING[method] * doublings


def expected_entropy(task: str, method: str, P: int) -> float:
    return 1.5 + 0.1 * len(task) % 0.5 + ENTROPY_PER_DOUBLING[method] * math.log2(P)


# ---------------------------------------------------------------------------------------------- file writer


def write_run(
    root, model_args, scores: dict[str, float], date: float, limit=None, log_samples=True, entropy=None
) -> str:
    """An lm-eval-0.4.13-shaped results file (+ samples JSONL) under root/<model>/results_<date>.json."""
    date_id = datetime.datetime.fromtimestamp(date).isoformat().replace(":", "-")
    folder = os.path.join(root, MODEL)
    os.makedirs(folder, exist_ok=True)
    results, higher_is_better, n_samples = {}, {}, {}
    for i, (task, score) in enumerate(scores.items()):
        family = task.split("_")[1]
        metric = SCORE_METRIC[family]
        n = len(PPL_SAMPLES[task]) if is_ppl(task) else 10
        task_entropy = entropy[task] if entropy else 2.0
        entry = {"alias": f" - {task}"}
        if not is_ppl(task):  # the suite's generic `score`, listed first; the family's metric must win
            entry["score,none"] = 0.123
        if i % 2:  # attn_entropy first for every other task: the score must not depend on key order
            entry.update({"attn_entropy,none": task_entropy, "attn_entropy_stderr,none": 0.01})
        entry.update({f"{metric},none": score, f"{metric}_stderr,none": "N/A"})
        if is_ppl(task):
            entry["bits_per_byte,none"] = 1.0
        entry.update({"attn_entropy,none": task_entropy, "attn_entropy_stderr,none": 0.01})
        results[task] = entry
        higher_is_better[task] = {"attn_entropy": False, "score": True, metric: not is_ppl(task)}
        if is_ppl(task):
            higher_is_better[task]["bits_per_byte"] = False
        n_samples[task] = {"original": 100, "effective": n}
        if log_samples:
            with open(os.path.join(folder, f"samples_{task}_{date_id}.jsonl"), "w") as f:
                for doc_id, tokens in enumerate(PPL_SAMPLES.get(task, [1] * n)):
                    sample = {"doc_id": doc_id, "filter": "none", "resps": [["-1.0", "False"]]}
                    sample[metric] = [-tokens * math.log(score), tokens] if is_ppl(task) else score
                    f.write(json.dumps(sample) + "\n")
    results["pce_all_8k"] = {"alias": "pce_all_8k", "exact_match,none": 0.99, "sample_count": 70}
    payload = {
        "results": results,
        "groups": {"pce_all_8k": results["pce_all_8k"]},
        "group_subtasks": {"pce_all_8k": list(scores)},
        "configs": {task: {"task": task, "metadata": {}} for task in scores},
        "higher_is_better": higher_is_better,
        "n-samples": n_samples,
        "config": {"model": "parallel_hf", "model_args": model_args, "limit": limit, "batch_size": 1},
        "date": date,
        "model_name": MODEL,
    }
    path = os.path.join(folder, f"results_{date_id}.json")
    with open(path, "w") as f:
        json.dump(payload, f)
    return path


def write_sweep(root, date=T0, change=None, tasks=BASE_SCORES, sweep=SWEEP) -> None:
    """One results file per (method, P); `change(task, method, P, score) -> score` perturbs the scores."""
    for k, (method, P) in enumerate(sweep):
        scores = {t: expected_score(t, method, P) for t in tasks}
        if change:
            scores = {t: change(t, method, P, s) for t, s in scores.items()}
        entropy = {t: expected_entropy(t, method, P) for t in tasks}
        if k % 2:  # the Python API writes model_args as a string
            model_args = f"pretrained={MODEL},P={P},method={method},dtype=float32"
        else:
            model_args = {"pretrained": MODEL, "P": P, "method": method, "dtype": "float32"}
        write_run(root, model_args, scores, date + k, entropy=entropy)


# ---------------------------------------------------------------------------------------------- README parsing


def point(cell: str) -> str:
    """The number of a README cell, without its interval and marks: '_70.0 [52.1, 83.4]*_ᶠ' -> '70.0'."""
    return cell.strip("_").split(" [")[0].rstrip("†*ⁿᶠ_")


def points_after(text: str, heading: str) -> dict[str, dict[str, str]]:
    """`markdown_table_after` with every cell reduced to its number (`point`)."""
    return {
        label: {column: point(cell) for column, cell in row.items()}
        for label, row in markdown_table_after(text, heading).items()
    }


def markdown_table_after(text: str, heading: str) -> dict[str, dict[str, str]]:
    """{row label: {column header: cell}} of the first table after the line `heading`."""
    lines = text.splitlines()
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
        elif table:
            break
    header, body = table[0], table[2:]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in body}


def expected_category(category_tasks, method, P):
    return statistics.mean(expected_score(t, method, P) for t in category_tasks)


def expected_pooled_ppl(method, P, weights):
    tasks = list(PPL_SAMPLES)
    total = sum(weights[t] for t in tasks)
    return math.exp(sum(weights[t] * math.log(expected_score(t, method, P)) for t in tasks) / total)


ICL = ["pce_icl_banking77_8k", "pce_icl_trec_8k"]
SYNTHETIC = ["pce_json_kv_8k", "pce_ruler_mk2_8k"]
TOKENS = {t: sum(v) for t, v in PPL_SAMPLES.items()}
SAMPLES = {t: len(v) for t, v in PPL_SAMPLES.items()}


@pytest.fixture
def sweep_board(tmp_path):
    results = tmp_path / "results"
    write_sweep(str(results))
    out = tmp_path / "leaderboards" / "tiny"
    assert main_leaderboard([str(results), "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------- naming, args, metrics


def test_parse_task_name():
    name = parse_task_name("pce_json_kv_8k")
    assert (name.family, name.variant, name.length, name.category) == ("json_kv", "", "8k", "Synthetic")
    name = parse_task_name("pce_ppl_proof_pile_1k")
    assert (name.family, name.variant, name.length, name.category) == ("ppl", "proof_pile", "1k", "LM")
    name = parse_task_name("pce_ruler_mk2_128k")
    assert (name.family, name.variant, name.length, name.category) == ("ruler", "mk2", "128k", "Synthetic")
    assert parse_task_name("pce_icl_banking77_8k").category == "ICL"
    assert parse_task_name("pce_rag_nq_4k").category == "RAG"
    assert parse_task_name("hellaswag").category == "Other"
    assert parse_task_name("hellaswag").length == ""


def test_model_args_string_and_dict_give_the_same_settings():
    as_string = {"config": {"model_args": "pretrained=org/m,P=8,method=parallel,top_k=3,pos=even,device=cpu"}}
    as_dict = {
        "config": {
            "model_args": {
                "pretrained": "org/m",
                "P": "8",
                "method": "parallel",
                "top_k": 3,
                "pos": "even",
                "device": "cpu",
            }
        }
    }
    # alias parallel -> naive; pos=even is the default and device is not a configuration: neither is in config
    assert run_settings(as_string) == run_settings(as_dict) == ("org/m", "naive", 8, "top_k=3")
    assert parse_model_args("a=1,b=0.5,c=true,d=x") == {"a": 1, "b": 0.5, "c": True, "d": "x"}


def test_settings_from_the_models_own_record():
    """parallel_hf records its resolved settings as config.pce; model_args still win where given."""
    pce = {"P": 4, "method": "sink+sel", "pos": "even", "top_k": 3, "sink_text": None, "entropy": True}
    results = {"config": {"model_args": {"pretrained": "m", "P": 4}, "pce": pce}}
    assert run_settings(results) == ("m", "sink+sel", 4, "top_k=3")


def test_full_method_is_the_full_row_regardless_of_P():
    assert run_settings({"config": {"model_args": {"model_name": "m", "method": "full", "P": 4}}})[1:3] == ("full", 1)
    assert run_settings({"config": {"model_args": {"pretrained": "m"}}})[1:3] == ("full", 1)


def test_choose_score_metric_is_table_driven_and_never_entropy():
    assert choose_score_metric("rag", ["attn_entropy", "subem"], {}) == "subem"
    assert choose_score_metric("ppl", ["attn_entropy", "bits_per_byte", "token_perplexity"], {}) == "token_perplexity"
    assert choose_score_metric("ppl", ["bits_per_byte", "perplexity", "attn_entropy"], {}) == "perplexity"
    assert choose_score_metric("icl", ["score", "exact_match", "attn_entropy"], {}) == "exact_match"
    # unknown family: the first metric listed in higher_is_better, not the first key in results
    assert (
        choose_score_metric("mine", ["attn_entropy", "f1", "acc"], {"attn_entropy": False, "acc": True, "f1": True})
        == "acc"
    )
    assert choose_score_metric("mine", ["attn_entropy"], {}) is None


def test_pearson_matches_statistics():
    xs, ys = [1.0, 2.0, 4.0, 3.5], [0.9, 0.7, 0.1, 0.3]
    assert pearson(xs, ys) == pytest.approx(statistics.correlation(xs, ys))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None
    assert pearson([1, 2], [1, 2]) is None


# ---------------------------------------------------------------------------------------------- board


def test_board_rows_skip_groups_and_keep_direction(sweep_board):
    rows = load_board_json(str(sweep_board / "board.json"))
    assert len(rows) == len(SWEEP) * len(BASE_SCORES)
    assert "pce_all_8k" not in {r.task for r in rows}
    for row in rows:
        assert row.score == pytest.approx(expected_score(row.task, row.method, row.P))
        assert row.attn_entropy == pytest.approx(expected_entropy(row.task, row.method, row.P))
        assert row.higher_is_better == (not is_ppl(row.task))
        assert row.metric != "attn_entropy"
        assert row.config == "dtype=float32"
        assert row.n == (len(PPL_SAMPLES[row.task]) if is_ppl(row.task) else 10)
        if is_ppl(row.task):
            assert row.metric == "perplexity"
            assert row.n_tokens == TOKENS[row.task]
    with open(sweep_board / "board.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert {"model", "method", "P", "config", "task", "length", "score", "attn_entropy", "n"} <= set(csv_rows[0])


def test_readme_table1_layout_and_category_averages(sweep_board):
    readme = (sweep_board / "README.md").read_text()
    for method in ("naive", "sink+sel"):
        table = points_after(readme, f"### Table 1 layout — method `{method}` (score)")
        assert list(table) == ["Full", "P=2", "P=4"]
        assert list(table["Full"]) == ["LM 8k", "ICL 8k", "RAG 8k", "Synthetic 8k"]
        for label, P, m in (("Full", 1, "full"), ("P=2", 2, method), ("P=4", 4, method)):
            assert table[label]["ICL 8k"] == f"{expected_category(ICL, m, P) * 100:.1f}"
            assert table[label]["Synthetic 8k"] == f"{expected_category(SYNTHETIC, m, P) * 100:.1f}"
            assert table[label]["RAG 8k"] == f"{expected_score('pce_rag_nq_8k', m, P) * 100:.1f}"
            assert table[label]["LM 8k"] == f"{expected_pooled_ppl(m, P, TOKENS):.2f}"


def test_readme_method_comparison_at_each_P(sweep_board):
    readme = (sweep_board / "README.md").read_text()
    table = points_after(readme, "#### P=4")
    assert list(table) == ["Full (reference)", "naive", "sink+sel"]
    assert table["naive"]["ICL 8k"] == f"{expected_category(ICL, 'naive', 4) * 100:.1f}"
    assert table["sink+sel"]["ICL 8k"] == f"{expected_category(ICL, 'sink+sel', 4) * 100:.1f}"


def test_readme_pearson_r_per_task_over_naive_configurations_only(sweep_board):
    readme = (sweep_board / "README.md").read_text()
    table = markdown_table_after(readme, "Per task: one point per naive configuration (P) inside the model's window.")
    for task in ICL + ["pce_ppl_pg19_8k"]:
        # the sweep has two naive configurations (P=2, 4): fewer than 3 points is no correlation
        assert table[task]["Pearson r [95 % CI]"] == "– (fewer than 3 naive points, or a constant series)"
        assert table[task]["naive P"] == "2,4"


def test_ppl_pooled_by_samples_without_samples_jsonl(tmp_path):
    results = tmp_path / "results"
    for k, (method, P) in enumerate(SWEEP[:2]):
        scores = {t: expected_score(t, method, P) for t in PPL_SAMPLES}
        write_run(str(results), {"pretrained": MODEL, "P": P, "method": method}, scores, T0 + k, log_samples=False)
    out = tmp_path / "board"
    assert main_leaderboard([str(results), "--out", str(out), "--no-plots"]) == 0
    readme = (out / "README.md").read_text()
    table = points_after(readme, "### Table 1 layout — method `naive` (score)")
    by_samples = expected_pooled_ppl("naive", 2, SAMPLES)
    assert table["P=2"]["LM 8k"] == f"{by_samples:.2f}"
    assert f"{by_samples:.2f}" != f"{expected_pooled_ppl('naive', 2, TOKENS):.2f}"  # the weighting matters here
    assert "number of samples" in readme


def test_newest_result_wins_and_is_reported(tmp_path):
    results = tmp_path / "results"
    args = {"pretrained": MODEL, "P": 2, "method": "naive"}
    old = write_run(str(results), args, {"pce_rag_nq_8k": 0.11}, T0)
    new = write_run(str(results), args, {"pce_rag_nq_8k": 0.44}, T0 + 60)
    out = tmp_path / "board"
    assert main_leaderboard([str(results), "--out", str(out), "--no-plots"]) == 0
    rows = load_board_json(str(out / "board.json"))
    assert [r.score for r in rows] == [0.44]
    assert rows[0].source == new
    readme = (out / "README.md").read_text()
    assert "superseded" in readme and old in readme


def test_configs_never_merge_and_partial_runs_are_flagged(tmp_path):
    results = tmp_path / "results"
    write_run(str(results), {"pretrained": MODEL, "P": 4, "method": "sink+sel"}, {"pce_rag_nq_8k": 0.5}, T0)
    write_run(
        str(results),
        {"pretrained": MODEL, "P": 4, "method": "sink+sel", "top_k": 3},
        {"pce_rag_nq_8k": 0.6},
        T0 + 1,
        limit=5,
    )
    out = tmp_path / "board"
    assert main_leaderboard([str(results), "--out", str(out), "--no-plots"]) == 0
    rows = {r.config: r for r in load_board_json(str(out / "board.json"))}
    assert set(rows) == {"", "top_k=3"}
    assert rows["top_k=3"].score == 0.6 and rows["top_k=3"].partial and rows["top_k=3"].limit == 5
    assert rows[""].score == 0.5 and not rows[""].partial
    readme = (out / "README.md").read_text()
    assert "config `top_k=3`" in readme and "Partial run (limit=5)" in readme
    assert "every results file" not in readme  # one run is complete: the partial one is named

    write_run(
        str(results), {"pretrained": MODEL, "P": 4, "method": "sink+sel"}, {"pce_rag_nq_8k": 0.4}, T0 + 2, limit=5
    )
    assert main_leaderboard([str(results), "--out", str(out), "--no-plots"]) == 0
    readme = (out / "README.md").read_text()
    assert "- Partial run (limit=5): every results file of this board (2)." in readme


def test_full_row_comes_from_the_closest_full_run(tmp_path):
    results = tmp_path / "results"
    write_run(str(results), {"pretrained": MODEL, "method": "full", "dtype": "float32"}, {"pce_rag_nq_8k": 0.7}, T0)
    write_run(
        str(results), {"pretrained": MODEL, "method": "full", "dtype": "bfloat16"}, {"pce_rag_nq_8k": 0.1}, T0 + 1
    )
    write_run(
        str(results),
        {"pretrained": MODEL, "P": 4, "method": "sel", "dtype": "float32", "top_k": 3},
        {"pce_rag_nq_8k": 0.6},
        T0 + 2,
    )
    out = tmp_path / "board"
    assert main_leaderboard([str(results), "--out", str(out), "--no-plots"]) == 0
    readme = (out / "README.md").read_text()
    section = readme[readme.index("config `dtype=float32,top_k=3`") :]
    table = points_after(section, "### Table 1 layout — method `sel` (score)")
    assert table == {"Full": {"RAG 8k": "70.0"}, "P=4": {"RAG 8k": "60.0"}}


def test_full_attention_only_board_still_has_table1(tmp_path):
    results = tmp_path / "results"
    write_run(str(results), {"pretrained": MODEL, "dtype": "float32"}, {t: BASE_SCORES[t] for t in ICL}, T0)
    out = tmp_path / "board"
    assert main_leaderboard([str(results), "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    table = points_after(readme, "### Table 1 layout — method `full` (score)")
    assert table == {"Full": {"ICL 8k": f"{expected_category(ICL, 'full', 1) * 100:.1f}"}}
    assert "Pearson r" not in readme  # no naive configuration: no correlation


def test_plots_are_written(sweep_board):
    plots = sorted(os.listdir(sweep_board / "plots"))
    assert plots == sorted(
        f"{kind}_{MODEL}_dtype_float32.png" for kind in ("score_vs_P", "entropy_vs_P", "entropy_vs_score")
    )
    for name in plots:
        assert (sweep_board / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in (sweep_board / "README.md").read_text()


def test_leaderboard_without_results_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main_leaderboard([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no lm-eval results" in capsys.readouterr().err
    assert main_leaderboard([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert main_leaderboard([]) == 2
