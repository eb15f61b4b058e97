import inspect
import json
import math
import warnings

import pytest
import torch

from _similarity_loops import LOOPS, rank_reorder_loop, top_images
from discover.dissection import similarity as sim
from discover.dissection.labels import LABEL_DEFAULTS
from discover.dissection.similarity import (
    DEFAULT_SIMILARITY,
    PAPER_SIMILARITY,
    SIMILARITIES,
    common,
    corr,
    cos,
    cos3,
    get_similarity,
    jsd,
    jsd_definition,
    rank_reorder,
    register_similarity,
    reorder,
    soft_wpmi,
    wpmi,
)

NAMES = ["cos", "cos3", "corr", "wpmi", "soft_wpmi", "rank_reorder", "jsd"]
LN2 = math.log(2)

# Small top-k settings so that the tiny test inputs (N = 30) exercise real selections.
SMALL = {
    "cos": {},
    "cos3": {},
    "corr": {},
    "wpmi": {"top_k": 7},
    "soft_wpmi": {"top_k": 9},
    "rank_reorder": {"top_fraction": 0.3},
    "jsd": {"support_k": 6},
}
CHUNKS = [
    {"chunk_size": 1, "concept_chunk_size": 1},
    {"chunk_size": 3, "concept_chunk_size": 2},
    {},
]


def _data(N=30, K=5, M=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = 0.2 + 0.05 * torch.randn(N, M, generator=g, dtype=dtype)
    Q = torch.randn(N, K, generator=g, dtype=dtype)
    Q[torch.rand(N, K, generator=g) < 0.5] = 0.0  # LWTA-like sparsity, many ties at 0
    return P, Q


# --------------------------------------------------------------------------- registry


def test_registry_names_and_default():
    assert set(NAMES) <= set(SIMILARITIES)
    assert DEFAULT_SIMILARITY == LABEL_DEFAULTS["vlm"].similarity  # chosen by label_quality
    assert PAPER_SIMILARITY == "soft_wpmi" and PAPER_SIMILARITY in SIMILARITIES
    for name in NAMES:
        assert get_similarity(name) is SIMILARITIES[name]


@pytest.mark.parametrize(("typo", "suggestion"), [("soft-wpmi", "soft_wpmi"), ("cosine", "cos")])
def test_unknown_name_lists_close_matches(typo, suggestion):
    with pytest.raises(ValueError, match=f"Did you mean.*'{suggestion}'") as err:
        get_similarity(typo)
    assert "Known:" in str(err.value)


def test_register_custom_function_and_duplicates_raise(monkeypatch):
    monkeypatch.setattr(sim, "SIMILARITIES", SIMILARITIES.copy())

    @register_similarity("neg_l2")
    def neg_l2(concept_acts, neuron_acts, **params):
        return -torch.cdist(neuron_acts.T, concept_acts.T)

    P, Q = _data()
    assert get_similarity("neg_l2") is neg_l2
    assert get_similarity("neg_l2")(P, Q).shape == (5, 7)
    for name in ("neg_l2", "cos"):
        with pytest.raises(ValueError, match="already registered"):
            register_similarity(name)(neg_l2)
    assert "neg_l2" not in SIMILARITIES  # the real registry is untouched


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", NAMES)
def test_shape_errors_name_both_shapes(name):
    fn = SIMILARITIES[name]
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)"):
        fn(torch.rand(5, 3), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"\(5,\).*\(5, 2\)"):
        fn(torch.rand(5), torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 2, 1\)"):
        fn(torch.rand(5, 3), torch.rand(5, 2, 1))
    for P, Q in [(torch.rand(5, 0), torch.rand(5, 2)), (torch.rand(5, 3), torch.rand(5, 0))]:
        with pytest.raises(ValueError, match="at least one"):
            fn(P, Q)
    with pytest.raises(ValueError, match="at least one"):
        fn(torch.rand(0, 3), torch.rand(0, 2))
    with pytest.raises(TypeError):
        fn([[0.1, 0.2]], torch.rand(1, 2))


