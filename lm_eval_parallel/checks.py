"""Checks of a run's inputs that need no model: output paths, devices, dtypes, ``hf`` model_args, few-shot.

Each check raises a one-line ``ValueError`` naming the bad value and what is allowed, before any heavy work.
Stdlib only at import (``config.py`` and the start-up hook import this module); torch is imported by the
device and dtype checks only.
"""

from __future__ import annotations

import os

TASK_PREFIX = "pce_"
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


# ---------------------------------------------------------------------------------------------- paths


def nearest_existing(path: str) -> str:
    """``path`` or the closest of its parents that exists (a path under a file stops at the file)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    return current


def _check_folder(folder: str, given: str, what: str) -> None:
    """``folder`` exists as a writable folder, or can be made: its closest existing parent is one."""
    existing = nearest_existing(folder)
    if not os.path.isdir(existing):
        raise ValueError(f"{what}={given!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what}={given!r}: {existing} is not writable")


def check_writable_dir(folder: str, what: str) -> None:
    """Files can be written in ``folder`` (made if missing)."""
    _check_folder(folder, folder, what)


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be written (created or appended to), its folders made."""
    if os.path.isdir(path):
        raise ValueError(f"{what}={path!r} is a folder; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{what}={path!r} is not writable")
    _check_folder(os.path.dirname(os.path.abspath(path)), path, what)


def check_output_path(path: str | None, what: str = "--output_path") -> None:
    """lm-eval's ``--output_path``: a ``.json`` file name (results go beside it) or a folder."""
    if not path:
        return
    if str(path).endswith(".json"):
        check_writable_file(str(path), what)
    else:
        check_writable_dir(str(path), what)


# ---------------------------------------------------------------------------------------------- model


def check_device(device) -> None:
    """Devices lm-eval's HFLM would take as given although torch cannot reach them. (HFLM picks a device
    itself for names it does not list, e.g. the CLI's default ``cuda:0`` on a machine without CUDA.)"""
    if device is None:
        return
    name = str(device)
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but torch finds no CUDA device here; use --device cpu")
    if name in ("mps", "mps:0") and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r}, but torch finds no MPS device here; use --device cpu")


def check_dtype(dtype) -> None:
    """``dtype=``: auto or a floating-point torch dtype (lm-eval reads it as ``getattr(torch, dtype)``)."""
    if dtype is None or not isinstance(dtype, str) or dtype == "auto":
        return
    import torch

    value = getattr(torch, dtype, None)
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")


def check_hf_options(args: dict) -> None:
    """``--model hf`` with options of ``parallel_hf`` (P, method, ...): they would reach from_pretrained."""
    from .config import SETTINGS

    own = [name for name in args if name in SETTINGS]
    if own:
        verb = "is a parallel_hf option" if len(own) == 1 else "are parallel_hf options"
        raise ValueError(f"{', '.join(own)} {verb}; use --model parallel_hf")


# ---------------------------------------------------------------------------------------------- tasks


def task_name(task) -> str | None:
    """The name of a task given as a string or as a built task object."""
    if isinstance(task, str):
        return task
    name = getattr(getattr(task, "config", None), "task", None)
    return name if isinstance(name, str) else None


def pce_task_names(tasks) -> list[str]:
    names = [task_name(t) for t in (tasks or [])]
    return [n for n in names if n and n.startswith(TASK_PREFIX)]


def check_num_fewshot(num_fewshot, tasks) -> None:
    """pce prompts are one set of items and one query; lm-eval's few-shot examples would be more marked
    prompts before it (ICL tasks already hold their demonstrations as items)."""
    ours = pce_task_names(tasks)
    if num_fewshot and ours:
        raise ValueError(
            f"--num_fewshot {num_fewshot}: pce tasks ({', '.join(ours)}) take no few-shot examples "
            "(their demonstrations are items of the prompt); leave --num_fewshot out"
        )
