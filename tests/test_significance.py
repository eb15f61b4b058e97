"""Calibrated significance of labels against a shuffled-image null."""

import math

import pytest
import torch

from discover.dissection.significance import SIGNIFICANT_P, label_significance
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
    assert sig.above_chance[real:].float().mean() < 0.01  # about the nominal rate
    assert abs(float(sig.z[real:].mean())) < 0.3  # the null is centred on noise units
    # p: the Gumbel tail by moments, decreasing in z
    beta = sig.null_std.double() * math.sqrt(6) / math.pi
    location = sig.null_mean.double() - 0.5772156649015329 * beta
    expected = 1 - torch.exp(-torch.exp(-(best.double() - location) / beta))
    assert torch.allclose(sig.p.double(), expected, atol=1e-6)


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
    assert SIGNIFICANT_P == 1e-3