@pytest.mark.parametrize("name", ["wpmi", "soft_wpmi", "rank_reorder", "jsd"])
def test_bad_parameters_raise(name):
    P, Q = _data()
    bad = {
        "wpmi": {"top_k": 0},
        "soft_wpmi": {"top_k": 2.5},
        "rank_reorder": {"top_fraction": 0.0},
        "jsd": {"support": "everything"},
    }[name]
    with pytest.raises(ValueError):
        SIMILARITIES[name](P, Q, **bad)
    with pytest.raises(ValueError):
        SIMILARITIES[name](P, Q, **SMALL[name], chunk_size=0)


# --------------------------------------------------------------------------- hand-computed cases


def test_cos_hand_computed():
    P = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    Q = torch.tensor([[1.0, 3.0], [0.0, 1.0], [2.0, 0.0]])
    r10, r20 = math.sqrt(10), math.sqrt(20)
    expected = torch.tensor([[1 / r10, 2 / r10], [4 / r20, 1 / r20]])
    torch.testing.assert_close(cos(P, Q), expected)


def test_corr_is_pearson_and_ignores_offsets():
    P, Q = _data(N=60, K=4, M=6)
    expected = torch.corrcoef(torch.cat([Q, P], dim=1).T)[:4, 4:]
    torch.testing.assert_close(corr(P, Q), expected)
    # a concept offset shared by every image (a VLM's baseline cosine) changes nothing
    torch.testing.assert_close(corr(P + 0.25, 3 * Q - 1), expected)
    assert not torch.allclose(cos(P + 0.25, Q), cos(P, Q))


def test_cos3_hand_computed():
    # Columns centre and cube to: p0 -> (-1,-1,-1,27), p1 -> (-1,1,0,0),
    # q0 -> (1,-1,-1,1), q1 -> 8 * (-1,-1,-1,27).
    P = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 1.0], [4.0, 1.0]])
    Q = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 8.0]])
    r732 = math.sqrt(732)
    expected = torch.tensor([[28 / (2 * r732), -2 / (2 * math.sqrt(2))], [1.0, 0.0]])
    torch.testing.assert_close(cos3(P, Q), expected)


def _softmax(row, a):
    exps = [math.exp(a * v) for v in row]
    return [e / sum(exps) for e in exps]


HAND_P = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]
HAND_Q = [[3.0, 0.0], [1.0, 2.0], [2.0, 1.0]]  # top-2 images: unit 0 -> (0, 2), unit 1 -> (1, 2)


def _prior_corrected(L, lam):
    prior = [math.log(sum(math.exp(L[k][m]) for k in range(2))) - math.log(2) for m in range(2)]
    return [[L[k][m] - lam * prior[m] for m in range(2)] for k in range(2)]


def test_wpmi_hand_computed():
    a, lam, eps = 2.0, 0.6, 1e-7
    Pt = [_softmax(row, a) for row in HAND_P]
    top = [(0, 2), (1, 2)]
    L = [[sum(math.log(Pt[i][m] + eps) for i in top[k]) for m in range(2)] for k in range(2)]
    expected = torch.tensor(_prior_corrected(L, lam), dtype=torch.float64)
    got = wpmi(torch.tensor(HAND_P, dtype=torch.float64), torch.tensor(HAND_Q), top_k=2)
    torch.testing.assert_close(got, expected)


def test_soft_wpmi_hand_computed():
    a, lam, eps = 10.0, 1.0, 1e-7
    p = [0.998, 0.998 - 0.5 * (0.998 - 0.97)]  # p_j for j = 0, 1 with top_k = 2
    Pt = [_softmax(row, a) for row in HAND_P]
    top = [(0, 2), (1, 2)]  # in descending activation order
    L = [
        [
            sum(math.log(p[j] * Pt[i][m] + 1 - p[j] + eps) for j, i in enumerate(top[k]))
            for m in range(2)
        ]
        for k in range(2)
    ]
    expected = torch.tensor(_prior_corrected(L, lam), dtype=torch.float64)
    got = soft_wpmi(torch.tensor(HAND_P, dtype=torch.float64), torch.tensor(HAND_Q), top_k=2)
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------- loop references


