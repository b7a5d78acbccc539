"""Regression gate (`lm-eval-parallel check`) on synthetic results files."""

from __future__ import annotations

import json
import math

import pytest
from test_leaderboard import BASE_SCORES, MODEL, SWEEP, T0, is_ppl, write_run, write_sweep

from lm_eval_parallel.leaderboard import compare, is_regression, load_board_json, main_check, main_leaderboard, stats


@pytest.fixture
def baseline(tmp_path):
    """board.json of the standard sweep."""
    write_sweep(str(tmp_path / "baseline_results"))
    out = tmp_path / "leaderboards" / "tiny"
    assert main_leaderboard([str(tmp_path / "baseline_results"), "--out", str(out), "--no-plots"]) == 0
    return str(out / "board.json")


def new_run(tmp_path, change=None, **kw) -> str:
    folder = tmp_path / "new_results"
    write_sweep(str(folder), date=T0 + 1000, change=change, **kw)
    return str(folder)


def regression_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("REGRESSION")]


def test_is_regression_absolute_and_relative():
    assert is_regression(0.50, 0.47, higher_is_better=True, tolerance=0.02)
    assert not is_regression(0.50, 0.49, higher_is_better=True, tolerance=0.02)
    assert not is_regression(0.50, 0.60, higher_is_better=True, tolerance=0.02)
    # perplexity: relative tolerance, higher is worse
    assert is_regression(10.0, 10.3, higher_is_better=False, tolerance=0.02)
    assert not is_regression(10.0, 10.1, higher_is_better=False, tolerance=0.02)
    assert not is_regression(10.0, 8.0, higher_is_better=False, tolerance=0.02)


def test_identical_run_passes(tmp_path, baseline, capsys):
    assert main_check([new_run(tmp_path), "--baseline", baseline, "--tolerance", "0.02"]) == 0
    out = capsys.readouterr().out
    assert regression_lines(out) == []
    assert f"{len(SWEEP) * len(BASE_SCORES)} compared, 0 regressed" in out


def test_regressions_are_named_and_fail(tmp_path, baseline, capsys):
    def change(task, method, P, score):
        if (task, method, P) == ("pce_rag_nq_8k", "naive", 2):
            return score - 0.03  # beyond the 0.02 tolerance
        if (task, method, P) == ("pce_icl_trec_8k", "sink+sel", 4):
            return score - 0.01  # within tolerance
        if (task, method, P) == ("pce_ppl_pg19_8k", "naive", 4):
            return score * 1.03  # perplexity up 3% > 2%
        if (task, method, P) == ("pce_ppl_proof_pile_8k", "full", 1):
            return score * 1.01  # perplexity up 1%: fine
        if task == "pce_json_kv_8k":
            return score + 0.2  # improvements never fail
        return score

    assert main_check([new_run(tmp_path, change), "--baseline", baseline, "--tolerance", "0.02"]) == 1
    lines = regression_lines(capsys.readouterr().out)
    assert len(lines) == 2
    assert any("pce_rag_nq_8k" in line and "method=naive, P=2" in line for line in lines)
    assert any(
        "pce_ppl_pg19_8k" in line and "method=naive, P=4" in line and "lower is better" in line for line in lines
    )
    # a looser tolerance lets both through
    assert main_check([str(tmp_path / "new_results"), "--baseline", baseline, "--tolerance", "0.05"]) == 0


