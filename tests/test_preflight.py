"""Around an lm-eval run: our errors as one line, checks before any compute, pce tasks built before the
model, the results path at the end, --use_cache keyed by the model, smollm2-135m for hf, sink_text_file."""

import glob
import json
import logging
import os
import subprocess
import sys
import types

import pytest
from lm_eval.api.instance import Instance
from probe_task import write_probe_task

from lm_eval_parallel import cli, parallel_prompt, preflight
from lm_eval_parallel._autoload import register
from lm_eval_parallel.checks import check_device, check_num_fewshot, check_output_path
from lm_eval_parallel.log import _WARNED

KW = {"dtype": "float32", "device": "cpu"}
NONEXISTENT = "pretrained='/nonexistent' is not a folder, a .gguf file, an alias (smollm2-135m) or a hub id"


@pytest.fixture(autouse=True)
def hooks():
    register()
    _WARNED.clear()


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- one line


def test_our_error_is_one_line_from_lm_eval_parallel_and_the_last_line_from_lm_eval():
    args = [
        "--model",
        "parallel_hf",
        "--model_args",
        "pretrained=/nonexistent,P=4",
        "--tasks",
        "pce_smoke",
        "--device",
        "cpu",
    ]
    ours = subprocess.run(
        [sys.executable, "-m", "lm_eval_parallel", *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert ours.returncode == 2
    assert "Traceback" not in ours.stderr
    assert _stderr_lines(ours.stderr)[-1] == f"lm-eval-parallel: error: {NONEXISTENT}"
    stock = subprocess.run(
        [sys.executable, "-m", "lm_eval", *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert stock.returncode != 0
    assert _stderr_lines(stock.stderr)[-1].endswith(NONEXISTENT)


def test_sweep_errors_are_one_line_too(tmp_path, capsys):
    status = cli.main(
        [
            "sweep",
            "--model_args",
            f"pretrained={tmp_path}",
            "--tasks",
            "pce_smoke",
            "--output_path",
            str(tmp_path / "out"),
            "--methods",
            "magic",
        ]
    )
    assert status == 2
    from lm_eval_parallel.config import METHOD_ALIASES, METHODS

    allowed = ", ".join([m.name for m in METHODS] + list(METHOD_ALIASES))
    assert _stderr_lines(capsys.readouterr().err) == [
        f"lm-eval-parallel sweep: error: method='magic' is not allowed; choose one of {allowed}"
    ]


def foreign(argv):
    raise ValueError("from somewhere else")


def test_errors_not_raised_by_our_code_keep_their_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "foreign", ("test_preflight:foreign", ""))
    with pytest.raises(ValueError, match="from somewhere else"):
        cli.main(["foreign"])


def test_help_lists_every_command_and_the_table_extends(capsys, monkeypatch):
    assert cli.main(["--help"]) == 0
    shown = capsys.readouterr().out
    for name in ("sweep", "leaderboard", "check", "run"):
        assert f"\n  {name} " in shown
    monkeypatch.setitem(cli.COMMANDS, "echo", ("test_preflight:echo", "print the arguments"))
    assert cli.main(["echo", "a", "b"]) == 7
    assert "a b" in capsys.readouterr().out
    assert cli.main([]) == 0 and "print the arguments" in capsys.readouterr().out


def echo(argv):
    print(" ".join(argv))
    return 7


# ---------------------------------------------------------------------------------------------- checks


def test_unwritable_output_folder_is_refused(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real(path, mode))
    with pytest.raises(ValueError, match=f"--output_path='{tmp_path}/out': {tmp_path} is not writable"):
        check_output_path(str(tmp_path / "out"))
    check_output_path(str(tmp_path.parent / "elsewhere"))


def test_what_is_allowed_stays_allowed():
    check_num_fewshot(0, ["pce_smoke"])
    check_num_fewshot(5, ["hellaswag"])
    check_device("cpu")
    check_device("cuda:0")  # the lm_eval default: HFLM picks cpu itself where there is no CUDA


def test_model_args_of_other_models_are_left_to_them(tmp_path):
    preflight.check_model_args("dummy", {"P": "abc", "dtype": "float77"}, "cuda")
    preflight.check_model_args("no_such_model", {"P": "abc"}, None)


def test_unsaved_results_fail_and_saved_ones_are_printed(tmp_path, capsys):
    tracker = types.SimpleNamespace(output_path=str(tmp_path / "out"), date_id="2026-01-01T00-00-00.0")
    preflight._last_run.update(tracker=tracker, produced=True)
    with pytest.raises(OSError, match="results were not saved under --output_path="):
        preflight.report_saved_results()
    (tmp_path / "out" / "m").mkdir(parents=True)
    (tmp_path / "out" / "m" / "samples_t_2026-01-01T00-00-00.0.json").write_text("{}")
    saved = tmp_path / "out" / "m" / "results_2026-01-01T00-00-00.0.json"
    saved.write_text("{}")
    preflight.report_saved_results()
    assert capsys.readouterr().out.strip() == f"Results saved to {saved}"
    preflight._last_run.update(produced=False)  # a rank without results: nothing to report
    saved.unlink()
    preflight.report_saved_results()


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    write_probe_task(folder, "pce_preflight_probe", n_docs=3, n_items=4, max_gen_toks=4)
    broken = folder / "broken"
    broken.mkdir()
    (broken / "pce_preflight_broken.yaml").write_text(
        (folder / "pce_preflight_probe.yaml").read_text().replace("pce_preflight_probe", "pce_preflight_broken")
    )
    (broken / "utils.py").write_text(
        (folder / "utils.py")
        .read_text()
        .replace(
            "def make_docs(**kwargs):",
            "def make_docs(**kwargs):\n    from lm_eval_parallel.tasks_common import PceDataError\n"
            "    raise PceDataError('pce_preflight_broken: notes.jsonl line 3: expected a JSON object')\n",
        )
    )
    return folder


def _run(model_dir, probe, out, *extra, task="pce_preflight_probe"):
    return cli.main(
        [
            "--model",
            "parallel_hf",
            "--model_args",
            f"pretrained={model_dir},P=2,method=sel,dtype=float32",
            "--device",
            "cpu",
            "--tasks",
            task,
            "--include_path",
            str(probe),
            "--output_path",
            str(out),
            "--log_samples",
            *extra,
        ]
    )


def _responses(out):
    (path,) = glob.glob(str(out / "**" / "samples_*.jsonl"), recursive=True)
    return sorted((s["doc_id"], s["resps"], s["attn_entropy"]) for s in map(json.loads, open(path)))


def test_tasks_are_built_before_the_model_and_give_the_same_results(
    tiny_llama_dir, probe, tmp_path, capsys, monkeypatch
):
    assert _run(tiny_llama_dir, probe, tmp_path / "early") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    (saved,) = glob.glob(str(tmp_path / "early" / "**" / "results_*.json"), recursive=True)
    assert last == f"Results saved to {saved}"
    monkeypatch.setattr(preflight, "EARLY_TASKS", False)
    assert _run(tiny_llama_dir, probe, tmp_path / "late") == 0
    assert _responses(tmp_path / "early") == _responses(tmp_path / "late")


def test_a_data_error_comes_before_the_model_loads(probe, tmp_path, capsys):
    empty_model = tmp_path / "model"
    empty_model.mkdir()  # a folder passes the pretrained check; loading it would fail with HF's own error
    status = _run(empty_model, probe / "broken", tmp_path / "out", task="pce_preflight_broken")
    assert status == 2
    assert _stderr_lines(capsys.readouterr().err)[-1] == (
        "lm-eval-parallel: error: pce_preflight_broken: notes.jsonl line 3: expected a JSON object"
    )


# ---------------------------------------------------------------------------------------------- --use_cache


def _ll(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


PAIRS = [
    (parallel_prompt(["Note 1: red.\n", "Note 2: blue.\n", "Note 3: green.\n"], "Which colour?"), " blue"),
    ("The capital of France is", " Paris"),
]


@pytest.mark.parametrize("model", ["hf", "parallel_hf"])
def test_use_cache_never_serves_another_models_answers(model, tmp_path):
    from lm_eval.api.model import CachingLM
    from lm_eval.models.huggingface import HFLM
    from tiny_models import save_tiny

    from lm_eval_parallel.model import ParallelHFLM

    make = HFLM if model == "hf" else (lambda **kw: ParallelHFLM(P=2, method="naive", **kw))
    first, second = save_tiny(str(tmp_path / "a"), seed=0), save_tiny(str(tmp_path / "b"), seed=1)
    cache = str(tmp_path / "cache" / "lm_rank0.db")
    lm_a = make(pretrained=first, **KW)
    served_a = CachingLM(lm_a, cache).loglikelihood(_ll(PAIRS))
    lm_b = make(pretrained=second, **KW)
    served_b = CachingLM(lm_b, cache).loglikelihood(_ll(PAIRS))
    assert [r[0] for r in served_b] == [r[0] for r in make(pretrained=second, **KW).loglikelihood(_ll(PAIRS))]
    assert [r[0] for r in served_b] != [r[0] for r in served_a]
    save_tiny(first, seed=2)  # another model saved at the first path
    assert CachingLM(make(pretrained=first, **KW), cache).cache_db not in (
        CachingLM(lm_a, cache).cache_db,
        CachingLM(lm_b, cache).cache_db,
    )
    assert len(glob.glob(str(tmp_path / "cache" / "*.db"))) == 3


# ---------------------------------------------------------------------------------------------- hf


def test_hf_gets_the_alias_and_the_checks(monkeypatch):
    """The HFLM patch, on a stand-in class that records what it is given."""
    from lm_eval_parallel.resolve import smollm2_gguf_path

    class HFLM:
        def __init__(self, pretrained, gguf_file=None, dtype="auto", device="cuda", **kwargs):
            self.given = {"pretrained": pretrained, "gguf_file": gguf_file, **kwargs}

    module = types.SimpleNamespace(HFLM=HFLM)
    preflight.patch_hflm(module)
    monkeypatch.setenv("PCE_GGUF_CACHE", "0")  # the alias itself (with the cache on, hf gets the converted folder)
    lm = HFLM(pretrained="smollm2-135m", device="cpu")
    gguf = smollm2_gguf_path()
    assert lm.given == {"pretrained": os.path.dirname(gguf), "gguf_file": os.path.basename(gguf)}
    assert lm.cache_identity["gguf_file"] == os.path.basename(gguf)
    with pytest.raises(ValueError, match="P is a parallel_hf option; use --model parallel_hf"):
        HFLM(pretrained="smollm2-135m", device="cpu", P=4)
    with pytest.raises(ValueError, match="dtype='float77' is not allowed"):
        HFLM(pretrained="smollm2-135m", device="cpu", dtype="float77")
    with pytest.raises(ValueError, match=r"pretrained='/nonexistent' is not a folder"):
        HFLM(pretrained="/nonexistent", device="cpu")


@pytest.mark.slow
def test_hf_loads_the_embedded_smollm2():
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained="smollm2-135m", **KW)
    assert lm.model.config.model_type == "llama"
    assert lm.loglikelihood(_ll([("The capital of France is", " Paris")]))[0][0] < 0


# ---------------------------------------------------------------------------------------------- sinks

SINK = "Read the notes below, then answer the question:\n\n"  # has a comma: impossible in --model_args


def test_sink_text_file_is_the_sink_and_passes_the_model_args_parser(tiny_llama_dir, tmp_path):
    from lm_eval_parallel.model import ParallelHFLM

    path = tmp_path / "sink.txt"
    path.write_text(SINK, encoding="utf-8")
    from_file = ParallelHFLM.create_from_arg_string(
        f"pretrained={tiny_llama_dir},P=2,method=sink,sink_text_file={path},dtype=float32,device=cpu"
    )
    assert from_file.pce.sink_text == SINK
    from_text = ParallelHFLM(pretrained=tiny_llama_dir, P=2, method="sink", sink_text=SINK, **KW)
    plain = ParallelHFLM(pretrained=tiny_llama_dir, P=2, method="sink", **KW)
    scores = [[r[0] for r in lm.loglikelihood(_ll(PAIRS[:1]))] for lm in (from_file, from_text, plain)]
    assert scores[0] == scores[1] != scores[2]
    assert from_file.cache_fingerprint() == from_text.cache_fingerprint()


def test_a_long_sink_is_warned_about_and_shown_short(tiny_llama_dir, caplog):
    from lm_eval_parallel.model import ParallelHFLM

    sink = "The notes follow. " * 2700  # 48,600 characters
    with caplog.at_level(logging.WARNING, logger="lm_eval_parallel"):
        ParallelHFLM(pretrained=tiny_llama_dir, P=2, method="sink", sink_text=sink, **KW)
    assert any("sink_text is" in r.message and f"({len(sink)} characters)" in r.message for r in caplog.records)
    model_args = {"pretrained": "m", "sink_text": sink}
    preflight.shorten_long_values(model_args)
    shown = repr(model_args)
    assert len(shown) < 200 and f"{len(sink)} characters, sha256 " in shown and repr(sink[:32]) in shown
    assert json.loads(json.dumps(model_args))["sink_text"] == sink and model_args["sink_text"] == sink
