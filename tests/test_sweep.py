"""`lm-eval-parallel sweep`: a 2 P x 2 method grid of pce_smoke on a tiny model in one process,
resumed after a configuration is removed, then turned into a board."""

import glob
import json
import os
import re
import shutil

import pytest

from lm_eval_parallel.sweep import grid, main_sweep


def test_grid_runs_full_once():
    assert grid([1, 4], ["naive", "full", "sel"]) == [(1, "full"), (1, "naive"), (1, "sel"), (4, "naive"), (4, "sel")]
    assert grid([2], ["sink+sel", "sel", "sink", "naive"]) == [(2, "naive"), (2, "sel"), (2, "sink"), (2, "sink+sel")]


def test_sweep_writes_one_results_file_per_configuration_and_resumes(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "--model_args",
        f"pretrained={tiny_llama_dir},dtype=float32",
        "--P",
        "1,2",
        "--methods",
        "naive,sel",
        "--tasks",
        "pce_smoke",
        "--output_path",
        str(out),
        "--device",
        "cpu",
        "--limit",
        "1",
    ]
    assert main_sweep(args) == 0
    folders = sorted(os.listdir(out))
    assert folders == ["P1_naive", "P1_sel", "P2_naive", "P2_sel"]
    reused = re.search(r"sweep: (\d+) encoded contexts reused", capsys.readouterr().out)
    assert reused and int(reused.group(1)) > 0  # sel found naive's contexts in the cache
    first = {}
    for folder in folders:
        (path,) = glob.glob(str(out / folder / "**" / "results_*.json"), recursive=True)
        data = json.load(open(path))
        P, method = folder[1:].split("_", 1)
        assert data["config"]["model_args"]["P"] == int(P) and data["config"]["model_args"]["method"] == method
        task_rows = {t: r for t, r in data["results"].items() if t.startswith("pce_ruler") or t.startswith("pce_json")}
        assert task_rows and all(r["attn_entropy,none"] > 0 for r in task_rows.values())
        first[folder] = (path, os.path.getmtime(path))
    _assert_equals_independent_run(first["P2_sel"][0], tiny_llama_dir)
    shutil.rmtree(out / "P2_naive")
    capsys.readouterr()
    assert main_sweep(args) == 0
    printed = capsys.readouterr().out
    assert "P=1 method=naive already in" in printed and "P=2 method=naive done" in printed
    for folder, (path, mtime) in first.items():
        if folder != "P2_naive":
            assert os.path.getmtime(path) == mtime  # untouched
    assert glob.glob(str(out / "P2_naive" / "**" / "results_*.json"), recursive=True)

    from lm_eval_parallel.leaderboard import main_leaderboard

    board = tmp_path / "board"
    assert main_leaderboard([str(out), "--out", str(board), "--no-plots"]) == 0
    rows = json.load(open(board / "board.json"))
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {(r["P"], r["method"]) for r in rows} >= {(1, "naive"), (2, "naive"), (2, "sel")}

    from lm_eval_parallel.cli import main as cli_main

    analysis = tmp_path / "analysis"  # the analyses of the paper from the same sweep, as a user runs them
    assert cli_main(["analyze", str(out), "--out", str(analysis), "--no_plots"]) == 0
    page = (analysis / "analysis.md").read_text()
    assert "naive" in page and "P" in page
    assert any(name.endswith(".csv") for name in os.listdir(analysis))


def _assert_equals_independent_run(results_path, model_dir):
    """A configuration inside the sweep (tasks built once, contexts reused from the method before it)
    scores exactly what a run of that configuration alone scores."""
    from lm_eval import simple_evaluate

    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=model_dir, dtype="float32", P=2, method="sel", device="cpu")
    alone = simple_evaluate(
        model=lm,
        tasks=["pce_smoke"],
        limit=1,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        metadata={"pretrained": model_dir},
    )
    swept = json.load(open(results_path))["results"]
    compared = 0
    for task, row in alone["results"].items():
        for key, value in row.items():
            if isinstance(value, float) and "stderr" not in key:
                assert swept[task][key] == value, (task, key, swept[task][key], value)
                compared += 1
    assert compared >= 4