def test_missing_configs_warn_unless_require_all(tmp_path, baseline, capsys):
    """Configurations the run did not run are one summary line, not gated; --require-all fails on them."""
    folder = new_run(tmp_path, sweep=SWEEP[:2])
    assert main_check([folder, "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("MISSING")] == []
    absent = [line for line in out.splitlines() if "baseline configuration(s) not in this run" in line]
    n_tasks = len(BASE_SCORES)
    assert absent == [
        f"check: {len(SWEEP) - 2} baseline configuration(s) not in this run, not gated (--require-all "
        f"fails on them): {MODEL} method=naive P=4 dtype=float32 ({n_tasks} tasks); {MODEL} "
        f"method=sink+sel P=2 dtype=float32 ({n_tasks} tasks); {MODEL} method=sink+sel P=4 "
        f"dtype=float32 ({n_tasks} tasks)"
    ]
    assert (
        f"{2 * n_tasks} compared, 0 regressed, {2 * n_tasks} passed, 0 missing from the new run, 3 baseline "
        f"configuration(s) not run" in out
    )
    assert main_check([folder, "--baseline", baseline, "--require-all"]) == 1
    assert f"--require-all: {3 * n_tasks} baseline row(s) not in the new run" in capsys.readouterr().err


def test_a_task_missing_from_a_configuration_of_the_run_is_named(tmp_path, baseline, capsys):
    tasks = {t: v for t, v in BASE_SCORES.items() if t != "pce_rag_nq_8k"}
    folder = new_run(tmp_path, tasks=tasks)
    assert main_check([folder, "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    missing = [line for line in out.splitlines() if line.startswith("MISSING")]
    assert len(missing) == len(SWEEP) and all(line.startswith("MISSING pce_rag_nq_8k [") for line in missing)
    assert "not in this run" not in out
    assert main_check([folder, "--baseline", baseline, "--require-all"]) == 1


def test_new_board_json_can_be_checked(tmp_path, baseline):
    out = tmp_path / "new_board"
    assert (
        main_leaderboard(
            [new_run(tmp_path, lambda t, m, P, s: s - 0.05 if not is_ppl(t) else s), "--out", str(out), "--no-plots"]
        )
        == 0
    )
    assert main_check([str(out / "board.json"), "--baseline", baseline]) == 1


def test_no_overlap_and_usage_errors_exit_2(tmp_path, baseline, capsys):
    other = tmp_path / "other"
    write_run(str(other), {"pretrained": "another-model", "P": 2, "method": "naive"}, {"pce_rag_nq_8k": 0.5}, T0)
    assert main_check([str(other), "--baseline", baseline]) == 2
    assert "no (model, method, P, config, task) in common" in capsys.readouterr().err
    assert main_check([str(other), "--baseline", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "empty").mkdir()
    assert main_check([str(tmp_path / "empty"), "--baseline", baseline]) == 2
    assert main_check([str(other)]) == 2  # --baseline is required
    assert main_check([str(other), "--baseline", baseline, "--tolerance", "-1"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": "else"}))
    assert main_check([str(other), "--baseline", str(bad)]) == 2


def test_compare_uses_the_baseline_direction_and_config(baseline):
    rows = load_board_json(baseline)
    shifted = [type(r)(**{**r.__dict__, "config": "top_k=3"}) for r in rows]
    assert compare(rows, shifted, 0.02).compared == []  # other config: never compared silently
    worse = [type(r)(**{**r.__dict__, "score": r.score * 2}) for r in rows]
    result = compare(rows, worse, 0.02)
    # doubling helps accuracy-like scores and hurts perplexities
    assert {c.key[4] for c in result.regressions} == {t for t in BASE_SCORES if is_ppl(t)}


# ---------------------------------------------------------------------------------------------- per-document results

NQ, PG19 = "pce_rag_nq_8k", "pce_ppl_pg19_8k"
NQ_BASELINE = [1] * 30 + [0] * 10  # 30 of 40 right
PG19_TOKENS = [100] * 10
PG19_LOSS = [2.0] * 10  # nats per token of each document


def write_documents(root, nq: list[int], pg19_loss: list[float], date: float, log_samples=True) -> str:
    """One naive P=2 run whose samples JSONL holds the given per-document outcomes (NQ) and losses (PG19)."""
    from lm_eval_parallel.leaderboard.reader import samples_file_for

    ll = [-loss * tokens for loss, tokens in zip(pg19_loss, PG19_TOKENS)]
    scores = {NQ: sum(nq) / len(nq), PG19: math.exp(-sum(ll) / sum(PG19_TOKENS))}
    path = write_run(
        str(root),
        {"pretrained": MODEL, "P": 2, "method": "naive", "dtype": "float32"},
        scores,
        date,
        log_samples=log_samples,
    )
    if log_samples:
        for task, values in ((NQ, nq), (PG19, [[v, t] for v, t in zip(ll, PG19_TOKENS)])):
            metric = "substring_exact_match" if task == NQ else "perplexity"
            with open(samples_file_for(path, task), "w") as f:
                f.writelines(
                    json.dumps({"doc_id": i, "filter": "none", metric: v}) + "\n" for i, v in enumerate(values)
                )
    return str(root)


def board_of(tmp_path, name: str, folder: str) -> str:
    out = tmp_path / name
    assert main_leaderboard([folder, "--out", str(out), "--no-plots"]) == 0
    return str(out / "board.json")


def binomial_two_sided(b: int, c: int) -> float:
    return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))


def test_a_drop_inside_the_baseline_interval_passes(tmp_path, capsys):
    baseline = board_of(tmp_path, "base", write_documents(tmp_path / "base_run", NQ_BASELINE, PG19_LOSS, T0))
    # one document flips (-0.025 > 0.02) and PG19 moves +2.5 % through noise: both beyond the tolerance
    nq = [0] + NQ_BASELINE[1:]
    loss = [2.0 + (0.3 if i % 2 else -0.25) for i in range(10)]
    assert math.exp(sum(loss) / 10 - 2.0) > 1.02
    new = write_documents(tmp_path / "new_run", nq, loss, T0 + 10)
    assert main_check([new, "--baseline", baseline, "--tolerance", "0.02"]) == 0
    out = capsys.readouterr().out
    assert regression_lines(out) == []
    assert "2 row(s) judged by a paired test" in out
    assert "2 beyond the tolerance but within the baseline's interval" in out
    # the fixed tolerance alone would fail both
    assert main_check([new, "--baseline", baseline, "--tolerance", "0.02", "--tolerance-only"]) == 1
    assert len(regression_lines(capsys.readouterr().out)) == 2


def test_a_drop_outside_the_baseline_interval_fails(tmp_path, capsys):
    baseline = board_of(tmp_path, "base", write_documents(tmp_path / "base_run", NQ_BASELINE, PG19_LOSS, T0))
    nq = [0] * 12 + NQ_BASELINE[12:]  # 12 right answers lost, none gained
    loss = [2.05] * 10  # every document 0.05 nats per token worse: PPL +5.1 %
    new = write_documents(tmp_path / "new_run", nq, loss, T0 + 10)
    assert main_check([new, "--baseline", baseline, "--tolerance", "0.02"]) == 1
    lines = regression_lines(capsys.readouterr().out)
    assert len(lines) == 2
    (nq_line,) = [line for line in lines if NQ in line]
    p_nq = binomial_two_sided(12, 0)
    # Holm over 2 tests: PG19's p is 0 (every resample is worse), so NQ's adjusted p is its own
    assert f"exact McNemar on 40 documents p={p_nq:.3g}, Holm p={p_nq:.3g}" in nq_line
    low, high = (float(v) for v in stats.wilson_interval(30, 40))
    assert f"baseline 95% interval [{low:.4f}, {high:.4f}]" in nq_line
    (ppl_line,) = [line for line in lines if PG19 in line]
    assert "paired bootstrap on 10 documents p=0" in ppl_line and "lower is better" in ppl_line
    # a stricter alpha still fails them; a tolerance above both drops lets them through
    assert main_check([new, "--baseline", baseline, "--alpha", "0.001"]) == 1
    assert main_check([new, "--baseline", baseline, "--tolerance", "0.31"]) == 0


def test_without_per_document_results_the_tolerance_decides_and_says_so(tmp_path, capsys):
    baseline = board_of(
        tmp_path, "base", write_documents(tmp_path / "base_run", NQ_BASELINE, PG19_LOSS, T0, log_samples=False)
    )
    new = write_documents(tmp_path / "new_run", [0] + NQ_BASELINE[1:], PG19_LOSS, T0 + 10)
    assert main_check([new, "--baseline", baseline, "--tolerance", "0.02"]) == 1
    out = capsys.readouterr().out
    (line,) = regression_lines(out)
    assert NQ in line and "tolerance only (no per-document results in the baseline)" in line
    assert "2 row(s) judged by the fixed tolerance alone (2 rows: no per-document results in the baseline)" in out


def test_documents_must_match_and_alpha_is_checked(tmp_path, capsys):
    baseline = board_of(tmp_path, "base", write_documents(tmp_path / "base_run", NQ_BASELINE, PG19_LOSS, T0))
    new = write_documents(tmp_path / "new_run", [1] * 20 + [0] * 10, PG19_LOSS[:9], T0 + 10)  # 30 documents, 0.67
    assert main_check([new, "--baseline", baseline]) == 1
    assert "documents differ (40 in the baseline, 30 in the new run)" in capsys.readouterr().out
    assert main_check([new, "--baseline", baseline, "--alpha", "1.5"]) == 2
    assert "--alpha must be between 0 and 1, got 1.5" in capsys.readouterr().err