@pytest.mark.parametrize("chunks", CHUNKS, ids=["1x1", "3x2", "default"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_per_neuron_loop(name, chunks):
    P, Q = _data()
    got = SIMILARITIES[name](P, Q, **SMALL[name], **chunks)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, LOOPS[name](P, Q, **SMALL[name]), rtol=1e-10, atol=1e-10)


def test_rank_reorder_rankings_match_loop_float32():
    P, Q = _data(N=60, K=4, M=12, dtype=torch.float32, seed=3)
    Q[Q == 0] = torch.randn(int((Q == 0).sum()))  # no ties: rankings are well defined
    got = rank_reorder(P, Q, top_fraction=0.2, seed=7)
    ref = rank_reorder_loop(P, Q, top_fraction=0.2, seed=7)
    assert torch.equal(got.argsort(dim=1), ref.argsort(dim=1))


def test_rank_reorder_seeding():
    P, Q = _data()
    state = torch.get_rng_state()
    a = rank_reorder(P, Q, top_fraction=0.3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, rank_reorder(P, Q, top_fraction=0.3, seed=1))
    b = rank_reorder(P, Q, top_fraction=0.3, seed=2)
    assert not torch.equal(a, b)
    # The seed only moves each unit's baseline constant, never its ranking of concepts.
    torch.testing.assert_close(a / a[:, :1], b / b[:, :1])


def test_top_images_tie_break_matches_loop_helper():
    column = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 2.0])
    assert top_images(column, 4) == [5, 1, 3, 0]
    assert common.top_images(column[:, None], 4)[1].tolist() == [[5, 1, 3, 0]]
    assert sorted(common.top_sets(column[:, None], 4)[0].tolist()) == [0, 1, 3, 5]


# --------------------------------------------------------------------------- JSD


