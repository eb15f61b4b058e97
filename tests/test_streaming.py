"""Streamed similarity: the in-memory functions' scores from row blocks and merged shards."""

from __future__ import annotations

import pytest
import torch

from discover.dissection.rows import FileRows, PermutedRows, ProductRows, RowWriter, TensorRows
from discover.dissection.significance import label_significance
from discover.dissection.similarity import get_similarity
from discover.dissection.streaming import (
    STREAMED,
    Products,
    Scan,
    scan,
    streamed_significance,
    streamed_similarity,
)
from discover.errors import InputError

# small settings so that the top-image functions read a strict subset of the probe
PARAMS = {
    "cos": {},
    "corr": {},
    "cos3": {},
    "wpmi": {"top_k": 7},
    "soft_wpmi": {"top_k": 9},
    "rank_reorder": {"top_fraction": 0.04},
    "jsd": {"support_k": 6},
}


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(0)
    N, M, K = 300, 11, 8
    P = torch.rand(N, M, generator=g)
    Q = torch.randn(N, K, generator=g)
    Q[:, 0] = torch.relu(Q[:, 0]).round()  # ties, zeros and -0.0 at the top-k boundary
    Q[::3, 1] = -0.0
    Q[:, 2] = 0.0  # a dead unit
    Q[:, 3] = 3 * P[:, 4] + 0.1 * Q[:, 3]  # a unit that detects concept 4
    P[:, 5] = P[:, 5].round(decimals=1)  # ties in a concept (rank_reorder, jsd supports)
    return P, Q


def test_every_similarity_function_is_streamed():
    assert set(STREAMED) == set(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("block_rows", [1, 37, 1000])
def test_streamed_scores_equal_the_in_memory_ones(probe, name, block_rows):
    P, Q = probe
    expected = get_similarity(name)(P, Q, **PARAMS[name])
    got = streamed_similarity(name, TensorRows(P), TensorRows(Q), block_rows=block_rows,
                              **PARAMS[name])  # fmt: skip
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(scale))
    assert torch.equal(got.argmax(1), expected.argmax(1))  # the same label for every unit
    if name in ("wpmi", "soft_wpmi", "rank_reorder"):  # the same arithmetic on the same rows
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["corr", "cos3", "soft_wpmi", "jsd"])
def test_shards_merge_into_the_whole_probes_scores(probe, name):
    P, Q = probe
    cuts = [0, 90, 91, 300]  # uneven shards, one of a single image
    top_units, top_concepts = {"soft_wpmi": (9, 0), "jsd": (6, 6)}.get(name, (0, 0))
    shards = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        part = Scan(top_units, top_concepts)
        part.update(lo, P[lo:hi], Q[lo:hi])
        shards.append(Scan.from_state(part.state()))  # through a shard file's tensors
    merged = shards[2].merge(shards[0]).merge(shards[1])  # any order
    whole = scan(TensorRows(P), TensorRows(Q), top_units=top_units, top_concepts=top_concepts)
    torch.testing.assert_close(merged.q.mean, whole.q.mean)
    torch.testing.assert_close(merged.p.m2, whole.p.m2)
    if top_units:
        assert torch.equal(merged.unit_index, whole.unit_index)
    got = streamed_similarity(name, TensorRows(P), TensorRows(Q), scan_result=merged,
                              **PARAMS[name])  # fmt: skip
    expected = get_similarity(name)(P, Q, **PARAMS[name])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_pass_two_sums_merge_across_shards(probe):
    P, Q = probe
    whole = scan(TensorRows(P), TensorRows(Q))
    a, b = Products("centred"), Products("centred")
    a.update(P[:100], Q[:100], whole)
    b.update(P[100:], Q[100:], whole)
    merged = Products.from_state("centred", b.merge(a).state())
    torch.testing.assert_close(merged.scores(1e-12), get_similarity("corr")(P, Q))
    with pytest.raises(InputError, match="'centred' sums with 'cubed'"):
        a.merge(Products("cubed"))


def test_file_rows_read_back_blocks_and_gathers(probe, tmp_path):
    P, Q = probe
    with RowWriter(tmp_path / "Q") as writer:
        for start in range(0, len(Q), 64):
            writer.append(Q[start : start + 64])
    rows = FileRows(tmp_path / "Q")
    assert rows.shape == tuple(Q.shape)
    assert torch.equal(torch.cat([b for _, b in rows.blocks(50)]), Q)
    index = torch.tensor([0, 5, 63, 64, 200, 299])
    assert torch.equal(rows.gather(index), Q[index])
    got = streamed_similarity("soft_wpmi", TensorRows(P), rows, block_rows=64, top_k=9)
    assert torch.equal(got, get_similarity("soft_wpmi")(P, Q, top_k=9))


