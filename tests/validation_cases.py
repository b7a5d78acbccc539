"""Every input validation of the tool, one case per line: what the user gives, and the message they get.

This list is the source of ``docs/validation.md``: ``python tests/validation_cases.py`` renders it there, and
``test_validation.py`` runs every case (the message must be exactly the one shown) and fails when the
committed page is not the rendering of this list. A new validation is one ``Case`` in ``CASES``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "validation.md")
FOLDER = "DIR"  # stands for the case's own temporary folder in inputs and messages

# Sections of the page, in order.
AREAS = {
    "model_args": "`--model_args` of `parallel_hf` (and of `hf` where it says so), checked before the model loads.",
    "command line": "`lm_eval` / `lm-eval-parallel` arguments, checked before lm-eval indexes its tasks.",
    "metadata": "`--metadata` keys read by the pce tasks.",
    "prompts": "Marked prompts of a task (`parallel_prompt`, and what the model reads back with `split_prompt`).",
    "sweep": "`lm-eval-parallel sweep` flags.",
    "data files": "Local data files of the pce tasks (`$PCE_DATA_DIR`).",
    "leaderboard and check": "`lm-eval-parallel leaderboard` and `lm-eval-parallel check` (exit status 2).",
}


class CommandFailed(Exception):
    """A command that returned a non-zero exit status; its message is the last line it printed on stderr."""


@dataclass(frozen=True)
class Case:
    area: str  # one of AREAS
    given: str  # the input as a user types it (DIR: a folder of theirs)
    message: str  # exactly the message; DIR as above; a trailing "..." matches any rest
    trigger: Callable[[Path], object]  # does what `given` does, in a fresh folder DIR; raises `error`
    error: type = ValueError

    def expected(self, folder: Path) -> str:
        return self.message.replace(FOLDER, str(folder))

    def matches(self, actual: str, folder: Path) -> bool:
        expected = self.expected(folder)
        if expected.endswith("..."):
            return actual.startswith(expected[:-3])
        return actual == expected


# ---------------------------------------------------------------------------------------------- triggers
# Each calls what the command line calls, without loading a model.


def model_args(model: str = "parallel_hf", device: str | None = "cpu", **args):
    def trigger(folder: Path):
        from lm_eval_parallel._autoload import register
        from lm_eval_parallel.preflight import check_model_args

        register()
        values = {k: (v.replace(FOLDER, str(folder)) if isinstance(v, str) else v) for k, v in args.items()}
        values.setdefault("pretrained", str(folder))  # a folder: a valid pretrained
        check_model_args(model, values, device)

    return trigger


def cli_args(**args):
    def trigger(folder: Path):
        from argparse import Namespace

        from lm_eval_parallel.preflight import check_cli_args

        values = {k: (v.replace(FOLDER, str(folder)) if isinstance(v, str) else v) for k, v in args.items()}
        check_cli_args(Namespace(**{"model": "parallel_hf", "model_args": {"pretrained": str(folder)}, **values}))

    return trigger


def command(name: str, *argv: str, setup: Callable[[Path], None] | None = None):
    """``lm-eval-parallel NAME ARGV`` in-process; raises CommandFailed with its last stderr line."""

    def trigger(folder: Path):
        from lm_eval_parallel.cli import COMMANDS, dispatch

        assert name in COMMANDS
        if setup is not None:
            setup(folder)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = dispatch([name, *(a.replace(FOLDER, str(folder)) for a in argv)])
        if status != 0:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            raise CommandFailed(lines[-1] if lines else f"exit status {status}")

    return trigger


def prompt(function: str, *args):
    def trigger(folder: Path):
        import lm_eval_parallel

        getattr(lm_eval_parallel, function)(*args)

    return trigger


def with_cuda_absent(trigger):
    def guarded(folder: Path):
        import pytest
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        return trigger(folder)

    return guarded


def files(**contents: str):
    """Setup: write files (name -> text) into DIR; a name ending in / is made a folder."""

    def setup(folder: Path):
        for name, text in contents.items():
            path = folder / name
            if name.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.write_text(text, encoding="utf-8")

    return setup


def with_files(trigger, **contents: str):
    def prepared(folder: Path):
        files(**contents)(folder)
        return trigger(folder)

    return prepared


def task_loader(family: str, loader: str, *, data: dict[str, str] | None = None, model: bool = False, **kwargs):
    """Build a pce task's documents as lm-eval does (its ``custom_dataset`` loader) with the given metadata,
    over a data folder DIR/data holding ``data`` (relative path -> text); the model path does not exist unless
    ``model`` (then the default model's tokenizer sizes the documents)."""

    def trigger(folder: Path):
        import importlib.util

        from lm_eval_parallel import TASKS_DIR, tasks_common

        root = folder / "data"
        for rel, text in (data or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
        root.mkdir(exist_ok=True)
        saved = {k: os.environ.get(k) for k in ("PCE_DATA_DIR", "PCE_DOCS_CACHE")}
        os.environ.update(PCE_DATA_DIR=str(root), PCE_DOCS_CACHE="0")
        try:
            spec = importlib.util.spec_from_file_location(
                f"pce_{family}_utils", os.path.join(TASKS_DIR, family, "utils.py")
            )
            utils = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(utils)
            tasks_common.clear_memory_cache()
            given = {} if model else {"pretrained": str(folder / "no_model")}
            return getattr(utils, loader)(**given, **kwargs)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return trigger


from lm_eval_parallel.config import METHOD_ALIASES, METHODS  # noqa: E402  (the messages list the registry's methods)

METHODS_LIST = ", ".join([m.name for m in METHODS] + list(METHOD_ALIASES))
PARALLEL_METHODS = "/".join(m.name for m in METHODS if m.parallel)
SWEEP = ("--model_args", "pretrained=DIR", "--tasks", "nope_task", "--output_path", "DIR/out")  # a task lookup fails

# ---------------------------------------------------------------------------------------------- the cases
CASES = [
    # model_args
    Case("model_args", "P=abc", "P='abc' must be a positive integer", model_args(P="abc")),
    Case("model_args", "P=0", "P=0 must be a positive integer (>= 1)", model_args(P=0)),
    Case("model_args", "P=2.5", "P=2.5 must be a positive integer (got a fraction)", model_args(P=2.5)),
    Case(
        "model_args",
        "method=magic",
        f"method='magic' is not allowed; choose one of {METHODS_LIST}",
        model_args(method="magic"),
    ),
    Case(
        "model_args",
        "method=full,P=4",
        f"P=4 with method=full: it encodes one piece; use P=1, or method={PARALLEL_METHODS}",
        model_args(method="full", P=4),
    ),
    Case(
        "model_args",
        "method=star+sel",
        "method='star+sel': star and sel do not combine (no paper defines it); the combined methods are sink+sel, "
        "and logscale=true goes with any method",
        model_args(method="star+sel", P=4),
    ),
    Case(
        "model_args",
        "method=nbce,pos=even",
        "pos=even with method=nbce: the method places its pieces with pos=left; leave pos out, or use method=naive "
        "with pos=",
        model_args(method="nbce", P=4, pos="even"),
    ),
    Case(
        "model_args",
        "nbce_beta=-1",
        "nbce_beta=-1 must be a finite number >= 0",
        model_args(method="nbce", P=4, nbce_beta=-1),
    ),
    Case(
        "model_args",
        "pos=middle",
        "pos='middle' is not allowed; choose one of even, left, right, harmonic, serial",
        model_args(pos="middle"),
    ),
    Case(
        "model_args", "aggr=X", "aggr='X' is not allowed; choose one of auto, none, H, T, HT, LHT", model_args(aggr="X")
    ),
    Case("model_args", "top_k=0", "top_k=0 must be a positive integer (>= 1)", model_args(top_k=0)),
    Case(
        "model_args",
        "oracle_keys=maybe",
        "oracle_keys='maybe' is not a boolean; use true or false",
        model_args(oracle_keys="maybe"),
    ),
    Case(
        "model_args",
        "tokenize=bpe",
        "tokenize='bpe' is not allowed; choose one of items, joint",
        model_args(tokenize="bpe"),
    ),
    Case(
        "model_args",
        "split=lines",
        "split='lines' is not allowed; choose one of tokens, paragraph, sentence, regex:PATTERN",
        model_args(split="lines"),
    ),
    Case(
        "model_args",
        "split=regex:(",
        "split='regex:(' is not a valid regular expression (...",
        model_args(split="regex:("),
    ),
    Case(
        "model_args",
        "context_cache_mb=-1",
        "context_cache_mb=-1 must be an integer >= 0 (0 = off)",
        model_args(context_cache_mb=-1),
    ),
    Case(
        "model_args",
        "methd=sel",
        "unknown model_arg 'methd'; did you mean 'method'? (parallel options: ...",
        model_args(methd="sel"),
    ),
    Case(
        "model_args",
        "sink_text=Read:,sink_text_file=DIR/sink.txt",
        "sink_text and sink_text_file are both given; give one of them",
        with_files(model_args(sink_text="Read:", sink_text_file="DIR/sink.txt"), **{"sink.txt": "Read, then:\n"}),
    ),
    Case(
        "model_args",
        "sink_text_file=DIR/missing.txt",
        "sink_text_file='DIR/missing.txt' is not a file",
        model_args(sink_text_file="DIR/missing.txt"),
    ),
    Case(
        "model_args",
        "sink_text_file=DIR/empty.txt",
        "sink_text_file='DIR/empty.txt' is empty",
        with_files(model_args(sink_text_file="DIR/empty.txt"), **{"empty.txt": ""}),
    ),
    Case(
        "model_args",
        "analysis_path=DIR/notes.txt/a.jsonl (under a file)",
        "analysis_path='DIR/notes.txt/a.jsonl': DIR/notes.txt is a file, not a folder",
        with_files(model_args(analysis_path="DIR/notes.txt/a.jsonl"), **{"notes.txt": "x"}),
    ),
    Case(
        "model_args",
        "analysis_path=DIR (a folder)",
        "analysis_path='DIR' is a folder; give a file name",
        model_args(analysis_path="DIR"),
    ),
    Case(
        "model_args",
        "pretrained=/nonexistent",
        "pretrained='/nonexistent' is not a folder, a .gguf file, an alias (smollm2-135m) or a hub id",
        model_args(pretrained="/nonexistent"),
    ),
    Case(
        "model_args",
        "dtype=float77",
        "dtype='float77' is not allowed; choose one of auto, float32, bfloat16, float16, float64",
        model_args(dtype="float77"),
    ),
    Case(
        "model_args",
        "--model hf --model_args P=4",
        "P is a parallel_hf option; use --model parallel_hf",
        model_args("hf", P=4),
    ),
    Case(
        "model_args",
        "--model hf --model_args P=4,method=sel",
        "P, method are parallel_hf options; use --model parallel_hf",
        model_args("hf", P=4, method="sel"),
    ),
    Case(
        "model_args",
        "--device cuda (on a machine without CUDA)",
        "device='cuda', but torch finds no CUDA device here; use --device cpu",
        with_cuda_absent(model_args(device="cuda")),
    ),
    # command line
    Case(
        "command line",
        "--num_fewshot 2 --tasks pce_smoke",
        "--num_fewshot 2: pce tasks (pce_smoke) take no few-shot examples (their demonstrations are items of the "
        "prompt); leave --num_fewshot out",
        cli_args(num_fewshot=2, tasks=["pce_smoke"]),
    ),
    Case(
        "command line",
        "--output_path DIR/notes.txt/out (under a file)",
        "--output_path='DIR/notes.txt/out': DIR/notes.txt is a file, not a folder",
        with_files(cli_args(output_path="DIR/notes.txt/out"), **{"notes.txt": "x"}),
    ),
    Case(
        "command line",
        "--output_path DIR/notes.txt/results.json (under a file)",
        "--output_path='DIR/notes.txt/results.json': DIR/notes.txt is a file, not a folder",
        with_files(cli_args(output_path="DIR/notes.txt/results.json"), **{"notes.txt": "x"}),
    ),
    # prompts
    Case(
        "prompts",
        "parallel_prompt([], query)",
        "parallel_prompt: items is empty; give at least one item",
        prompt("parallel_prompt", [], "Q:"),
    ),
    Case(
        "prompts",
        'parallel_prompt(["a\\ue002"], query)',
        "parallel_prompt: items[0] already contains a structure marker '\\ue002'",
        prompt("parallel_prompt", ["a\ue002"], "Q:"),
    ),
    Case(
        "prompts",
        "a prompt with two query markers `\\ue003` (pce prompts joined as few-shot examples)",
        "split_prompt: expected exactly one query marker (U+E003), found 2",
        prompt("split_prompt", "\ue002a\ue003q\ue003r"),
    ),
    Case(
        "prompts",
        "a structure marker inside the sink (`\\ue000` ... `\\ue001`)",
        "split_prompt: markers nested inside the sink text",
        prompt("split_prompt", "\ue000a\ue002b\ue001\ue002c\ue003q"),
    ),
    # sweep
    Case(
        "sweep",
        "sweep --P 4,abc",
        "lm-eval-parallel sweep: error: P='abc' must be a positive integer",
        command("sweep", *SWEEP, "--P", "4,abc"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --grid top_k=1,x",
        "lm-eval-parallel sweep: error: top_k='x' must be a positive integer",
        command("sweep", *SWEEP, "--grid", "top_k=1,x"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --grid top_kk=1",
        "lm-eval-parallel sweep: error: --grid top_kk=...: 'top_kk' is not a parallel_hf setting; did you mean "
        "'top_k'? the model loads once, so its own arguments go in --model_args (settings: ...",
        command("sweep", *SWEEP, "--grid", "top_kk=1"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --grid P=2,4",
        "lm-eval-parallel sweep: error: --grid P=...: give P values with --P and methods with --methods",
        command("sweep", *SWEEP, "--grid", "P=2,4"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --time_limit 0",
        "lm-eval-parallel sweep: error: --time_limit '0' is not allowed: a number of seconds > 0",
        command("sweep", *SWEEP, "--time_limit", "0"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --model_args P=2",
        "lm-eval-parallel sweep: error: P must not be in --model_args; give them with --P / --methods",
        command("sweep", *SWEEP[2:], "--model_args", "pretrained=DIR,P=2"),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --config DIR/sweep.yaml (with a key grids)",
        "lm-eval-parallel sweep: error: --config 'DIR/sweep.yaml': unknown key 'grids'; did you mean 'grid'? "
        "(keys: the flags' names, and P, methods, grid, context_cache_mb, time_limit)",
        command("sweep", "--config", "DIR/sweep.yaml", setup=files(**{"sweep.yaml": "grids: {top_k: [1]}\n"})),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --output_path DIR/notes.txt/out (under a file)",
        "lm-eval-parallel sweep: error: --output_path='DIR/notes.txt/out': DIR/notes.txt is a file, not a folder",
        command("sweep", *SWEEP[:4], "--output_path", "DIR/notes.txt/out", setup=files(**{"notes.txt": "x"})),
        CommandFailed,
    ),
    Case(
        "sweep",
        "sweep --tasks nope_task",
        "lm-eval-parallel sweep: error: Tasks not found: nope_task",
        command("sweep", *SWEEP),
        CommandFailed,
    ),
    # leaderboard and check
    Case(
        "leaderboard and check",
        "leaderboard DIR/empty --out DIR/board (no results files)",
        "error: no lm-eval results files with task results under DIR/empty; nothing written to DIR/board",
        command("leaderboard", "DIR/empty", "--out", "DIR/board", setup=files(**{"empty/": ""})),
        CommandFailed,
    ),
    Case(
        "leaderboard and check",
        "leaderboard DIR/nope --out DIR/board",
        "error: no such file or directory: DIR/nope",
        command("leaderboard", "DIR/nope", "--out", "DIR/board"),
        CommandFailed,
    ),
    Case(
        "leaderboard and check",
        "leaderboard DIR --out DIR/notes.txt (a file)",
        "error: --out='DIR/notes.txt': DIR/notes.txt is a file, not a folder",
        command("leaderboard", "DIR", "--out", "DIR/notes.txt", setup=files(**{"notes.txt": "x"})),
        CommandFailed,
    ),
    Case(
        "leaderboard and check",
        "check DIR --baseline DIR/missing.json",
        "error: no such file or directory: DIR/missing.json",
        command("check", "DIR", "--baseline", "DIR/missing.json"),
        CommandFailed,
    ),
    Case(
        "leaderboard and check",
        "check DIR --baseline B --tolerance -1",
        "error: --tolerance must be >= 0",
        command("check", "DIR", "--baseline", "DIR/b.json", "--tolerance", "-1"),
        CommandFailed,
    ),
    # metadata (--metadata, read by the tasks' loaders before any data file or tokenizer)
    Case(
        "metadata",
        '--metadata \'{"pce_seed": "abc"}\'',
        "pce_seed='abc' must be an integer >= 0 and < 4294967296",
        task_loader("synthetic", "load_ruler", pce_variant="mk2", pce_length="1k", pce_seed="abc"),
        error=Exception,
    ),
    Case(
        "metadata",
        '--metadata \'{"pce_fit": "maybe"}\'',
        "pce_fit='maybe' is not a boolean; use true or false",
        task_loader("ppl", "load_ppl", pce_dataset="pg19", pce_length="1k", pce_fit="maybe"),
        error=Exception,
    ),
    Case(
        "metadata",
        "--metadata '{\"pce_sed\": 7}'",
        "unknown task option 'pce_sed'; did you mean 'pce_seed'? ...",
        task_loader("synthetic", "load_json_kv", pce_length="1k", pce_sed=7),
        error=Exception,
    ),
    # data files ($PCE_DATA_DIR)
    Case(
        "data files",
        "an ICL training row with an empty label",
        "DIR/data/icl/banking77/train.csv, line 3: column 'category' is empty; ...",
        task_loader(
            "icl",
            "load_icl",
            pce_dataset="banking77",
            pce_length="4k",
            model=True,
            data={
                "icl/banking77/train.csv": 'text,category\n"a question",refund\n"another one",\n',
                "icl/banking77/test.csv": 'text,category\n"q",refund\n',
                "icl/banking77/categories.json": '["refund"]',
            },
        ),
        error=Exception,
    ),
]

# ---------------------------------------------------------------------------------------------- the page


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _input(text: str) -> str:
    """An input: as written when it has backticks, else code up to a trailing `` (remark)``."""
    if "`" in text:
        return text.replace("|", "\\|")
    code, sep, remark = text.partition(" (")
    return _code(code) + (f" ({remark}" if sep else "")


def render(cases: list[Case] = CASES) -> str:
    lines = [
        "# Input validation",
        "",
        "Every bad input below is refused before any heavy work (model loading, document building, scoring)",
        "with one line. From `lm-eval-parallel` it is `lm-eval-parallel: error: <message>` on stderr and exit",
        "status 2 (set `LM_EVAL_PARALLEL_TRACEBACK=1` for the traceback); from the stock `lm_eval` it is the",
        "last line of the traceback. `DIR` stands for a folder of yours; `...` for a list that goes on.",
        "",
        "Generated from `tests/validation_cases.py` by `python tests/validation_cases.py`; `tests/test_validation.py`",
        "checks every message below against the code and that this page is current.",
    ]
    for area, about in AREAS.items():
        rows = [case for case in cases if case.area == area]
        if not rows:
            continue
        lines += ["", f"## {area}", "", about, "", "| input | message |", "|---|---|"]
        lines += [f"| {_input(case.given)} | {_code(case.message)} |" for case in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(HERE, ".."))
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(render())
    print(f"wrote {os.path.normpath(DOC)} ({len(CASES)} validations)")