@pytest.mark.parametrize("support", ["all", "neuron_topk", "union_topk"])
@pytest.mark.parametrize("transform", ["identity", "zscore"])
def test_jsd_matches_pair_loop_with_ties(support, transform):
    P, Q = _data(N=25, K=4, M=6)
    P = (P * 20).round() / 20  # many tied concept scores
    params = dict(support=support, support_k=5, transform_q=transform, transform_p=transform)
    params.update(tau_q=0.7, tau_p=0.3 if transform == "zscore" else 0.02)
    got = jsd(P, Q, chunk_size=3, concept_chunk_size=4, **params)
    torch.testing.assert_close(got, LOOPS["jsd"](P, Q, **params), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("support", ["all", "neuron_topk", "union_topk"])
def test_jsd_identical_distributions_score_zero_and_best(support):
    _, Q = _data(N=80, K=6, dtype=torch.float32)
    Q[:, 0] = 0.0  # dead unit: uniform against uniform
    S = jsd(Q, Q, support=support, support_k=10)
    diag = S.diagonal()
    assert diag.abs().max() < 1e-6
    assert torch.all(diag >= S.max(dim=1).values - 1e-6)


@pytest.mark.parametrize("support", ["all", "union_topk"])
def test_jsd_is_symmetric_in_roles(support):
    P, Q = _data(N=50, K=4, M=6)
    for params in (
        {},
        {"tau_q": 0.5, "tau_p": 0.5, "transform_q": "identity", "transform_p": "identity"},
    ):
        forward = jsd(P, Q, support=support, support_k=8, **params)
        swapped = jsd(Q, P, support=support, support_k=8, **params)
        torch.testing.assert_close(forward, swapped.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("support", ["all", "neuron_topk", "union_topk"])
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
def test_jsd_bounded(support, tau):
    P, Q = _data(N=40, K=5, M=8, dtype=torch.float32)
    S = jsd(100 * P, Q, support=support, support_k=6, tau_q=tau, tau_p=tau)
    assert torch.isfinite(S).all()
    assert S.min() >= -LN2 and S.max() <= 0.0


@pytest.mark.parametrize("support", ["all", "neuron_topk", "union_topk"])
def test_jsd_ranks_planted_concept_first(support):
    g = torch.Generator().manual_seed(5)
    P, Q = _data(N=200, K=4, M=30, dtype=torch.float32)
    planted = 0.02 * Q + 0.25  # concept m = 30 + k is an affine copy of unit k
    P = torch.cat([P + 0.01 * torch.rand(P.shape, generator=g), planted], dim=1)
    S = jsd(P, Q, support=support, support_k=20)
    assert S.argmax(dim=1).tolist() == [30, 31, 32, 33]


def test_jsd_definition_is_exported_and_saved():
    params = inspect.signature(jsd).parameters
    definition = jsd_definition()
    for key in ("tau_q", "tau_p", "transform_q", "transform_p", "support", "support_k", "min_std"):
        assert definition[key] == params[key].default  # one set of defaults
    assert definition["log_base"] == "e" and definition["range"] == [-LN2, 0.0]
    info = {}
    P, Q = _data(N=12)
    with pytest.warns(UserWarning, match="support_k=100"):
        jsd(P, Q, info=info)
    assert info["definition"] == jsd_definition(support_k=12)
    json.dumps(info)  # metadata-ready
    with pytest.raises(ValueError):
        jsd_definition(tau_q=0.0)
    with pytest.raises(ValueError):
        jsd_definition(transform_p="minmax")


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dead_units_and_constant_concepts_are_finite(name, dtype):
    P, Q = _data(N=40, K=4, M=5, dtype=torch.float32)
    Q[:, 1] = 0.0
    P[:, 2] = 0.3
    info = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # default top-k values exceed N = 40
        S = SIMILARITIES[name](P.to(dtype), Q.to(dtype), info=info)
    assert torch.isfinite(S).all()
    assert info["num_dead_neurons"] == 1
    assert S.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_cos_dead_unit_scores_zero():
    P, Q = _data()
    Q[:, 0] = 0.0
    assert torch.equal(cos(P, Q)[0], torch.zeros(7, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_chunking_invariance_float32(name):
    P, Q = _data(N=50, K=7, M=11, dtype=torch.float32, seed=1)
    reference = SIMILARITIES[name](P, Q, **SMALL[name])
    for chunks in (
        {"chunk_size": 1, "concept_chunk_size": 1},
        {"chunk_size": 3, "concept_chunk_size": 4},
    ):
        torch.testing.assert_close(SIMILARITIES[name](P, Q, **SMALL[name], **chunks), reference)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_untouched_and_mixed_dtypes(name):
    P, Q = _data(dtype=torch.float32)
    P16, Q64 = P.half(), Q.double()
    before = (P16.clone(), Q64.clone())
    S = SIMILARITIES[name](P16, Q64, **SMALL[name])
    assert S.dtype == torch.float64 and S.device == P.device
    assert torch.equal(P16, before[0]) and torch.equal(Q64, before[1])


@pytest.mark.parametrize(
    ("name", "param", "key"),
    [
        ("wpmi", "top_k", "top_k"),
        ("soft_wpmi", "top_k", "top_k"),
        ("jsd", "support_k", "support_k"),
    ],
)
def test_top_k_clamp_is_warned_and_reported(name, param, key):
    P, Q = _data(N=10)
    info = {}
    with pytest.warns(UserWarning, match=f"{param}=500 exceeds .* N=10"):
        clamped = SIMILARITIES[name](P, Q, **{param: 500}, info=info)
    assert info[key] == 10 and info[f"{key}_requested"] == 500 and info[f"{key}_clamped"]
    exact = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(clamped, SIMILARITIES[name](P, Q, **{param: 10}, info=exact))
    assert not exact[f"{key}_clamped"]


def test_rank_reorder_top_n_clamp_is_reported():
    P, Q = _data(N=10)
    info = {}
    with pytest.warns(UserWarning, match="using 1 image"):
        S = rank_reorder(P, Q, info=info)  # floor(0.05 * 10) = 0
    assert (info["top_n"], info["top_n_requested"], info["top_n_clamped"]) == (1, 0, True)
    assert torch.isfinite(S).all()


def test_info_records_effective_parameters():
    P, Q = _data()
    info = {}
    soft_wpmi(P, Q, top_k=9, info=info)
    assert info["similarity"] == "soft_wpmi"
    assert (info["num_images"], info["num_neurons"], info["num_concepts"]) == (30, 5, 7)
    assert info["prior_over_neurons"] == 5 and info["compute_dtype"] == "float64"
    assert (info["a"], info["lam"], info["p_start"], info["p_end"]) == (10.0, 1.0, 0.998, 0.97)
    json.dumps(info)


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": 13, "p_start": 1.0, "p_end": 0.9, "min_prob": 1e-30},  # tiny terms: no grouping
        {"top_k": 16, "p_start": 0.5, "p_end": 0.0},  # exact groups of 8
        {"top_k": 11, "a": 3.0},
    ],
)
def test_soft_wpmi_product_groups_match_loop(params):
    P, Q = _data(N=40, K=6, M=600, seed=5)  # M > 512: several concept blocks
    got = soft_wpmi(P, Q, **params)
    torch.testing.assert_close(got, LOOPS["soft_wpmi"](P, Q, **params), rtol=1e-9, atol=1e-9)
    got32 = soft_wpmi(P.float(), Q.float(), **params)
    assert torch.isfinite(got32).all()
    torch.testing.assert_close(got32.double(), got, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- rank_reorder internals


def _tied(x, step):
    return (x / step).round() * step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_min_ranks_packed_sort_matches_float_sort_with_ties(dtype):
    g = torch.Generator().manual_seed(0)
    x = _tied(torch.randn(6, 300, generator=g, dtype=dtype), 0.25)  # many ties, negatives
    x[0, :5] = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0], dtype=dtype)  # signed zeros tie
    x[1] = 2.0  # a constant row
    expected = (x[:, None, :] < x[:, :, None]).sum(dim=2).to(torch.int32)  # strictly smaller
    assert torch.equal(reorder.min_ranks(x, packed=False), expected)
    if dtype == torch.float32:
        assert torch.equal(reorder.min_ranks(x, packed=True), expected)
        assert torch.equal(reorder.min_ranks(x), expected)


@pytest.mark.parametrize("p", [3.0, 2.0])
def test_reorder_errors_numpy_and_torch_paths_match_stable_argsort(p):
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(1)
    N, K, n, mc = 60, 5, 9, 7
    c = _tied(torch.rand(N, mc, generator=g), 0.2)  # ties: stable order must be kept
    acts, top = common.top_images(torch.randn(N, K, generator=g), n)
    ranks = reorder.min_ranks(c.T.contiguous())
    # The definition: sort each unit's concept scores with a stable float argsort.
    order = c[top].transpose(1, 2).argsort(dim=-1, stable=True)  # [K, mc, n]
    moved = acts[:, None, :].expand_as(order).gather(-1, order)
    expected = (moved - acts.flip(1)[:, None, :]).abs().pow(p).mean(dim=-1)
    with ThreadPoolExecutor(2) as pool:
        got_numpy = reorder.reorder_errors(ranks, top, acts, p, chunk_size=2, pool=pool)
    got_torch = reorder.reorder_errors(ranks, top, acts, p, chunk_size=2, pool=None)
    torch.testing.assert_close(got_numpy, expected)
    torch.testing.assert_close(got_torch, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_reorder_matches_loop_with_tied_concept_scores(dtype):
    P, Q = _data(N=80, K=6, M=13, dtype=dtype, seed=2)
    P = _tied(P, 0.05)  # most concept scores tie within a unit's top images
    got = rank_reorder(P, Q, top_fraction=0.2, chunk_size=4, concept_chunk_size=5)
    expected = rank_reorder_loop(P, Q, top_fraction=0.2)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 30, 199, 200])
