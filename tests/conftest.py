import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; it must be on before triton is imported.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# Tests never write the user's cache folder: converted GGUFs and built documents go to a folder of this run
# (subprocesses inherit it). An explicit PCE_CACHE_DIR is kept.
if "PCE_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["PCE_CACHE_DIR"] = tempfile.mkdtemp(prefix="pce-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PCE_CACHE_DIR"], ignore_errors=True)  # removed when the run ends

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from tiny_models import save_tiny

    return save_tiny(str(tmp_path_factory.mktemp("tiny") / "llama"), "llama")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Saved tiny models of every family (model + tokenizer folders)."""
    from tiny_models import FAMILIES, save_tiny

    root = tmp_path_factory.mktemp("tiny_all")
    return {f: save_tiny(str(root / f), f) for f in FAMILIES}
