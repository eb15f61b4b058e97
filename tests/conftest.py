import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

# The suite runs as two pytest-xdist workers on two cores: one intra-op thread each keeps
# them from fighting over cores (OpenMP threads spin-wait when oversubscribed).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _dissection_cache(tmp_path_factory):
    """dissect() caches under the cache root by default (cache_dir="auto"): the suite's
    entries go to a temporary folder, not the user's cache (whose kernels and data sets the
    tests still use)."""
    import discover.dissection.core

    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(discover.dissection.core, "cache_root", lambda: root)
        yield root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
