import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

# The suite runs as two pytest-xdist workers on two cores: one intra-op thread each keeps
# them from fighting over cores (OpenMP threads spin-wait when oversubscribed).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
