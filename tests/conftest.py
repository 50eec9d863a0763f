import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NNSLIM_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def digits():
    from nnslim.testbeds import get_testbed

    tb = get_testbed("digits-cnn")
    return tb, tb.load_model()


@pytest.fixture(scope="session")
def minilm():
    from nnslim.testbeds import get_testbed

    tb = get_testbed("minilm", n_eval=64)
    return tb, tb.load_model()


def files_digest(directory):
    """{relative path: sha256} of every file under directory, to prove inputs stay untouched."""
    import hashlib
    from pathlib import Path

    root = Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
