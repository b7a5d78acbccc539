"""Regression gate (`lm-eval-parallel check`) on synthetic results files."""
from __future__ import annotations

import json

import pytest

from lm_eval_parallel.leaderboard import compare, is_regression, load_board_json, main_check, main_leaderboard
from test_leaderboard import BASE_SCORES, SWEEP, T0, is_ppl, write_run, write_sweep


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
            return score - 0.03           # beyond the 0.02 tolerance
        if (task, method, P) == ("pce_icl_trec_8k", "sink+sel", 4):
            return score - 0.01           # within tolerance
        if (task, method, P) == ("pce_ppl_pg19_8k", "naive", 4):
            return score * 1.03           # perplexity up 3% > 2%
        if (task, method, P) == ("pce_ppl_proof_pile_8k", "full", 1):
            return score * 1.01           # perplexity up 1%: fine
        if task == "pce_json_kv_8k":
            return score + 0.2            # improvements never fail
        return score

    assert main_check([new_run(tmp_path, change), "--baseline", baseline, "--tolerance", "0.02"]) == 1
    lines = regression_lines(capsys.readouterr().out)
    assert len(lines) == 2
    assert any("pce_rag_nq_8k" in line and "method=naive, P=2" in line for line in lines)
    assert any("pce_ppl_pg19_8k" in line and "method=naive, P=4" in line and "lower is better" in line for line in lines)
    # a looser tolerance lets both through
    assert main_check([str(tmp_path / "new_results"), "--baseline", baseline, "--tolerance", "0.05"]) == 0


def test_missing_configs_warn_unless_require_all(tmp_path, baseline, capsys):
    folder = new_run(tmp_path, sweep=SWEEP[:2])
    assert main_check([folder, "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    missing = [line for line in out.splitlines() if line.startswith("MISSING")]
    assert len(missing) == (len(SWEEP) - 2) * len(BASE_SCORES)
    assert main_check([folder, "--baseline", baseline, "--require-all"]) == 1


def test_new_board_json_can_be_checked(tmp_path, baseline):
    out = tmp_path / "new_board"
    assert main_leaderboard([new_run(tmp_path, lambda t, m, P, s: s - 0.05 if not is_ppl(t) else s), "--out",
                             str(out), "--no-plots"]) == 0
    assert main_check([str(out / "board.json"), "--baseline", baseline]) == 1


def test_no_overlap_and_usage_errors_exit_2(tmp_path, baseline, capsys):
    other = tmp_path / "other"
    write_run(str(other), {"pretrained": "another-model", "P": 2, "method": "naive"}, {"pce_rag_nq_8k": 0.5}, T0)
    assert main_check([str(other), "--baseline", baseline]) == 2
    assert "no (model, method, P, config, task) in common" in capsys.readouterr().err
    assert main_check([str(other), "--baseline", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "empty").mkdir()
    assert main_check([str(tmp_path / "empty"), "--baseline", baseline]) == 2
    assert main_check([str(other)]) == 2                      # --baseline is required
    assert main_check([str(other), "--baseline", baseline, "--tolerance", "-1"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": "else"}))
    assert main_check([str(other), "--baseline", str(bad)]) == 2


def test_compare_uses_the_baseline_direction_and_config(baseline):
    rows = load_board_json(baseline)
    shifted = [type(r)(**{**r.__dict__, "config": "top_k=3"}) for r in rows]
    assert compare(rows, shifted, 0.02).compared == []   # other config: never compared silently
    worse = [type(r)(**{**r.__dict__, "score": r.score * 2}) for r in rows]
    result = compare(rows, worse, 0.02)
    # doubling helps accuracy-like scores and hurts perplexities
    assert {c.key[4] for c in result.regressions} == {t for t in BASE_SCORES if is_ppl(t)}