def test_bad_inputs_are_named(probe, tmp_path):
    P, Q = probe
    with pytest.raises(InputError, match="not the same images"):
        streamed_similarity("cos", TensorRows(P[:10]), TensorRows(Q))
    with pytest.raises(InputError, match="is not streamed"):
        streamed_similarity("nope", TensorRows(P), TensorRows(Q))
    with pytest.raises(InputError, match="support='all'"):
        streamed_similarity("jsd", TensorRows(P), TensorRows(Q), support="all")
    small = scan(TensorRows(P), TensorRows(Q), top_units=3)
    with pytest.raises(InputError, match="it needs 9"):
        streamed_similarity("soft_wpmi", TensorRows(P), TensorRows(Q), scan_result=small, top_k=9)
    with pytest.raises(InputError, match="no rows.json"):
        FileRows(tmp_path)
    writer = RowWriter(tmp_path / "w")
    writer.append(Q[:4])
    with pytest.raises(InputError, match="columns"):
        writer.append(P[:4])


def test_permuted_and_product_rows(probe):
    P, Q = probe
    perm = torch.randperm(len(Q), generator=torch.Generator().manual_seed(3))
    shuffled = PermutedRows(TensorRows(Q), perm)
    assert torch.equal(torch.cat([b for _, b in shuffled.blocks(41)]), Q[perm])
    assert torch.equal(shuffled.gather(torch.tensor([2, 7])), Q[perm[[2, 7]]])
    images, texts = torch.randn(len(Q), 5), torch.randn(11, 5)
    concept_rows = ProductRows(TensorRows(images), texts)
    assert concept_rows.shape == (len(Q), 11)
    torch.testing.assert_close(torch.cat([b for _, b in concept_rows.blocks(50)]), images @ texts.T)
    got = streamed_similarity("corr", concept_rows, TensorRows(Q), block_rows=64)
    torch.testing.assert_close(
        got, get_similarity("corr")(images @ texts.T, Q), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(("name", "params"), [("corr", {}), ("soft_wpmi", {"top_k": 9})])
def test_streamed_significance_is_label_significance(probe, name, params):
    P, Q = probe
    fn = get_similarity(name)
    best = fn(P, Q, **params).amax(1)
    expected = label_significance(P, Q, best, fn, params, repeats=5, seed=4)
    got = streamed_significance(name, TensorRows(P), TensorRows(Q), best, repeats=5, seed=4,
                                block_rows=64, **params)  # fmt: skip
    torch.testing.assert_close(got.null_mean, expected.null_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.z, expected.z, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.above_chance, expected.above_chance)


@pytest.mark.parametrize("name", ["cos", "corr"])
def test_factored_scores_never_form_p_and_agree(name):
    g = torch.Generator().manual_seed(5)
    images = torch.nn.functional.normalize(torch.randn(400, 16, generator=g) + 2.0, dim=1)
    texts = torch.nn.functional.normalize(torch.randn(30, 16, generator=g) + 2.0, dim=1)
    P = images @ texts.T  # cosines sharing a large offset, as a CLIP's do
    Q = torch.relu(torch.randn(400, 6, generator=g)) + 3.0  # units with a large mean
    info = {}
    got = streamed_similarity(name, ProductRows(TensorRows(images), texts), TensorRows(Q),
                              block_rows=64, info=info)  # fmt: skip
    assert info["factored"] is True and info["num_images"] == 400
    expected = get_similarity(name)(P, Q)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_jsd_in_concept_chunks_equals_the_whole(probe, monkeypatch):
    import discover.dissection.streaming as streaming

    P, Q = probe
    monkeypatch.setattr(streaming, "JSD_CONCEPTS", 4)  # 11 concepts: chunks of 4, 4 and 3
    info = {}
    got = streamed_similarity("jsd", TensorRows(P), TensorRows(Q), block_rows=50, info=info,
                              support_k=6)  # fmt: skip
    expected = get_similarity("jsd")(P, Q, support_k=6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert info["definition"]["transform_p"] == "zscore" and info["num_concepts"] == 11
    assert info["rows_read"] < len(P)  # only the top images' rows


def test_gathering_columns_reads_only_those(probe, tmp_path):
    P, Q = probe
    with RowWriter(tmp_path / "P") as writer:
        for start in range(0, len(P), 100):
            writer.append(P[start : start + 100])
    index, cs = torch.tensor([3, 99, 100, 250]), slice(2, 7)
    for source in (TensorRows(P), FileRows(tmp_path / "P"),
                   streaming_concat(FileRows(tmp_path / "P"))):  # fmt: skip
        assert torch.equal(source.gather(index, cs), P[index][:, cs])
    images, texts = torch.randn(len(P), 5), torch.randn(11, 5)
    torch.testing.assert_close(
        ProductRows(TensorRows(images), texts).gather(index, cs), (images @ texts.T)[index][:, cs]
    )


def streaming_concat(rows):
    from discover.dissection.rows import ConcatRows

    return ConcatRows((rows,))


def test_a_scan_without_p_goes_through_a_shard_file(probe):
    P, Q = probe
    scanned = scan(TensorRows(P), TensorRows(Q), top_units=5, read_p=False)
    assert scanned.p.n == 0 and scanned.q.n == len(Q)
    back = Scan.from_state(scanned.state())
    assert back.p.n == 0 and torch.equal(back.unit_index, scanned.unit_index)
    with pytest.raises(InputError, match="did not read the rows of P"):
        streamed_similarity("cos3", TensorRows(P), TensorRows(Q), scan_result=back)
