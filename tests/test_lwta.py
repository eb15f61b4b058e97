import math

import pytest
import torch
from torch import nn

from discover import LWTA, average_logits, capture_winners, eval_policy, set_eval_policy
from discover.nn.lwta import gumbel_noise

SHAPES = {"linear": (5, 24), "tokens": (3, 7, 48), "conv": (2, 24, 5, 6)}


def _blocks(mask: torch.Tensor, U: int) -> torch.Tensor:
    """Per-block winner counts, block axis last."""
    if mask.dim() == 4:
        n, c, h, w = mask.shape
        return mask.reshape(n, c // U, U, h, w).sum(2)
    return mask.reshape(*mask.shape[:-1], mask.shape[-1] // U, U).sum(-1)


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("U", [2, 4, 8])
@pytest.mark.parametrize("mode", ["train", "sample", "argmax"])
def test_one_winner_per_block_and_sparsity_is_one_over_U(kind, U, mode):
    layer = LWTA(U)
    layer.train(mode == "train")
    if mode != "train":
        layer.eval_policy = mode
    layer.capture = True
    x = (torch.randn(SHAPES[kind]) - 2).requires_grad_(mode == "train")  # many negative winners
    y = layer(x)
    mask = layer.last_mask
    assert mask.shape == x.shape
    assert torch.equal(_blocks(mask, U), torch.ones_like(_blocks(mask, U)))
    assert mask.float().mean().item() == pytest.approx(1 / U, abs=0)
    # the winner keeps its linear pre-activation (possibly negative); losers are exactly 0
    assert torch.equal(y[mask], x[mask].detach())
    assert torch.all(y[~mask] == 0)
    assert (y[mask] < 0).any()


def test_conv_competition_is_across_consecutive_channels_at_each_position():
    layer = LWTA(4).eval()
    layer.eval_policy = "argmax"
    x = torch.randn(2, 8, 3, 3)
    y = layer(x)
    # channels 0-3 form block 0 at every (h, w): the survivor is their max there
    block = x[:, :4]
    expected = torch.where(block == block.max(dim=1, keepdim=True).values, block, 0)
    assert torch.equal(y[:, :4], expected)


@pytest.mark.parametrize("kind", ["tokens", "conv"])
def test_straight_through_gradient_matches_the_reference_formula(kind):
    """Same noise: the fused layer equals ``h * (hard - soft.detach() + soft)``."""
    tau, U = 1.67, 4
    shape = (3, 5, 16) if kind == "tokens" else (2, 16, 3, 5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, dtype=torch.float64)

    torch.manual_seed(123)
    y = LWTA(U, tau=tau)(x)
    (y * upstream).sum().backward()
    grad_fused = x.grad.clone()

    # The same noise: the layer draws it in the input's memory order.
    x.grad = None
    torch.manual_seed(123)
    g = gumbel_noise(x.detach())
    h, dim = (x.reshape(3, 5, 4, U), -1) if kind == "tokens" else (x.reshape(2, 4, U, 3, 5), 2)
    g = g.reshape(h.shape)
    soft = torch.softmax((h + g) / tau, dim=dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    y_ref = (h * (hard - soft.detach() + soft)).reshape(x.shape)
    (y_ref * upstream).sum().backward()

    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(grad_fused, x.grad, atol=1e-10)


def test_gradients_reach_inputs_and_weights():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        LWTA(4),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        LWTA(8),
        nn.Linear(16, 3),
    )
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    net(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loser_logits_get_gradient_through_the_soft_sample():
    x = torch.randn(64, 8, requires_grad=True)
    layer = LWTA(8)
    layer.capture = True
    layer(x).sum().backward()
    losers = ~layer.last_mask
    assert (x.grad[losers] != 0).any()


def test_seeding_makes_sampling_reproducible():
    layer = LWTA(4).eval()
    x = torch.randn(16, 64)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    torch.manual_seed(8)
    c = layer(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_argmax_policy_is_deterministic_and_picks_the_largest():
    layer = LWTA(4).eval()
    layer.eval_policy = "argmax"
    x = torch.randn(16, 64)
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    blocks = x.reshape(16, 16, 4)
    expected = torch.where(blocks == blocks.max(-1, keepdim=True).values, blocks, 0)
    assert torch.equal(a, expected.reshape(16, 64))


def test_sample_policy_draws_winners_from_the_softmax():
    layer = LWTA(2).eval()  # block logits (0, log 3): unit 1 wins with probability 3/4
    x = torch.tensor([[0.0, math.log(3.0)]]).repeat(40_000, 1)
    y = layer(x)
    assert (y[:, 1] != 0).float().mean().item() == pytest.approx(0.75, abs=0.01)


def test_temperature_never_changes_the_winner():
    x = torch.randn(32, 48)
    outs = []
    for tau in (0.1, 1.67, 10.0):
        torch.manual_seed(3)
        outs.append(LWTA(4, tau=tau)(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("activation", [None, nn.ReLU(), nn.GELU()])
def test_U1_behaves_like_the_replaced_activation(activation):
    x = torch.randn(4, 10, requires_grad=True)
    layer = LWTA(1, activation=activation)
    expected = x if activation is None else activation(x)
    for training in (True, False):
        layer.train(training)
        assert torch.equal(layer(x), expected)


def test_capture_is_off_by_default_and_context_manager_restores():
    net = nn.Sequential(nn.Linear(4, 8), LWTA(2), nn.Linear(8, 8), LWTA(4))
    net(torch.randn(2, 4))
    assert all(m.last_winners is None for m in net if isinstance(m, LWTA))
    with capture_winners(net) as layers:
        net(torch.randn(3, 4))
        assert set(layers) == {"1", "3"}
        assert layers["1"].last_mask.shape == (3, 8)
        assert layers["3"].last_winners.shape == (3, 2)
    assert all(not m.capture and m.last_winners is None for m in net if isinstance(m, LWTA))


def test_capture_context_removes_state_on_exceptions():
    net = nn.Sequential(nn.Linear(4, 8), LWTA(2))
    with pytest.raises(RuntimeError):
        with capture_winners(net):
            raise RuntimeError("boom")
    assert not net[1].capture


def test_eval_policy_helpers():
    net = nn.Sequential(nn.Linear(4, 8), LWTA(2), LWTA(4))
    assert set_eval_policy(net, "argmax") == 2
    with eval_policy(net, "sample"):
        assert {net[1].eval_policy, net[2].eval_policy} == {"sample"}
    assert {net[1].eval_policy, net[2].eval_policy} == {"argmax"}
    with pytest.raises(ValueError, match="unknown eval policy"):
        set_eval_policy(net, "mean")


def test_average_logits_matches_mean_of_passes_and_skips_deterministic():
    net = nn.Sequential(nn.Linear(6, 16), LWTA(4), nn.Linear(16, 3)).eval()
    x = torch.randn(5, 6)
    torch.manual_seed(11)
    avg = average_logits(net, x, samples=6)
    torch.manual_seed(11)
    manual = torch.stack([net(x) for _ in range(6)]).mean(0)
    assert torch.allclose(avg, manual, atol=1e-6)
    set_eval_policy(net, "argmax")
    assert torch.equal(average_logits(net, x, samples=6), net(x))


@pytest.mark.parametrize("U", [0, -2, 2.0, True])
def test_invalid_U(U):
    with pytest.raises(ValueError, match="U must be an integer >= 1"):
        LWTA(U)


def test_indivisible_width_names_layer_K_and_U():
    layer = LWTA(24, name="blocks.3.mlp.act")
    with pytest.raises(ValueError, match=r"'blocks.3.mlp.act'.*K=100.*U=24"):
        layer(torch.randn(2, 100))
    with pytest.raises(ValueError, match=r"C=10 .*U=24"):
        layer(torch.randn(2, 10, 4, 4))


@pytest.mark.parametrize("shape", [(), (1, 2, 2, 2, 4)])
def test_unsupported_rank(shape):
    with pytest.raises(ValueError, match="unsupported input rank"):
        LWTA(2)(torch.randn(shape))


def test_explicit_dim_for_channels_last_inputs():
    layer = LWTA(4, dim=-1).eval()
    layer.capture = True
    layer(torch.randn(2, 3, 3, 8))  # (N, H, W, C)
    assert layer.last_mask.reshape(2, 3, 3, 2, 4).sum(-1).eq(1).all()


def test_unknown_eval_policy():
    with pytest.raises(ValueError, match="unknown eval_policy 'deterministic'"):
        LWTA(2, eval_policy="deterministic")


@pytest.mark.parametrize("policy", ["sample", "argmax"])
def test_eval_mode_is_differentiable_for_attribution(policy):
    """Gradients w.r.t. inputs in eval mode flow to the winners only (no soft path)."""
    layer = LWTA(4, eval_policy=policy).eval()
    layer.capture = True
    x = torch.randn(6, 16, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, layer.last_mask.float())


# -- the fused kernel and the competition temperature ---------------------------------------
from discover.nn import lwta_kernel  # noqa: E402
from discover.nn.lwta import TemperatureSchedule, set_temperature  # noqa: E402

needs_kernel = pytest.mark.skipif(
    not lwta_kernel.available(), reason="no C compiler: the fused kernel cannot be built"
)


@needs_kernel
@pytest.mark.parametrize(
    "shape",
    [(257, 4, 1), (33, 3, 1), (7, 8, 50), (2, 2, 5000), (40, 24, 1), (5, 16, 3)],
    ids=["tokens-U4", "tokens-U3", "conv-U8", "big-map", "tokens-U24", "conv-U16"],
)
@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0])
def test_fused_kernel_matches_the_unfused_code_with_the_same_noise(shape, temperature):
    tau = 1.67
    h = torch.randn(shape)
    noise = gumbel_noise(h)
    out, hard, soft = lwta_kernel.forward(h, temperature, tau, noise=noise)
    logits = h + temperature * noise
    expected_hard = torch.zeros_like(h, dtype=torch.bool).scatter_(
        1, logits.argmax(1, keepdim=True), True
    )
    assert torch.equal(hard, expected_hard)
    assert torch.equal(hard.sum(1), torch.ones(shape[0], shape[2], dtype=torch.long))
    assert torch.equal(out, h * expected_hard)
    out_eval, hard_eval, soft_eval = lwta_kernel.forward(h, temperature, None, noise=noise)
    assert soft_eval is None and torch.equal(hard_eval, hard) and torch.equal(out_eval, out)
    expected_soft = torch.softmax(logits / tau, dim=1)
    assert torch.allclose(soft, expected_soft, atol=1e-6)

    grad_out = torch.randn(shape)
    x = h.clone().requires_grad_()
    y = x * (
        expected_hard.float()
        - expected_soft.detach()
        + torch.softmax((x + temperature * noise) / tau, 1)
    )
    y.backward(grad_out)
    grad = lwta_kernel.backward(grad_out, h, soft, hard, tau)
    assert torch.allclose(grad, x.grad, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fused_kernel_keeps_nan_and_inf_visible(bad):
    """Issue 22: the kernels are built with NaN semantics (no -ffinite-math-only), so a broken
    input shows up as a non-finite output of its block, as in the unfused code, and the
    recorder can refuse it; the other blocks are untouched."""
    h = torch.randn(6, 4, 5)
    h[2, 1, 3] = bad
    noise = gumbel_noise(h)
    for tau in (1.67, None):
        out, _, soft = lwta_kernel.forward(h, 1.0, tau, noise=noise)
        broken = ~torch.isfinite(out if soft is None else soft)
        assert broken[2, :, 3].any()
        assert not broken.sum(1).bool().flatten().tolist().count(True) > 1
    healthy = torch.ones(6, 5, dtype=torch.bool)
    healthy[2, 3] = False
    out, _, _ = lwta_kernel.forward(h, 1.0, None, noise=noise)
    assert torch.isfinite(out.permute(0, 2, 1)[healthy]).all()


@needs_kernel
@pytest.mark.parametrize("kind", ["tokens", "conv"])
def test_fused_layer_trains_with_one_winner_per_block(kind):
    """The layer takes the fused path for float32 inputs: exact winners, finite gradients."""
    shape = (4, 6, 32) if kind == "tokens" else (3, 32, 4, 5)
    x = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(shape)
    layer = LWTA(4, temperature=0.5).train()
    layer.capture = True
    y = layer(x)
    assert lwta_kernel.supports(x)
    (y * upstream).sum().backward()
    mask = layer.last_mask
    assert torch.equal(y, x.detach() * mask)
    assert torch.equal(_blocks(mask, 4), torch.ones_like(_blocks(mask, 4)))
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_winners_are_drawn_from_softmax_over_temperature(fused, temperature):
    """Chi-square style check: winner frequencies match softmax(h_b / T)."""
    if fused and not lwta_kernel.available():
        pytest.skip("no C compiler")
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    x = logits.repeat(50_000, 1)
    layer = LWTA(4, temperature=temperature).eval()
    layer.capture = True
    torch.manual_seed(0)
    with lwta_kernel.enabled(fused):
        layer(x)
    counts = layer.last_mask.sum(0).double()
    expected = torch.softmax(logits / temperature, 0).double() * len(x)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_temperature_zero_is_argmax_also_in_training(fused):
    if fused and not lwta_kernel.available():
        pytest.skip("no C compiler")
    x = torch.randn(64, 48, requires_grad=True)
    layer = LWTA(4, temperature=0.0).train()
    with lwta_kernel.enabled(fused):
        y = layer(x)
    blocks = x.detach().reshape(64, 12, 4)
    expected = torch.where(blocks == blocks.max(-1, keepdim=True).values, blocks, 0)
    assert torch.equal(y.detach(), expected.reshape(64, 48))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channels_last_conv_maps_compete_over_channels_and_stay_channels_last(fused, training):
    """The same winners, values and gradients as the contiguous map (T = 0: no noise), and
    the output and captured masks keep the layout the next convolution reads."""
    if fused and not lwta_kernel.available():
        pytest.skip("no C compiler")
    x, weights = torch.randn(3, 8, 5, 4), torch.rand(3, 8, 5, 4)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        h = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        layer = LWTA(4, temperature=0.0, eval_policy="argmax").train(training)
        with lwta_kernel.enabled(fused), capture_winners(layer) as captured:
            y = layer(h)
            (y * weights).sum().backward()
            results.append((y.detach(), h.grad, captured[""].last_mask, captured[""].last_winners))
        assert y.is_contiguous(memory_format=layout)
    (y0, g0, m0, w0), (y1, g1, m1, w1) = results
    assert torch.equal(y0, y1) and torch.equal(m0, m1) and torch.equal(w0, w1)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)  # the kernel sums in another order
    mask, winners = results[0][2], results[0][3]
    assert mask.reshape(3, 2, 4, 5, 4).sum(2).eq(1).all() and winners.shape == (3, 2, 5, 4)


def test_fused_sampling_is_seeded_and_thread_count_independent():
    if not lwta_kernel.available():
        pytest.skip("no C compiler")
    layer = LWTA(4).eval()
    x = torch.randn(256, 64)
    threads = torch.get_num_threads()
    torch.manual_seed(5)
    a = layer(x)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        b = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)


def test_temperature_validation_and_set_temperature():
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        LWTA(4, temperature=-0.1)
    net = nn.Sequential(nn.Linear(4, 8), LWTA(2), LWTA(4))
    assert set_temperature(net, 0.25) == 2
    assert net[1].temperature == net[2].temperature == 0.25
    assert "temperature=0.25" in repr(net[1])


@pytest.mark.parametrize("shape", ["cosine", "linear", "exp"])
def test_temperature_schedule_reaches_its_final_value(shape):
    schedule = TemperatureSchedule(start=1.0, final=0.05, anneal=0.6, shape=shape)
    values = [schedule.at(i / 100) for i in range(101)]
    assert values[0] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:], strict=False))  # monotone
    assert values[60] == pytest.approx(0.05) and values[-1] == pytest.approx(0.05)
    assert TemperatureSchedule(start=1.0, final=1.0).at(0.5) == 1.0


