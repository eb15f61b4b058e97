"""The shared forward-hook helper (:func:`discover.nn.capture`, :func:`discover.nn.training_mode`)
and the weight hasher behind ``model_fingerprint`` and ``module_sha256``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from discover._utils import Registry
from discover.dissection.embedders import (
    EMBEDDERS,
    build_embedder,
    module_sha256,
    register_embedder,
)
from discover.dissection.recording import model_fingerprint
from discover.errors import InputError
from discover.evaluation.planted import TRANSFERS
from discover.nn import capture, register_placement, state_dict_sha256, training_mode
from discover.nn.models import PLACEMENTS


# -- the weight hasher: digests pinned with the code before it was unified ----------------------
class _Fixed(nn.Module):
    """Fixed weights and buffers of every awkward kind: a 0-d, an empty, a bool, a float16
    and a non-contiguous tensor. Its repr is stable across torch versions."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.arange(6.0).reshape(2, 3) / 7)
            self.linear.bias.copy_(torch.tensor([-1.5, 0.25]))
        self.register_buffer("count", torch.tensor(7))
        self.register_buffer("empty", torch.zeros(0, 4))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("halves", torch.tensor([1.0, -2.0], dtype=torch.float16))
        self.register_buffer("strided", torch.arange(6.0).reshape(2, 3).t())


def test_model_fingerprint_is_the_digest_saved_in_dissections():
    # Saved inside every dissection and checked against the model on load: it must not move.
    module = _Fixed()
    assert model_fingerprint(module) == (
        "c5249a8ea5ea9ff4aefd3ad4b3b25f99f5f79e6749f70e29777656f0375d8d5a"
    )
    assert model_fingerprint(module.linear) == (
        "580c25d6c445b97145544712742abadb0e8e86a5b93d90f9ff15c799df680805"
    )


def test_module_sha256_is_the_digest_in_saved_embedder_ids():
    # Embedder ids (and so cache keys and saved results) are built from it: it must not move.
    module = _Fixed()
    assert module_sha256(module) == (
        "b36071a014e6c35c7028c8256f82b51e6a6d6030ebadefe6b4f35a0a2be8e07b"
    )
    assert module_sha256(module.linear) == (
        "6dcf1d5643a485bb06f7bb52c86c58343b1ccf46a9d4335a0a314148b8efd826"
    )


def test_digests_follow_every_weight():
    module = _Fixed()
    before = model_fingerprint(module), module_sha256(module)
    with torch.no_grad():
        module.linear.weight[0, 0] += 1e-6
    after = model_fingerprint(module), module_sha256(module)
    assert before[0] != after[0] and before[1] != after[1]


def test_both_digests_are_the_one_state_dict_hasher():
    module = _Fixed()
    state = module.state_dict()
    assert model_fingerprint(module) == state_dict_sha256(state)
    assert module_sha256(module) == state_dict_sha256(
        state, header="{name}|{dtype}|{shape}|", prefix=repr(module).encode()
    )
    reshaped = {k: v.reshape(v.shape[::-1]) for k, v in state.items()}  # same bytes, other shape
    assert state_dict_sha256(reshaped) != state_dict_sha256(state)


# -- capture and training_mode ------------------------------------------------------------------
def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))
    net.train()
    net[2].eval()  # a submodule frozen in evaluation mode: it must stay so
    return net