def test_top_images_match_a_stable_sort(k, dtype):
    g = torch.Generator().manual_seed(4)
    x = _tied(torch.randn(200, 9, generator=g, dtype=dtype), 0.5)  # many ties, negatives
    x[:4, 0] = torch.tensor([-0.0, 0.0, -0.0, 0.0])  # signed zeros tie
    x[:, 1] = 0.0  # a dead unit: every image ties
    x[:, 2] = torch.randn(200, generator=g, dtype=dtype)  # no ties at all
    x[:, 3] = torch.randn(200, generator=g, dtype=dtype).relu()  # ties at 0 only
    values, indices = torch.sort(x.T, dim=1, descending=True, stable=True)
    got_values, got_indices = common.top_images(x, k)
    assert torch.equal(got_indices, indices[:, :k])
    assert torch.equal(got_values, values[:, :k])


def test_column_norms_match_vector_norm():
    x = torch.randn(300, 9, dtype=torch.float64)
    expected = torch.linalg.vector_norm(x, dim=0)
    for rows in (1, 7, 64, 1000):
        torch.testing.assert_close(common.column_norms(x, rows=rows), expected)


@pytest.mark.parametrize("top_k", [7, 16, 100])
def test_soft_wpmi_kernel_matches_the_torch_code(top_k):
    from discover.dissection import similarity_kernel

    if not similarity_kernel.available():
        pytest.skip("no C compiler: the similarity kernel cannot be built")
    g = torch.Generator().manual_seed(top_k)
    P = torch.rand(400, 700, generator=g)
    Q = torch.randn(400, 37, generator=g)
    fused = sim.soft_wpmi(P, Q, top_k=top_k, concept_chunk_size=300)
    with similarity_kernel.enabled(False):
        reference = sim.soft_wpmi(P, Q, top_k=top_k, concept_chunk_size=300)
    assert torch.allclose(fused, reference, rtol=1e-5, atol=5e-4)  # sums of ~100 float32 logs
    assert torch.equal(fused.argmax(dim=1), reference.argmax(dim=1))
    # a tiny p_end makes the smallest terms small: groups of fewer terms, same answer
    fused = sim.soft_wpmi(P, Q, top_k=top_k, p_start=0.999999, p_end=0.999)
    with similarity_kernel.enabled(False):
        reference = sim.soft_wpmi(P, Q, top_k=top_k, p_start=0.999999, p_end=0.999)
    assert torch.allclose(fused, reference, rtol=1e-5, atol=5e-4)  # sums of ~100 float32 logs


