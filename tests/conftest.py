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


@pytest.fixture(scope="session")
def shapes_dissection(tmp_path_factory):
    """A saved dissection (a tiny untrained small ResNet, layers ``layer2.0.act2`` and ``fc``)
    on ``ShapesWorld(**SHAPES_PROBE, split="val")`` with the ``annotations`` embedder and the
    ``shapes`` concept set; returns ``(folder, probe)``. Shared: copy the folder before
    writing into it."""
    from _helpers import SHAPES_PROBE
    from discover.data import ShapesWorld
    from discover.dissection.core import dissect
    from discover.nn.models import create_model

    probe = ShapesWorld(**SHAPES_PROBE, split="val")
    torch.manual_seed(0)
    model = create_model(
        "small_resnet", U=2, num_classes=10, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    result = dissect(
        model,
        ["layer2.0.act2", "fc"],
        probe,
        "shapes",
        "annotations",
        "soft_wpmi",
        similarity_params={"top_k": 8},
        null_repeats=0,
        cache_dir=None,
        progress=False,
    )
    return result.save(tmp_path_factory.mktemp("shapes") / "dissection"), probe
