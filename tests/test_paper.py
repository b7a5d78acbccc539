"""`lm-eval-parallel paper`: the Table 1 / Table 2 recipe and the side-by-side comparison with a reference.

The reference CSVs here have the paper's columns and rows but made-up numbers. The runs are lm-eval-shaped
results files (and samples files) written here, with per-document outcomes from simple formulas, so every
expected cell, Δ and Wilson interval is recomputed independently (statsmodels for Wilson); bootstrap cells
are checked against `leaderboard.stats` on the same per-document values (the bootstrap itself is tested in
test_stats.py).
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import shlex

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from lm_eval_parallel.leaderboard import main_leaderboard, paper, samples, stats
from lm_eval_parallel.sweep import build_parser as sweep_parser

MODEL = "tiny-model"
N = 10  # documents per subtask
T0 = 1_750_000_000.0
TABLE1_HEADER = (
    "config,LM_4k,LM_8k,LM_16k,ICL_4k,ICL_8k,ICL_16k,RAG_4k,RAG_8k,RAG_16k,Synthetic_4k,Synthetic_8k,Synthetic_16k"
)
FAKE_TABLE1 = f"""# made-up numbers in the layout of the paper's Table 1
# LM = perplexity; the rest in %
{TABLE1_HEADER}
full,6.00,5.00,,50.00,40.00,,30.00,,,20.00,,
P=2,7.00,,,45.00,35.00,,25.00,,,15.00,,
P=4,8.00,,,40.00,,,20.00,,,10.00,,1.00
"""
METRIC = {"icl": "exact_match", "rag": "subem", "ruler": "ruler_recall", "json": "subem", "ppl": "perplexity"}
BASE_K = {
    "trec_coarse": 9,
    "trec_fine": 7,
    "banking77": 6,
    "clinc150": 5,
    "nlu": 8,
    "nq": 7,
    "triviaqa": 6,
    "hotpotqa": 5,
    "mk2": 10,
    "mk3": 8,
    "mv": 9,
    "json_kv": 6,
}
TOKENS = [100, 200, 300, 150, 250, 120, 180, 220, 260, 90]


def family(task: str) -> str:
    return task.split("_")[1]


def variant(task: str) -> str:
    return task.removeprefix("pce_").removeprefix("icl_").removeprefix("rag_").removeprefix("ruler_").rsplit("_", 1)[0]


def outcomes(task: str, P: int, shift: int = 0) -> list[float]:
    """Per-document scores: the first k documents right (0/1), RULER-MV a recall in quarters."""
    k = max(BASE_K[variant(task)] - int(math.log2(P)) - shift, 0)
    if variant(task) == "mv":
        return [min(1.0, max(0.0, (k - i) / 4)) for i in range(N)]
    return [1.0 if i < k else 0.0 for i in range(N)]


def documents(task: str, P: int) -> list[tuple[float, int]]:
    """Per-document (loglikelihood, tokens) of a perplexity task."""
    base = 1.5 if "pg19" in task else 1.0
    return [(-n * (base + 0.02 * i + 0.1 * math.log2(P)), n) for i, n in enumerate(TOKENS)]


def task_score(task: str, P: int, shift: int = 0) -> float:
    if family(task) == "ppl":
        docs = documents(task, P)
        return math.exp(-sum(ll for ll, _ in docs) / sum(n for _, n in docs))
    return float(np.mean(outcomes(task, P, shift)))


def write_run(
    root, method: str, P: int, tasks: list[str], date: float, log_samples: bool, shift: int = 0, **settings
) -> str:
    date_id = datetime.datetime.fromtimestamp(date).isoformat().replace(":", "-")
    folder = os.path.join(root, f"P{P}_{method}" + "".join(f"_{k}{v}" for k, v in settings.items()))
    os.makedirs(folder, exist_ok=True)
    results, higher, n_samples = {}, {}, {}
    for task in tasks:
        metric = METRIC[family(task)]
        higher[task] = {metric: family(task) != "ppl", "attn_entropy": False}
        n_samples[task] = {"original": 100, "effective": N}
        results[task] = {
            "alias": task,
            f"{metric},none": task_score(task, P, shift),
            f"{metric}_stderr,none": "N/A",
            "attn_entropy,none": 2.0,
            "attn_entropy_stderr,none": 0.01,
        }
        if not log_samples:
            continue
        with open(os.path.join(folder, f"samples_{task}_{date_id}.jsonl"), "w") as f:
            for doc in reversed(range(N)):
                if family(task) == "ppl":
                    ll, n = documents(task, P)[doc]
                    values = {"perplexity": [ll, n], "bits_per_byte": [ll, 4 * n], "attn_entropy": 2.0}
                else:
                    value = outcomes(task, P, shift)[doc]
                    values = {metric: value, "score": value, "attn_entropy": 2.0}
                f.write(
                    json.dumps({"doc_id": doc, "doc": {}, "filter": "none", "metrics": list(values), **values}) + "\n"
                )
    model_args = {"pretrained": MODEL, "dtype": "float32", "P": P, "method": method, **settings}
    payload = {
        "results": results,
        "group_subtasks": {},
        "configs": {},
        "higher_is_better": higher,
        "n-samples": n_samples,
        "date": date,
        "config": {"model": "parallel_hf", "model_args": model_args, "limit": None},
    }
    path = os.path.join(folder, f"results_{date_id}.json")
    with open(path, "w") as f:
        json.dump(payload, f)
    return path


TASKS_4K = [t for c in ("LM", "ICL", "RAG", "Synthetic") for t in paper.paper_tasks(c, "4k") if t != "pce_rag_popqa_4k"]
ICL_8K = paper.paper_tasks("ICL", "8k")


@pytest.fixture(scope="module")
def table1_runs(tmp_path_factory):
    """full, naive P=2 and P=4 at 4k with samples (raw; compacted; compacted and raw removed); ICL at 8k
    without samples; and a pos=serial run that Table 1 must leave out."""
    root = tmp_path_factory.mktemp("paper") / "runs"
    for i, (method, P) in enumerate([("full", 1), ("naive", 2), ("naive", 4)]):
        write_run(str(root / "4k"), method, P, TASKS_4K, T0 + i, log_samples=True)
        write_run(str(root / "8k"), method, P, ICL_8K, T0 + 10 + i, log_samples=False)
    write_run(str(root / "4k"), "naive", 2, TASKS_4K, T0 + 20, log_samples=True, shift=3, pos="serial")
    samples.compact_folder(str(root / "4k" / "P2_naive"))
    samples.compact_folder(str(root / "4k" / "P4_naive"), delete_raw=True)
    reference = root.parent / "table1.csv"
    reference.write_text(FAKE_TABLE1)
    return root, str(reference)


def expected_cell(category: str, length: str, P: int):
    tasks = [t for t in paper.paper_tasks(category, length) if t in (TASKS_4K if length == "4k" else ICL_8K)]
    if category == "LM":
        return float(np.mean([task_score(t, P) for t in tasks])), tasks
    return 100 * float(np.mean([task_score(t, P) for t in tasks])), tasks


def test_table1_cells_deltas_and_intervals(table1_runs):
    root, reference = table1_runs
    out = io.StringIO()
    result = paper.compare(str(root), reference, file=out)
    assert result.model == MODEL and result.config == "dtype=float32"
    cells = {(c.row, c.category, c.length): c for c in result.cells}
    assert len(cells) == 16  # the non-empty cells of the reference
    paper_numbers = {
        ("full", "ICL", "4k"): 50.0,
        ("P=2", "ICL", "4k"): 45.0,
        ("P=4", "RAG", "4k"): 20.0,
        ("full", "LM", "4k"): 6.0,
        ("P=4", "Synthetic", "4k"): 10.0,
        ("full", "ICL", "8k"): 40.0,
    }
    for (row, category, length), number in paper_numbers.items():
        P = 1 if row == "full" else int(row[2:])
        ours, tasks = expected_cell(category, length, P)
        cell = cells[row, category, length]
        assert cell.paper == number and cell.tasks == tuple(tasks)
        assert cell.ours == pytest.approx(ours, rel=1e-12)
        assert cell.delta == pytest.approx(ours - number, rel=1e-12)
        assert cell.low <= cell.ours <= cell.high and cell.low < cell.high
        assert cell.paper_inside == (cell.low <= number <= cell.high)

    # 4k, every subtask with per-document results: the stratified bootstrap of leaderboard.stats
    icl = cells["P=2", "ICL", "4k"]
    want = stats.bootstrap_category_mean([outcomes(t, 2) for t in icl.tasks])
    assert icl.interval == "bootstrap" and (icl.low, icl.high) == pytest.approx((100 * want.low, 100 * want.high))
    lm = cells["P=4", "LM", "4k"]  # read from the compact files (the raw ones were removed)
    want = stats.bootstrap_macro_perplexity([tuple(np.array(documents(t, 4)).T) for t in lm.tasks])
    assert lm.interval == "bootstrap" and (lm.low, lm.high) == pytest.approx((want.low, want.high))
    # 8k, no samples: Wilson over the documents pooled over the five subtasks
    icl8 = cells["full", "ICL", "8k"]
    k = sum(BASE_K[variant(t)] for t in ICL_8K)
    low, high = proportion_confint(k, 5 * N, alpha=0.05, method="wilson")
    assert icl8.interval == "wilson" and (icl8.low, icl8.high) == pytest.approx((100 * low, 100 * high), abs=1e-9)
    # popqa has no run, triviaqa has: RAG is 3 of the paper's 4 subtasks
    assert cells["full", "RAG", "4k"].tasks == ("pce_rag_nq_4k", "pce_rag_triviaqa_4k", "pce_rag_hotpotqa_4k")
    # cells without a run of ours
    for key in [("full", "LM", "8k"), ("P=4", "Synthetic", "16k")]:
        missing = cells[key]
        assert missing.ours is None and missing.delta is None and missing.interval == "" and missing.tasks == ()
    assert cells["P=2", "ICL", "8k"].ours == pytest.approx(expected_cell("ICL", "8k", 2)[0])

    text = out.getvalue()
    assert text.startswith(f"Reference: {reference}\n  made-up numbers in the layout of the paper's Table 1\n")
    assert "Ours: tiny-model (dtype=float32)" in text
    line = next(line for line in text.splitlines() if line.startswith("| P=2 | ICL | 4k |"))
    assert f"| {icl.ours:.2f} | [{icl.low:.2f}, {icl.high:.2f}] bootstrap | 45.00 | {icl.delta:+.2f} |" in line
    assert "| 3/4 (no rag_popqa) |" in next(line for line in text.splitlines() if line.startswith("| full | RAG | 4k"))
    assert "| full | LM | 8k | – | – | 5.00 | – | – | 0/2 (no ppl_pg19, ppl_proof_pile) |" in text


def test_the_serial_ablation_is_not_table1(table1_runs):
    root, reference = table1_runs
    cell = next(
        c
        for c in paper.compare(str(root), reference, file=None).cells
        if (c.row, c.category, c.length) == ("P=2", "ICL", "4k")
    )
    assert cell.ours == pytest.approx(expected_cell("ICL", "4k", 2)[0])  # not the shifted pos=serial scores


def test_a_board_json_gives_the_same_cells(table1_runs, tmp_path):
    root, reference = table1_runs
    board = tmp_path / "board"
    assert main_leaderboard([str(root), "--out", str(board), "--no-plots"]) == 0
    from_board = paper.compare(str(board / "board.json"), reference, file=None).cells
    assert from_board == paper.compare(str(root), reference, file=None).cells


def test_cli_compare_prints_and_writes_csv(table1_runs, tmp_path, capsys):
    root, reference = table1_runs
    out_csv = tmp_path / "cells.csv"
    assert paper.main(["compare", str(root), "--reference", reference, "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n| ") == 1 + 16  # header + one line per reference cell
    lines = out_csv.read_text().splitlines()
    assert lines[0] == ",".join(paper.CSV_COLUMNS) and len(lines) == 1 + 16


FAKE_TABLE2 = """# made-up numbers in the layout of the paper's Table 2
setting,ICL,RAG,Synthetic
TopK=1,10.00,20.00,30.00
TopK=2,11.00,21.00,31.00
TopK=10,12.00,,
Aggr=none,13.00,23.00,33.00
Aggr=HT,14.00,24.00,34.00
"""
GEN_8K = [t for c in paper.TABLE2_CATEGORIES for t in paper.paper_tasks(c, "8k", offline=True)]


def test_table2_cells_use_the_papers_top_k_per_row(tmp_path):
    root = tmp_path / "runs"
    # shift tells the runs apart: (top_k, aggr) -> shift of every score
    runs = {(2, "auto"): 0, (1, "HT"): 1, (5, "HT"): 2, (5, "none"): 3, (2, "none"): 4}
    for i, ((top_k, aggr), shift) in enumerate(runs.items()):
        settings = {} if aggr == "auto" else {"top_k": top_k, "aggr": aggr}
        write_run(str(root), "sel", 64, GEN_8K, T0 + i, log_samples=False, shift=shift, **settings)
    write_run(str(root), "sink+sel", 64, GEN_8K, T0 + 10, log_samples=False, shift=5)  # another method
    reference = tmp_path / "table2.csv"
    reference.write_text(FAKE_TABLE2)
    cells = {(c.row, c.category): c for c in paper.compare(str(root), str(reference), file=None).cells}
    expect = {
        ("TopK=1", "ICL"): 1,
        ("TopK=2", "RAG"): 0,
        ("Aggr=none", "ICL"): 3,
        ("Aggr=none", "Synthetic"): 4,
        ("Aggr=HT", "ICL"): 2,
        ("Aggr=HT", "Synthetic"): 0,
    }  # Aggr rows: TopK=5 for ICL/RAG, 2 for Synthetic
    for (row, category), shift in expect.items():
        tasks = paper.paper_tasks(category, "8k", offline=True)
        k = sum(round(N * task_score(t, 64, shift)) for t in tasks)
        cell = cells[row, category]
        assert cell.length == "8k" and cell.tasks == tuple(tasks)
        assert cell.ours == pytest.approx(100 * np.mean([task_score(t, 64, shift) for t in tasks]), rel=1e-12)
        if category != "Synthetic":  # Synthetic: RULER-MV's fractional recall makes k a non-integer
            low, high = proportion_confint(k, N * len(tasks), alpha=0.05, method="wilson")
            assert (cell.low, cell.high) == pytest.approx((100 * low, 100 * high), abs=1e-9)
    assert cells["TopK=10", "ICL"].ours is None  # no top_k=10 run
    # a newer explicit top_k=2, aggr=HT run is the same computation as aggr=auto: it replaces it
    write_run(str(root), "sel", 64, GEN_8K, T0 + 20, log_samples=False, shift=6, top_k=2, aggr="HT")
    cells = {(c.row, c.category): c for c in paper.compare(str(root), str(reference), file=None).cells}
    tasks = paper.paper_tasks("RAG", "8k", offline=True)
    assert cells["TopK=2", "RAG"].ours == pytest.approx(100 * np.mean([task_score(t, 64, 6) for t in tasks]))


# ---------------------------------------------------------------------------------------------- the recipe


def parse(command: list[str]):
    assert command[:2] == ["lm-eval-parallel", "sweep"]
    return sweep_parser().parse_args(command[2:])


def test_recipe_is_the_table1_grid_as_sweep_commands():
    commands = paper.recipe("meta-llama/Llama-3.1-8B", "runs/llama", model_args="dtype=bfloat16", device="cuda")
    assert len(commands) == 3
    for command, length in zip(commands, ("4k", "8k", "16k")):
        args = parse(command)
        assert args.model_args == {"pretrained": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16"}
        assert args.P == "2,4,8,16,32,64" and args.methods == "full,naive" and args.log_samples
        assert args.output_path == f"runs/llama/table1_{length}" and args.device == "cuda" and args.limit is None
        tasks = args.tasks
        assert len(tasks) == 15 and all(t.endswith("_" + length) for t in tasks)
        assert {t.rsplit("_", 1)[0] for t in tasks} == {s for stems in paper.PAPER_TASKS.values() for s in stems}
    offline = paper.recipe("m", "out", lengths=["8k"], offline=True)
    tasks = parse(offline[0]).tasks
    assert len(tasks) == 13 and not any("triviaqa" in t or "popqa" in t for t in tasks)


def test_recipe_table2_covers_every_cell_once():
    commands = paper.recipe("m", "out", lengths=["8k"], table2=True, offline=True)[1:]
    runs = {}
    for command in commands:
        args = parse(command)
        items = args.model_args
        assert args.P == "64" and args.methods == "sel" and items["pretrained"] == "m"
        runs[items["top_k"], items["aggr"]] = args.tasks
    assert len(runs) == len(commands) == 10
    for row, top_k, aggr in paper.TABLE2_ROWS:
        for category in paper.TABLE2_CATEGORIES:
            assert set(paper.paper_tasks(category, "8k", offline=True)) <= set(runs[top_k[category], aggr]), row


def test_recipe_cli_prints_shell_lines_and_runs_them(tmp_path, capsys, monkeypatch):
    assert paper.main(["recipe", "--pretrained", "m", "--out", str(tmp_path / "o"), "--lengths", "4k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and parse(shlex.split(lines[0])).tasks[-1] == "pce_json_kv_4k"
    assert lines[1] == f"lm-eval-parallel compact-samples {tmp_path / 'o'}"

    calls = []

    def fake_sweep(argv):  # stands in for a model run: one raw samples file per sweep
        calls.append(argv)
        folder = os.path.join(argv[argv.index("--output_path") + 1], "P1_full")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "samples_pce_rag_nq_4k_D.jsonl"), "w") as f:
            f.write(json.dumps({"doc_id": 0, "metrics": ["subem"], "subem": 1.0}) + "\n")
        return 0

    monkeypatch.setattr("lm_eval_parallel.sweep.main_sweep", fake_sweep)
    argv = [
        "recipe",
        "--pretrained",
        "m",
        "--out",
        str(tmp_path / "o"),
        "--lengths",
        "4k,8k",
        "--limit",
        "2",
        "--run",
        "--delete_raw",
    ]
    assert paper.main(argv) == 0
    assert [parse(["lm-eval-parallel", "sweep", *c]).limit for c in calls] == [2.0, 2.0]
    assert sorted(os.listdir(tmp_path / "o" / "table1_8k" / "P1_full")) == ["samples_pce_rag_nq_4k_D.jsonl.gz"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["recipe", "--pretrained", "m", "--out", "o", "--lengths", "2k"], "--lengths '2k': expected some of 4k"),
        (["recipe", "--pretrained", "a,b", "--out", "o"], "--pretrained 'a,b'"),
        (["recipe", "--pretrained", "m", "--out", "o", "--model_args", "P=4"], "P is set by the recipe"),
        (["recipe", "--pretrained", "m", "--out", "o", "--limit", "0"], "--limit 0"),
        (["compare", "RUNS", "--reference", "missing.csv"], "--reference missing.csv: no such file"),
        (["compare", "nowhere", "--reference", "REF"], "no such file or directory: nowhere"),
        (["compare", "RUNS", "--reference", "BAD"], "column 'ICL_2k' is not <category>_<length>"),
        (["compare", "RUNS", "--reference", "BADROW"], "Table 1 row 'P=1': expected 'full' or 'P=<n>'"),
        (["compare", "RUNS", "--reference", "REF", "--model", "other"], "model 'other' is not in the results"),
        (
            ["compare", "RUNS", "--reference", "REF", "--config", "dtype=bfloat16"],
            "no runs with config 'dtype=bfloat16'",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    write_run(str(tmp_path / "runs"), "full", 1, ICL_8K, T0, log_samples=False)
    (tmp_path / "ref.csv").write_text(FAKE_TABLE1)
    (tmp_path / "bad.csv").write_text("config,ICL_2k\nfull,1\n")
    (tmp_path / "badrow.csv").write_text("config,ICL_8k\nP=1,1\n")
    names = {
        "RUNS": "runs",
        "REF": "ref.csv",
        "BAD": "bad.csv",
        "BADROW": "badrow.csv",
        "missing.csv": "missing.csv",
        "nowhere": "nowhere",
    }
    argv = [str(tmp_path / names[a]) if a in names else a for a in argv]
    assert paper.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and message.replace("missing.csv", str(tmp_path / "missing.csv")).replace("nowhere", str(tmp_path / "nowhere"))
        in err
    )


def test_several_models_need_a_choice(tmp_path, capsys):
    write_run(str(tmp_path / "a"), "full", 1, ICL_8K, T0, log_samples=False)
    path = write_run(str(tmp_path / "b"), "full", 1, ICL_8K, T0 + 1, log_samples=False)
    with open(path) as f:
        payload = json.load(f)
    payload["config"]["model_args"]["pretrained"] = "other-model"
    with open(path, "w") as f:
        json.dump(payload, f)
    (tmp_path / "ref.csv").write_text(FAKE_TABLE1)
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", str(tmp_path / "ref.csv")]
    assert paper.main(argv) == 2
    assert "model: several candidates ('other-model', 'tiny-model'); choose with" in capsys.readouterr().err
    assert paper.main([*argv, "--model", "other-model"]) == 0


def test_the_recipe_on_a_tiny_model_and_a_fake_reference(tiny_llama_dir, tmp_path, capsys):
    """The recipe's Table 1 command for 4k, narrowed to the generated Synthetic subtasks (no data files) and
    P=2, run on a tiny random model; compare reads what it wrote (compacted, raw removed)."""
    out = str(tmp_path / "runs")
    (command,) = paper.recipe(
        tiny_llama_dir, out, lengths=["4k"], model_args="dtype=float32", device="cpu", batch_size="1", limit=2
    )
    synthetic = paper.paper_tasks("Synthetic", "4k")
    command[command.index("--P") + 1] = "2"
    command[command.index("--tasks") + 1] = ",".join(synthetic)
    assert paper.run_recipe([command], out, delete_raw=True) == 0
    assert not samples.raw_samples_files(out)
    reference = tmp_path / "ref.csv"
    reference.write_text("config,Synthetic_4k\nfull,50.00\nP=2,40.00\n")
    result = paper.compare(out, str(reference), file=None)
    # the board's key for an absolute path: its last component (no host path)
    assert result.model == os.path.basename(tiny_llama_dir) and result.config == "dtype=float32"
    for cell, folder, number in zip(result.cells, ("P1_full", "P2_naive"), (50.0, 40.0)):
        (results_path,) = [
            os.path.join(out, "table1_4k", folder, name)
            for name in os.listdir(os.path.join(out, "table1_4k", folder))
            if name.endswith(".json")
        ]
        with open(results_path) as f:
            results = json.load(f)["results"]
        metrics = {t: "ruler_recall" if "ruler" in t else "subem" for t in synthetic}
        assert cell.tasks == tuple(synthetic)
        assert cell.ours == pytest.approx(100 * np.mean([results[t][f"{metrics[t]},none"] for t in synthetic]))
        assert cell.delta == pytest.approx(cell.ours - number)
        docs = [[r[metrics[t]] for r in samples.read_compact(samples.find_samples(results_path, t))] for t in synthetic]
        assert [len(d) for d in docs] == [2] * 4
        want = stats.bootstrap_category_mean(docs)
        assert cell.interval == "bootstrap"
        assert (cell.low, cell.high) == pytest.approx((100 * want.low, 100 * want.high))


PAPER_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "paper")


@pytest.mark.skipif(not os.path.isdir(PAPER_DATA), reason="../shared/data/paper is absent")
def test_the_papers_own_tables_are_read_whole():
    table1 = paper.read_reference(os.path.join(PAPER_DATA, "table1_llama31_8b.csv"))
    assert table1.table == "Table 1" and table1.rows == ["full"] + [f"P={p}" for p in paper.TABLE1_P]
    assert len(table1.cells) == 7 * 4 * 3 and "Llama-3.1-8B" in table1.comments[0]
    assert {length for _, _, length in table1.cells} == set(paper.TABLE1_LENGTHS)
    table2 = paper.read_reference(os.path.join(PAPER_DATA, "table2_llama31_8b_8k_p64.csv"))
    assert table2.table == "Table 2" and table2.rows == [row for row, _, _ in paper.TABLE2_ROWS]
    assert len(table2.cells) == 8 * 3
