"""Sparse deterministic inference: the winners-only second product of an LWTA MLP equals the
dense computation, and the sparse path steps aside wherever it would change behaviour."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp

from discover import create_model
from discover.errors import InputError
from discover.nn import sparse
from discover.nn.lwta import LWTA, set_eval_policy
from discover.nn.sparse import SparseLWTAMlp, sparse_linear, sparsify_mlps


def _dense_reference(h: torch.Tensor, U: int, linear: torch.nn.Linear) -> torch.Tensor:
    """The plain path: argmax LWTA (first unit on ties), then the full Linear."""
    layer = LWTA(U=U, eval_policy="argmax").eval()
    with torch.no_grad():
        return linear(layer(h))


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize(
    ("shape", "U", "out_features", "bias"),
    [
        ((7, 48), 4, 37, True),  # D neither a multiple of 32 nor of 64: every tail path
        ((2, 5, 96), 24, 64, False),  # batch dims, one AVX2 chunk exactly, no bias
        ((3, 384), 2, 96, True),
        ((1, 768), 8, 192, True),
    ],
)
def test_sparse_linear_equals_the_dense_product(kernel, shape, U, out_features, bias):
    if kernel and not sparse.kernel_available():
        pytest.skip("no C compiler here: the kernel path cannot be built")
    torch.manual_seed(0)
    h = torch.randn(*shape)
    linear = torch.nn.Linear(shape[-1], out_features, bias=bias)
    expected = _dense_reference(h, U, linear)
    with torch.no_grad():
        got = sparse_linear(h, U, linear.weight.t().contiguous(), linear.bias, kernel=kernel)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
def test_ties_go_to_the_first_unit_as_in_the_lwta_layer(kernel):
    if kernel and not sparse.kernel_available():
        pytest.skip("no C compiler here")
    torch.manual_seed(1)
    h = torch.randint(-2, 3, (64, 32)).float()  # many exact ties within blocks of 4
    linear = torch.nn.Linear(32, 8)
    expected = _dense_reference(h, 4, linear)
    with torch.no_grad():
        got = sparse_linear(h, 4, linear.weight.t().contiguous(), linear.bias, kernel=kernel)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sparse_linear_rejects_mismatched_shapes_in_one_line():
    with pytest.raises(InputError, match=r"h has 10 units and the weight 12 inputs.*U=4"):
        sparse_linear(torch.randn(2, 10), 4, torch.randn(12, 3))
    with pytest.raises(InputError, match="multiple of U=5"):
        sparse_linear(torch.randn(2, 12), 5, torch.randn(12, 3))


def _count_sparse_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = sparse.sparse_linear

    def spy(h, U, *args, **kwargs):
        calls.append(U)
        return real(h, U, *args, **kwargs)

    monkeypatch.setattr(sparse, "sparse_linear", spy)
    return calls


def _vit(U: int = 8, policy: str = "argmax") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("small_vit", U=U, eval_policy=policy, img_size=32, patch_size=8).eval()


def test_a_cvn_vit_predicts_the_same_with_and_without_the_sparse_path(monkeypatch):
    model = _vit(U=8)
    assert sum(isinstance(m, SparseLWTAMlp) for m in model.modules()) == 6
    x = torch.randn(4, 3, 32, 32)
    calls = _count_sparse_calls(monkeypatch)
    with torch.no_grad():
        fast = model(x)
    assert calls == [8] * 6  # every block's MLP went sparse
    monkeypatch.setattr(sparse, "SPARSE_MIN_U", 10**6)  # force the plain path
    with torch.no_grad():
        plain = model(x)
    assert len(calls) == 6
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.argmax(1), plain.argmax(1))


def test_the_sparse_path_steps_aside_where_it_would_change_behaviour(monkeypatch):
    model = _vit(U=8)
    x = torch.randn(2, 3, 32, 32)
    calls = _count_sparse_calls(monkeypatch)
    model(x)  # gradients wanted: the plain path keeps the autograd graph
    set_eval_policy(model, "sample")
    with torch.no_grad():
        model(x)  # stochastic winners
    set_eval_policy(model, "argmax")
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    seen = []
    act = model.blocks[0].mlp.act
    handle = act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)  # a hook on the LWTA layer (recording, capture) sees its output
    handle.remove()
    assert seen == [torch.Size([2, 17, 384])]
    assert calls == [8] * 5  # only the hooked run, and only its 5 other blocks, went sparse


def test_below_sparse_min_u_the_plain_path_runs(monkeypatch):
    model = _vit(U=2)
    calls = _count_sparse_calls(monkeypatch)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == [2] * 6  # U = 2 is at the measured threshold: sparse
    monkeypatch.setattr(sparse, "SPARSE_MIN_U", 3)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 6


def test_the_threshold_is_the_one_the_benchmark_chose():
    """A default must win its own measurement: SPARSE_MIN_U is the smallest U from which the
    sparse MLP was faster in every shape of the last inference benchmark."""
    results = Path(__file__).resolve().parents[1] / "benchmarks/results/inference_speed.json"
    saved = json.loads(results.read_text())
    assert not saved["quick"] and saved["chosen_min_u"] == sparse.SPARSE_MIN_U
    assert saved["chosen_torch_min_u"] == sparse.SPARSE_TORCH_MIN_U


def test_wrapping_keeps_the_state_dict_and_the_weight_cache_follows_updates():
    torch.manual_seed(0)
    mlp = Mlp(16, 32, act_layer=lambda: LWTA(U=8, eval_policy="argmax"))
    keys = set(mlp.state_dict())
    wrapped = SparseLWTAMlp(mlp).eval()
    assert set(wrapped.state_dict()) == keys
    x = torch.randn(3, 16)
    with torch.no_grad():
        before = wrapped(x)
        wrapped.fc2.weight.mul_(2.0)
        wrapped.fc2.bias.zero_()
        after = wrapped(x)
        expected = F.linear(wrapped.act(wrapped.fc1(x)), wrapped.fc2.weight)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_only_lwta_mlps_are_wrapped_and_others_are_refused_in_one_line():
    dense = create_model("small_vit", img_size=32, patch_size=8)
    assert sparsify_mlps(dense) == 0  # GELU MLPs stay as they are
    with pytest.raises(InputError, match="expected a timm-style Mlp.*got Linear"):
        SparseLWTAMlp(torch.nn.Linear(3, 3))


def test_docs_sparse_inference_example_runs(monkeypatch):
    from _helpers import doc_python_block

    calls = _count_sparse_calls(monkeypatch)
    code = doc_python_block("training.md", "each block's fc2 reads")
    namespace: dict = {}
    exec(compile(code, "docs/training.md[sparse]", "exec"), namespace)
    assert namespace["logits"].shape == (8, 10) and calls == [16] * 6


def test_the_kernel_gives_the_same_bits_for_any_thread_count():
    if not sparse.kernel_available():
        pytest.skip("no C compiler here")
    torch.manual_seed(2)
    h, weight_t, bias = torch.randn(301, 96), torch.randn(96, 70), torch.randn(70)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sparse_linear(h, 8, weight_t, bias)
        torch.set_num_threads(max(2, threads))
        many = sparse_linear(h, 8, weight_t, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_without_the_kernel_the_torch_fallback_takes_over_from_its_own_threshold(monkeypatch):
    calls = _count_sparse_calls(monkeypatch)
    for U, expected in ((2, []), (4, [4] * 6)):
        model = _vit(U=U)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad(), sparse.enabled(False):
            fast = model(x)
            monkeypatch.setattr(sparse, "SPARSE_TORCH_MIN_U", 10**6)
            plain = model(x)
            monkeypatch.setattr(sparse, "SPARSE_TORCH_MIN_U", 3)
        assert calls == expected
        calls.clear()
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_sparse_path_false_forces_the_plain_computation_and_is_restored(monkeypatch):
    model = _vit(U=8)
    calls = _count_sparse_calls(monkeypatch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with sparse.sparse_path(False):
            plain = model(x)
        assert calls == []
        with sparse.enabled(False), sparse.sparse_path(False):  # no kernel: still plain
            model(x)
        assert calls == []
        fast = model(x)
    assert calls == [8] * 6
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