def test_context_cache_keeps_what_comes_next_when_full():
    """The second method of a pair reads contexts in the order the first stored them: with room for
    two of three, the first two are kept (an evict-oldest cache would keep only the last, then lose it)."""
    import torch

    from lm_eval_parallel.engine import ContextCache, EncodedContext
    from lm_eval_parallel.kvstore import KVStore

    def context(value):
        store = KVStore(
            1,
            torch.ones(1, 4, dtype=torch.bool),
            torch.zeros(1, 4, dtype=torch.long),
            torch.tensor([1]),
            torch.zeros(1, 1, 4, dtype=torch.long),
            4,
        )
        store.k[0] = torch.full((1, 1, 4, 2), float(value))
        store.v[0] = torch.full((1, 1, 4, 2), float(value))
        return EncodedContext(store, 4, 4.0)

    one = 2 * 8 * 4  # bytes of one context's k + v
    cache = ContextCache(2 * one)
    for key in ("a", "b", "c"):
        cache.put(key, context(ord(key)))
    assert [cache.get(k) is not None for k in ("a", "b", "c")] == [True, True, False]
    assert cache.hits == 2 and cache.used == 2 * one
    cache.clear()
    assert cache.get("a") is None and cache.used == 0
    cache.put("c", context(1))
    assert cache.get("c") is not None


def test_a_kept_context_owns_its_buffers_not_its_batchs_slab():
    """Packed stores are views of one StoreSlab; the cache copies a context it keeps into buffers of its own (the
    slab of a whole batch would otherwise stay alive), with the same values, and leaves a plain store as it is."""
    import torch

    from lm_eval_parallel.engine import ContextCache, EncodedContext
    from lm_eval_parallel.kvstore import KVStore, RowScatter, StoreSlab

    def store():
        return KVStore(
            1, torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.long), torch.tensor([1]),
            torch.zeros(1, 1, 4, dtype=torch.long), 4,
        )  # fmt: skip

    stores = [store(), store()]
    slab = StoreSlab(stores)
    flat = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)  # [Hkv, M, D]
    slab.put_scatter(0, RowScatter(torch.arange(8), torch.arange(8)), flat, -flat)  # both stores' 4 slots
    assert stores[1].k[0].untyped_storage().data_ptr() == stores[0].k[0].untyped_storage().data_ptr()
    torch.testing.assert_close(stores[1].k[0][0], flat[:, 4:], rtol=0, atol=0)
    cache = ContextCache(10**6)
    cache.put("b", EncodedContext(stores[1], 4, 4.0))
    kept = cache.get("b").store
    assert kept.k[0].untyped_storage().nbytes() == kept.k[0].numel() * 4
    torch.testing.assert_close(kept.k[0][0], flat[:, 4:], rtol=0, atol=0)
    torch.testing.assert_close(kept.v[0][0], -flat[:, 4:], rtol=0, atol=0)
    plain = store()
    plain.k[0], plain.v[0] = torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4, 3)
    before = plain.k[0]
    cache.put("plain", EncodedContext(plain, 4, 4.0))
    assert cache.get("plain").store.k[0] is before
    with pytest.raises(ValueError, match="every store must be fresh"):
        StoreSlab([plain])


# ---------------------------------------------------------------- every `lm_eval run` flag, and ours
def _run_parser():
    import argparse

    from lm_eval._cli.run import Run

    subparsers = argparse.ArgumentParser(prog="lm-eval").add_subparsers(dest="command")
    Run.create(subparsers)
    return subparsers.choices["run"]


