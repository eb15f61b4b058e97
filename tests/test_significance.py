"""Calibrated significance of labels against a shuffled-image null."""

import math

import pytest
import torch

from discover.dissection.significance import SIGNIFICANT_Z, label_significance
from discover.dissection.similarity import cos, cos3


def _layer(n=1500, concepts=40, real=6, noise=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = (torch.rand(n, concepts, generator=g) < 0.2).float()
    detectors = P[:, :real] + 0.3 * torch.randn(n, real, generator=g)
    return P, torch.cat([detectors, torch.randn(n, noise, generator=g)], dim=1), real


@pytest.mark.parametrize("score_fn", [cos, cos3])
def test_detectors_are_above_chance_and_noise_units_are_not(score_fn):
    P, Q, real = _layer()
    best = score_fn(P, Q).amax(dim=1)
    sig = label_significance(P, Q, best, score_fn, repeats=16)
    assert bool(sig.above_chance[:real].all())
    assert sig.above_chance[real:].float().mean() < 0.03  # about the nominal rate
    assert abs(float(sig.z[real:].mean())) < 0.3  # the null is centred on noise units
    assert torch.allclose(sig.p, 0.5 * torch.special.erfc(sig.z / math.sqrt(2)))


def test_seeded_and_deterministic():
    P, Q, _ = _layer(n=300, noise=20)
    best = cos(P, Q).amax(dim=1)
    a = label_significance(P, Q, best, cos, repeats=4, seed=1)
    b = label_significance(P, Q, best, cos, repeats=4, seed=1)
    c = label_significance(P, Q, best, cos, repeats=4, seed=2)
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, c.z)


def test_bad_inputs_name_the_problem():
    P, Q, _ = _layer(n=100, noise=4)
    best = cos(P, Q).amax(dim=1)
    with pytest.raises(ValueError, match="repeats must be >= 2"):
        label_significance(P, Q, best, cos, repeats=1)
    with pytest.raises(ValueError, match="P has 99 images and Q 100"):
        label_significance(P[:99], Q, best, cos)
    assert SIGNIFICANT_Z == 3.0