def test_temperature_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="anneal must be a fraction"):
        TemperatureSchedule(anneal=0)
    with pytest.raises(ValueError, match="shape 'exp' needs"):
        TemperatureSchedule(start=1.0, final=0.0, shape="exp")
    with pytest.raises(ValueError, match="unknown shape"):
        TemperatureSchedule(shape="step")


@needs_kernel
def test_fused_kernel_noise_is_finite_at_the_extreme_random_bits():
    """u = 1 would give -log(u) = 0 and infinite noise (a NaN loss in training)."""
    values = [lwta_kernel.gumbel_of(bits) for bits in (0, 1, 2**31, 2**32 - 2, 2**32 - 1)]
    assert all(math.isfinite(v) for v in values)
    assert values[0] < -2.5 and values[-1] > 15  # the tails of the Gumbel distribution


def test_winner_peakedness_measures_the_top_probability():
    from discover.nn.lwta import winner_peakedness

    net = nn.Sequential(nn.Identity(), LWTA(2), nn.Identity()).eval()
    x = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # top probabilities 3/4 and 1/2
    assert winner_peakedness(net, x) == {"1": pytest.approx(0.625)}
    net[1].temperature = 0.5  # softmax(h / 0.5): 9/10 and 1/2
    assert winner_peakedness(net, x) == {"1": pytest.approx(0.7)}
    net[1].temperature = 0.0
    assert winner_peakedness(net, x) == {"1": 1.0}
    assert not net[1]._forward_pre_hooks  # hooks removed