def test_sweep_takes_every_lm_eval_run_flag_and_refuses_unknown_ones(capsys):
    import pytest

    from lm_eval_parallel.sweep import build_parser

    def options(parser):
        return {o for action in parser._actions for o in action.option_strings}

    ours = options(build_parser())
    assert options(_run_parser()) <= ours  # -C/--config, --apply_chat_template, --metadata, --seed, ... all of them
    assert ours - options(_run_parser()) == {"--P", "--methods", "--grid", "--context_cache_mb", "--time_limit"}
    args = build_parser().parse_args(
        [
            "--tasks",
            "a,b",
            "--apply_chat_template",
            "--fewshot_as_multiturn",
            "false",
            "--system_instruction",
            "Hi",
            "--metadata",
            '{"pce_seed": 3}',
            "--seed",
            "1,2,3,4",
            "--cache_requests",
            "refresh",
            "--predict_only",
            "--samples",
            '{"a": [0, 1]}',
            "--use_cache",
            "c",
            "--wandb_args",
            "project=p",
            "--hf_hub_log_args",
            "hub_results_org=o",
            "--grid",
            "top_k=1,2",
            "--grid",
            "aggr=H",
        ]
    )
    assert args.tasks == ["a", "b"] and args.apply_chat_template is True and args.fewshot_as_multiturn is False
    assert args.metadata == {"pce_seed": 3} and args.seed == [1, 2, 3, 4] and args.samples == {"a": [0, 1]}
    assert args.cache_requests["rewrite_requests_cache"] and args.grid == ["top_k=1,2", "aggr=H"]
    with pytest.raises(SystemExit) as exit_:
        main_sweep(["--tasks", "x", "--output_path", "o", "--no_such_flag"])
    assert exit_.value.code == 2 and "unrecognized arguments: --no_such_flag" in capsys.readouterr().err


def _error(capsys, argv) -> str:
    assert main_sweep(argv) == 2
    err = capsys.readouterr().err
    # lm-eval's own logging may print before it (in a long test session even "--- Logging error ---" blocks, from
    # a handler bound to an earlier test's captured stream); ours is exactly one line, the last one.
    ours = [line for line in err.splitlines() if line.startswith("lm-eval-parallel sweep: error: ")]
    assert len(ours) == 1 and err.rstrip("\n").endswith(ours[0]), err
    if "--- Logging error ---" not in err:
        assert err.count("\n") == 1, err
    return ours[0].removeprefix("lm-eval-parallel sweep: error: ").strip()


def _message(build) -> str:
    import pytest

    with pytest.raises(ValueError) as err:
        build()
    return str(err.value)


def test_bad_grid_values_give_the_message_of_the_same_model_arg(capsys, tmp_path):
    """`--P 4,abc` says what `P=abc` in model_args says (both read by lm-eval's value parser, then the
    registry), before anything loads: no model, no task lookup (the task name does not exist)."""
    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM

    base = ["--tasks", "nope_task", "--output_path", str(tmp_path / "out")]
    p_abc = _message(lambda: ParallelHFLM(pretrained="/never/loaded", P="abc"))
    assert _error(capsys, [*base, "--P", "4,abc"]) == p_abc == _message(lambda: PCEConfig.from_args(P="abc"))
    assert _error(capsys, [*base, "--P", "2.5"]) == _message(lambda: PCEConfig.from_args(P=2.5))
    assert _error(capsys, [*base, "--methods", "sel,nope"]) == _message(lambda: PCEConfig.from_args(method="nope"))
    assert _error(capsys, [*base, "--grid", "top_k=1,x"]) == _message(lambda: PCEConfig.from_args(top_k="x"))
    assert _error(capsys, [*base, "--grid", "split=sentence,lines"]) == _message(
        lambda: PCEConfig.from_args(split="lines")
    )
    assert "did you mean 'top_k'" in _error(capsys, [*base, "--grid", "top_kk=1"])
    assert "'dtype' is not a parallel_hf setting" in _error(capsys, [*base, "--grid", "dtype=float16"])
    assert "--P" in _error(capsys, [*base, "--grid", "P=2"])
    assert "not KEY=V1,V2" in _error(capsys, [*base, "--grid", "top_k"])
    assert "in --model_args and in --grid" in _error(capsys, [*base, "--model_args", "top_k=1", "--grid", "top_k=2"])
    assert "must not be in --model_args" in _error(capsys, [*base, "--model_args", "P=2"])
    assert "parallel_hf only" in _error(capsys, [*base, "--model", "hf"])
    assert "apply_chat_template" in _error(capsys, [*base, "--fewshot_as_multiturn"])  # lm-eval's own check
    assert not (tmp_path / "out").exists()  # nothing was written for a sweep refused before it started