@pytest.mark.parametrize("top_k", [1, 28, 64])
def test_wpmi_kernel_matches_the_torch_code(top_k):
    """WPMI runs on the soft-WPMI kernel with every p_j = 1 (products of x + min_prob)."""
    from discover.dissection import similarity_kernel

    if not similarity_kernel.available():
        pytest.skip("no C compiler: the similarity kernel cannot be built")
    g = torch.Generator().manual_seed(top_k)
    P = torch.rand(400, 700, generator=g) * 30  # softmax(2 P): many probabilities << min_prob
    Q = torch.randn(400, 37, generator=g)
    fused = sim.wpmi(P, Q, top_k=top_k, concept_chunk_size=300)
    with similarity_kernel.enabled(False):
        reference = sim.wpmi(P, Q, top_k=top_k, concept_chunk_size=300)  # embedding_bag path
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused, reference, rtol=1e-5, atol=5e-4)
    assert torch.equal(fused.argmax(dim=1), reference.argmax(dim=1))


def test_cos3_kernel_matches_the_torch_code():
    from discover.dissection import similarity_kernel

    if not similarity_kernel.available():
        pytest.skip("no C compiler: the similarity kernel cannot be built")
    g = torch.Generator().manual_seed(3)
    P = torch.rand(500, 900, generator=g) ** 3
    P[:, 7] = 0.25  # a constant concept column
    Q = torch.randn(500, 40, generator=g)
    fused = sim.cos3(P, Q, concept_chunk_size=256, chunk_size=16)
    with similarity_kernel.enabled(False):
        reference = sim.cos3(P, Q, concept_chunk_size=256, chunk_size=16)
    assert torch.allclose(fused, reference, atol=1e-6)
    assert torch.equal(fused.argmax(dim=1), reference.argmax(dim=1))
    assert torch.all(fused[:, 7] == 0)


@pytest.mark.parametrize("p", [3.0, 2.0])
def test_rank_reorder_kernel_matches_the_numpy_code(p):
    from discover.dissection import similarity_kernel

    if not similarity_kernel.available():
        pytest.skip("no C compiler: the similarity kernel cannot be built")
    g = torch.Generator().manual_seed(5)
    P = torch.rand(600, 300, generator=g)
    P[:, 3] = P[:, 3].round(decimals=1)  # ties in a concept column
    Q = torch.randn(600, 24, generator=g)
    fused = sim.rank_reorder(P, Q, p=p, chunk_size=5)
    with similarity_kernel.enabled(False):
        reference = sim.rank_reorder(P, Q, p=p, chunk_size=5)
    assert torch.allclose(fused, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(fused.argmax(dim=1), reference.argmax(dim=1))