def _modes(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def _hooked(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


def test_capture_keeps_outputs_by_name_then_removes_hooks_and_restores_modes():
    net = _net()
    before = _modes(net)
    seen: dict[str, list] = {}

    def keep(name, module, inputs, output):
        seen.setdefault(name, []).append((module, inputs[0].shape, output.shape))

    with capture(net, ["0", "1"], keep, mode=False) as named:
        assert named == {"0": net[0], "1": net[1]}
        assert _hooked(net) == 2 and not any(_modes(net))
        net(torch.zeros(5, 4))
    assert seen == {
        "0": [(net[0], torch.Size([5, 4]), torch.Size([5, 6]))],
        "1": [(net[1], torch.Size([5, 6]), torch.Size([5, 6]))],
    }
    assert _hooked(net) == 0 and _modes(net) == before


def test_capture_cleans_up_after_an_exception_in_the_block_or_in_a_hook():
    net = _net()
    before = _modes(net)
    with pytest.raises(RuntimeError, match="in the block"):
        with capture(net, {"relu": net[1]}, lambda *a: None, mode=False):
            raise RuntimeError("in the block")
    assert _hooked(net) == 0 and _modes(net) == before

    def fail(name, module, inputs, output):
        raise ValueError(f"in the hook of {name}")

    with pytest.raises(ValueError, match="in the hook of relu"):
        with capture(net, {"relu": net[1]}, fail, mode=True):
            net(torch.zeros(1, 4))
    assert _hooked(net) == 0 and _modes(net) == before


def test_a_hook_that_returns_a_value_replaces_the_output():
    net = _net().eval()
    x = torch.randn(2, 4)
    with capture(net, ["1"], lambda name, m, i, out: torch.zeros_like(out)):
        replaced = net(x)
    torch.testing.assert_close(replaced, net[3].bias.expand(2, 3))
    assert not torch.equal(net(x), replaced)  # the hook is gone


def test_a_module_under_two_names_is_hooked_once_per_name_and_mode_none_keeps_modes():
    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    net[0].eval()
    before = _modes(net)
    calls: list[str] = []
    with capture(net, ["1", "3"], lambda name, *_: calls.append(name)):
        assert _modes(net) == before
        net(torch.zeros(1, 2))
    assert calls == ["1", "3", "1", "3"] and _hooked(net) == 0 and _modes(net) == before


def test_an_unknown_module_name_is_a_one_line_error_naming_the_closest_and_hooks_nothing():
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    before = _modes(net)
    with pytest.raises(InputError) as error:
        with capture(net, ["encoder.1", "encodr.0"], lambda *a: None, mode=False):
            pass
    message = str(error.value)
    assert "\n" not in message
    assert "'encodr.0'" in message and "closest: encoder.0" in message
    assert _hooked(net) == 0 and _modes(net) == before


def test_training_mode_restores_every_module_after_an_exception():
    net = _net()
    before = _modes(net)
    with pytest.raises(KeyError):
        with training_mode(net, False) as same:
            assert same is net and not any(_modes(net))
            raise KeyError("x")
    assert _modes(net) == before
    with training_mode(net, True):
        assert all(_modes(net))
    assert _modes(net) == before


def test_every_temporary_forward_hook_of_the_package_goes_through_capture():
    root = Path(__file__).resolve().parents[1] / "src" / "discover"
    places = [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        if "register_forward_hook" in path.read_text()
    ]
    assert places == ["nn/hooks.py"]


# -- the registries -------------------------------------------------------------------------------
def test_placements_transfers_and_embedder_usages_are_registries():
    assert isinstance(PLACEMENTS, Registry) and PLACEMENTS["VisionTransformer"][0]
    with pytest.raises(InputError, match="already registered"):
        register_placement("VisionTransformer", include=["*"])
    try:
        register_placement("TinyNet", include=["act"])
        register_placement("TinyNet", exclude=["head.*"], overwrite=True)
        assert PLACEMENTS["TinyNet"] == (None, ["head.*"])
        with pytest.raises(InputError, match="Did you mean 'TinyNet'"):
            PLACEMENTS.get("TinyNt")
    finally:
        PLACEMENTS.unregister("TinyNet")

    # the order is the draw: planted units pick a transfer by position
    assert isinstance(TRANSFERS, Registry) and list(TRANSFERS) == ["linear", "exp", "tanh"]
    with pytest.raises(InputError, match="already registered"):
        TRANSFERS.register("exp", torch.sigmoid)
    with pytest.raises(InputError, match="Did you mean 'tanh'"):
        TRANSFERS.get("tahn")

    # an embedder's usage text follows its builder, also when the prefix is registered again
    try:
        for usage in ("test-usage:<old>", "test-usage:<new>"):
            EMBEDDERS.unregister("test-usage")
            register_embedder("test-usage", usage=usage)(lambda argument, **kwargs: None)
            with pytest.raises(InputError, match=f"formats: .*{usage}"):
                build_embedder("test-usagee")
        with pytest.raises(InputError, match="already registered"):
            register_embedder("test-usage")(lambda argument, **kwargs: None)
    finally:
        EMBEDDERS.unregister("test-usage")