def test_unknown_task_is_lm_evals_tasks_not_found(capsys, tmp_path):
    assert (
        _error(
            capsys,
            [
                "--model_args",
                f"pretrained={tmp_path}",
                "--tasks",
                "nope_task",
                "--output_path",
                str(tmp_path),
                "--P",
                "2",
            ],
        )
        == "Tasks not found: nope_task"
    )


def test_output_path_must_be_writable_before_any_compute(capsys, tmp_path):
    import pytest

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # a folder is a valid pretrained for the checks; a task lookup would fail after the output check
    base = ["--model_args", f"pretrained={tmp_path}", "--tasks", "nope_task", "--P", "2"]
    file_error = f"{a_file} is a file, not a folder"  # the check of lm_eval runs (checks.py), here as there
    assert _error(capsys, [*base, "--output_path", str(a_file)]) == f"--output_path={str(a_file)!r}: {file_error}"
    assert _error(capsys, [*base, "--output_path", str(a_file / "sub")]).endswith(file_error)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _error(capsys, [*base, "--output_path", str(locked / "out")]).endswith(f"{locked} is not writable")
    finally:
        locked.chmod(0o700)


def test_model_args_and_few_shot_are_checked_as_lm_eval_runs_check_them(capsys, tmp_path):
    """The checks of an `lm_eval` run (preflight.py), before the task lookup (nope_task is never reached)."""
    from lm_eval_parallel.preflight import check_model_args

    out = ["--output_path", str(tmp_path / "out")]
    missing = _message(lambda: check_model_args("parallel_hf", {"pretrained": "/nonexistent"}, "cpu"))
    assert _error(capsys, ["--model_args", "pretrained=/nonexistent", "--tasks", "nope_task", *out]) == missing
    assert _error(
        capsys, ["--model_args", f"pretrained={tmp_path},dtype=float77", "--tasks", "nope_task", *out]
    ).startswith("dtype='float77' is not allowed")
    assert "take no few-shot examples" in _error(
        capsys, ["--model_args", f"pretrained={tmp_path}", "--tasks", "pce_smoke", "--num_fewshot", "2", *out]
    )


