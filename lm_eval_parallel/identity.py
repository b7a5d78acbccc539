"""What names the weights of a run: part of the ``--use_cache`` file name, so that another model given at
the same cache path never reads the first model's answers.

A local model is its resolved path plus the size and modification time of its files (a model saved again at
the same path is another model); a hub model is its id, revision and the commit it was loaded from.
"""

from __future__ import annotations

import hashlib
import json
import os


def file_stamps(path: str) -> list[list]:
    """``[name, size, mtime_ns]`` of a file, or of the files directly in a folder."""
    if os.path.isfile(path):
        stat = os.stat(path)
        return [[os.path.basename(path), stat.st_size, stat.st_mtime_ns]]
    stamps = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            stat = os.stat(full)
            stamps.append([name, stat.st_size, stat.st_mtime_ns])
    return stamps


def source_identity(source):
    """A ``pretrained`` / ``peft`` / ``delta`` value: local path with file stamps, hub id, or a model object."""
    if source is None:
        return None
    if not isinstance(source, str):  # a model object passed by the Python API
        return getattr(getattr(source, "config", None), "_name_or_path", None) or type(source).__name__
    if os.path.exists(source):
        path = os.path.realpath(source)
        return {"path": path, "files": file_stamps(path)}
    return source


def model_identity(
    pretrained, *, gguf_file=None, revision=None, subfolder=None, dtype=None, peft=None, delta=None, commit=None
) -> dict:
    """Everything that picks the weights a run scores with (``dtype``: the dtype the model was loaded in)."""
    return {
        "pretrained": source_identity(pretrained),
        "gguf_file": gguf_file,
        "revision": revision,
        "subfolder": subfolder or "",
        "dtype": None if dtype is None else str(dtype),
        "peft": source_identity(peft),
        "delta": source_identity(delta),
        "commit": commit,
    }


def identity_of(hflm, pretrained, gguf_file=None, subfolder=None) -> dict:
    """:func:`model_identity` of a loaded lm-eval ``HFLM`` (the arguments as they were given to it)."""
    model = getattr(hflm, "_model", None)
    return model_identity(
        pretrained,
        gguf_file=gguf_file,
        revision=getattr(hflm, "revision", None),
        subfolder=subfolder,
        dtype=getattr(model, "dtype", None),
        peft=getattr(hflm, "peft", None),
        delta=getattr(hflm, "delta", None),
        commit=getattr(getattr(model, "config", None), "_commit_hash", None),
    )


def identity_fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