def test_config_yaml_keys_are_checked(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [x]\noutput_path: o\ngrids: {top_k: [1]}\n")
    assert "unknown key 'grids'; did you mean 'grid'?" in _error(capsys, ["--config", str(bad)])
    assert "Config file not found" in _error(capsys, ["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n")
    assert "YAML root must be a mapping" in _error(capsys, ["--config", str(tmp_path / "list.yaml")])


def test_configurations_order_and_folder_names():
    from lm_eval_parallel.sweep import Configuration, configurations, folder_value

    confs = configurations([2, 4], ["sel", "naive", "full"], {"top_k": [1, 3], "split": ["tokens", r"regex:\n"]})
    names = [c.name for c in confs]
    assert len(names) == len(set(names)) == (1 + 2 * 2) * 4
    hashed = folder_value(r"regex:\n")
    assert hashed.startswith("sha-") and folder_value("sink+sel") == "sink+sel" and folder_value(1) == "1"
    assert names[:4] == [
        "P1_full_top_k=1_split=tokens",
        f"P1_full_top_k=1_split={hashed}",
        "P1_full_top_k=3_split=tokens",
        f"P1_full_top_k=3_split={hashed}",
    ]
    # at one P, the methods that share encoded contexts run back to back for each combination of values
    assert [c.method for c in confs if c.P == 2][:4] == ["naive", "sel", "naive", "sel"]
    assert str(confs[4]) == "P=2 method=naive top_k=1 split=tokens"
    assert configurations([2], ["naive", "sel"], {}) == [Configuration(2, "naive"), Configuration(2, "sel")]
    assert Configuration(16, "sel", (("top_k", 1),)).name == "P16_sel_top_k=1"


def test_grid_values_are_read_as_lm_eval_reads_a_model_arg_value():
    from lm_eval_parallel.sweep import grid_values, parse_grid

    raw = parse_grid(["sink_text='Read, then:',None", "split=regex:[.,],sentence", "top_k=1", "top_k=3,1"])
    assert raw == {"sink_text": ["Read, then:", None], "split": ["regex:[.,]", "sentence"], "top_k": [1, 3, 1]}
    assert grid_values(raw, {})["top_k"] == [1, 3]  # a repeated key adds values, each value once


def test_a_half_written_results_file_is_not_done(tmp_path):
    from lm_eval_parallel.sweep import is_done, recorded_difference, results_file

    folder = tmp_path / "P2_sel"
    folder.mkdir()
    whole = json.dumps({"results": {"t": {"acc,none": 1.0}}, "config": {"model_args": {"P": 2}, "limit": None}})
    (folder / "results_2025-01-01T00-00-00.json").write_text(whole[: len(whole) // 2])
    assert not is_done(str(folder))
    (folder / "results_2025-01-02T00-00-00.json").write_text(whole)
    path = results_file(str(folder))
    assert path.endswith("01-02T00-00-00.json") and is_done(str(folder))
    assert recorded_difference(path, {"P": 2}, None) is None
    assert "P=2 there, 4 now" in recorded_difference(path, {"P": 4}, None)
    assert "limit=None there, 5.0 now" in recorded_difference(path, {"P": 2}, 5.0)


def test_missing_logger_package_is_refused_before_anything_runs(capsys, tmp_path):
    import importlib.util

    import pytest

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    assert "--wandb_args needs the wandb package" in _error(
        capsys, ["--tasks", "x", "--output_path", str(tmp_path), "--wandb_args", "project=p"]
    )


# ---------------------------------------------------------------- a whole sweep from YAML, with a chat template
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_sweep_from_yaml_with_a_grid_and_a_chat_template(tiny_llama_dir, tmp_path, capsys):
    """A YAML sweep (flags override it) over top_k, with --apply_chat_template and --system_instruction on a
    tiny model whose tokenizer has a chat template; no --device: lm-eval's default device, which falls back
    to the CPU here as `lm_eval run` does."""
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from probe_task import write_probe_task
    from transformers import AutoTokenizer

    from lm_eval_parallel.leaderboard.reader import read_results_file

    model_dir = tmp_path / "chat_model"
    shutil.copytree(tiny_llama_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    task_dir = write_probe_task(tmp_path / "task", "pce_chat_probe", n_docs=3, n_items=4, max_gen_toks=4)
    out = tmp_path / "sweep"
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text(
        f"model_args: {{pretrained: {model_dir}, dtype: float32}}\ntasks: [pce_chat_probe]\n"
        f"include_path: {task_dir}\noutput_path: {out}\nP: [4]\nmethods: sel\ngrid: {{top_k: [1, 3]}}\n"
        "limit: 3\nlog_samples: true\napply_chat_template: true\nsystem_instruction: Answer briefly.\n"
    )
    cache = tmp_path / "cache" / "lm"
    flags = ["--limit", "2", "--seed", "5", "--use_cache", str(cache)]
    assert main_sweep(["--config", str(sweep_yaml), *flags]) == 0  # the flag's limit wins over the YAML's
    assert sorted(os.listdir(out)) == ["P4_sel_top_k=1", "P4_sel_top_k=3"]
    assert len(glob.glob(f"{cache}*.db")) == 2  # --use_cache: one file per configuration (its settings' hash)
    boards = []
    for top_k in (1, 3):
        folder = out / f"P4_sel_top_k={top_k}"
        (results,) = glob.glob(str(folder / "results_*.json"))
        with open(results) as f:
            data = json.load(f)
        assert data["config"]["model_args"]["top_k"] == top_k and data["config"]["pce"]["top_k"] == top_k
        assert data["config"]["limit"] == 2.0 and data["config"]["device"] == EvaluatorConfig().device
        assert data["config"]["random_seed"] == data["config"]["fewshot_seed"] == 5
        assert data["chat_template"] == CHAT_TEMPLATE and data["system_instruction"] == "Answer briefly."
        (samples,) = glob.glob(str(folder / "samples_pce_chat_probe_*.jsonl"))
        with open(samples) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == 2
        for row in rows:
            prompt = row["arguments"]["gen_args_0"]["arg_0"]
            assert prompt.startswith("<|system|>Answer briefly.<|end|>\n<|user|>")
            assert prompt.endswith("<|assistant|>")
        boards.extend(read_results_file(results))
    # the board reads the grid value from the recorded model_args (dtype: a model_arg that changes scores)
    assert {(r.method, r.P, r.config) for r in boards} == {
        ("sel", 4, "dtype=float32,top_k=1"),
        ("sel", 4, "dtype=float32,top_k=3"),
    }
    capsys.readouterr()
    assert main_sweep(["--config", str(sweep_yaml), *flags]) == 0
    assert capsys.readouterr().out.count("already in") == 2
    assert "limit=2.0 there, 3 now" in _error(capsys, ["--config", str(sweep_yaml)])


@pytest.mark.parametrize("length", ("4k", "8k"))
def test_paper_protocol_configs_name_the_board_grid(length):
    """The board's sweep configs (issue protocol): 13 offline subtasks at one length, each with a task YAML, 100
    documents, float32, samples logged, and the 29 configurations of P in {1..64} x four methods + full."""
    from lm_eval_parallel import TASKS_DIR
    from lm_eval_parallel.sweep import _as_list, configurations, read_sweep_yaml

    path = os.path.join(os.path.dirname(__file__), "..", "leaderboards", f"paper_protocol_{length}.yaml")
    lm_eval_keys, ours = read_sweep_yaml(path)
    tasks = lm_eval_keys["tasks"]
    assert len(tasks) == len(set(tasks)) == 13 and all(t.endswith(f"_{length}") for t in tasks)
    task_files = {os.path.basename(p)[: -len(".yaml")] for p in glob.glob(os.path.join(TASKS_DIR, "*", "*.yaml"))}
    assert set(tasks) <= task_files
    assert lm_eval_keys["limit"] == 100 and lm_eval_keys["log_samples"] is True
    assert lm_eval_keys["model_args"]["dtype"] == "float32"
    confs = configurations([int(p) for p in _as_list(ours["P"])], _as_list(ours["methods"]), {})
    assert len(confs) == 29


def test_time_limit_stops_before_a_configuration_that_would_not_fit_and_resumes(
    tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    """--time_limit 25 with every configuration taking 10 s on the sweep's clock: the first two run (0 + 10 and
    10 + 10 <= 25), the third would end at 30, so the sweep stops before it and exits 0; the same command without
    the limit resumes with the rest."""
    from lm_eval_parallel import sweep

    now = [0.0]
    monkeypatch.setattr(sweep, "_clock", lambda: now[0])
    run = sweep.run_configuration

    def timed_run(*args, **kwargs):
        run(*args, **kwargs)
        now[0] += 10.0

    monkeypatch.setattr(sweep, "run_configuration", timed_run)
    out = tmp_path / "sweep"
    args = ["--model_args", f"pretrained={tiny_llama_dir},dtype=float32", "--P", "2", "--methods", "naive,sel,sink"]
    args += ["--tasks", "pce_smoke", "--output_path", str(out), "--device", "cpu", "--limit", "1"]
    assert main_sweep([*args, "--time_limit", "25"]) == 0
    assert "time limit 25s: stopped before P=2 method=sink (1 configuration left" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["P2_naive", "P2_sel"]
    assert main_sweep(args) == 0
    assert sorted(os.listdir(out)) == ["P2_naive", "P2_sel", "P2_sink"]
