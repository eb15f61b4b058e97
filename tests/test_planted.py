import csv
import json

import pytest
import torch

from discover.cli import main
from discover.dissection.similarity import SIMILARITIES
from discover.evaluation.planted import (
    VARIANTS,
    PlantedConfig,
    planted_neurons,
    planted_recovery,
)


def _annotations(n=400, m=20, seed=0):
    """An annotation-like binary P: each concept present on 10-40 % of the images."""
    g = torch.Generator().manual_seed(seed)
    rates = 0.1 + 0.3 * torch.rand(m, generator=g)
    return (torch.rand(n, m, generator=g) < rates).float()


def test_every_similarity_recovers_noise_free_dense_concepts():
    P = _annotations()
    result = planted_recovery(P, units=12, noise=(0.0,), variants=("dense",), progress=False)
    assert {r["similarity"] for r in result.rows} == set(SIMILARITIES)
    for row in result.rows:
        assert row["units"] == 12
        assert row["topk"] >= row["top1"]
    by_name = {r["similarity"]: r for r in result.rows}
    for name in ("cos3", "soft_wpmi", "jsd"):
        assert by_name[name]["top1"] >= 0.9, name
    assert result.meta["chance_top1"] == pytest.approx(1 / 20)


def test_recovery_falls_with_noise():
    P = _annotations(n=600)
    result = planted_recovery(
        P,
        units=30,
        noise=(0.0, 4.0),
        variants=("dense",),
        similarities=("cos3",),
        progress=False,
    )
    clean, noisy = result.rows
    assert clean["noise"] == 0.0 and noisy["noise"] == 4.0
    assert clean["top1"] > noisy["top1"] + 0.2
    assert noisy["mean_rank"] > clean["mean_rank"]


def test_variants_have_their_sparsity_and_sign():
    P = torch.rand(4000, 6)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    config = PlantedConfig(active_fraction=0.1, U=8)
    dense = planted_neurons(P, ids, "dense", 0.5, config=config)
    sparse = planted_neurons(P, ids, "sparse", 0.5, config=config)
    signed = planted_neurons(P, ids, "signed_sparse", 0.5, config=config)
    assert (dense != 0).float().mean() > 0.99
    assert (sparse >= 0).all()
    assert (sparse > 0).float().mean() == pytest.approx(0.1, abs=0.01)
    wins = (signed != 0).float().mean()
    assert 0.05 < wins < 0.4  # about 1/U, more where the concept is strong
    assert (signed < 0).any() and (signed > 0).any()  # LWTA winners can be negative
    # the winners follow the concept: a unit wins more on images where its concept is high
    high = P[:, 0] > P[:, 0].median()
    assert (signed[high, 0] != 0).float().mean() > (signed[~high, 0] != 0).float().mean()
    assert set(VARIANTS) >= {"dense", "sparse", "signed_sparse"}


def test_seeded_and_ranked(tmp_path):
    P = _annotations(n=300, m=15)
    kwargs = dict(units=8, noise=(0.5, 2.0), similarities=("cos", "cos3", "wpmi"), progress=False)
    a, b = planted_recovery(P, **kwargs), planted_recovery(P, **kwargs)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a.rows) == strip(b.rows)
    assert len(a.rows) == 3 * 3 * 2
    tops = [(r["top1"], r["topk"]) for r in a.ranking]
    assert tops == sorted(tops, reverse=True)
    for entry in a.ranking:  # each place is the mean over that function's 6 cells
        cells = [r["top1"] for r in a.rows if r["similarity"] == entry["similarity"]]
        assert len(cells) == 6 and entry["top1"] == pytest.approx(sum(cells) / 6)
    assert [r["place"] for r in a.ranking] == [1, 2, 3]
    rows = [line.split()[0] for line in a.table().splitlines() if line.split()]
    first, last = a.ranking[0]["similarity"], a.ranking[-1]["similarity"]
    assert rows.index(first) < rows.index(last)  # whole first column, not a substring
    a.save(tmp_path)
    assert len(list(csv.DictReader((tmp_path / "planted.csv").open()))) == 18
    ranking = list(csv.DictReader((tmp_path / "planted_ranking.csv").open()))
    assert ranking[0]["similarity"] == a.ranking[0]["similarity"]
    assert json.loads((tmp_path / "planted.json").read_text())["config"]["units"] == 8


def test_bad_input():
    P = _annotations(n=50, m=5)
    with pytest.raises(ValueError, match="unknown planted variant"):
        PlantedConfig(variants=("dense", "spiky"))
    with pytest.raises(ValueError, match="unknown similarity 'cosine'"):
        PlantedConfig(similarities=("cosine",))
    with pytest.raises(ValueError, match="noise levels"):
        PlantedConfig(noise=(-1.0,))
    with pytest.raises(ValueError, match=r"P must be \(N, M\)"):
        planted_recovery(torch.rand(10), progress=False)
    with pytest.raises(ValueError, match="at least 2 non-constant"):
        planted_recovery(torch.ones(10, 4), progress=False)
    with pytest.raises(ValueError, match="3 concept names for 5 columns"):
        planted_recovery(P, ["a", "b", "c"], progress=False)


def test_cli_planted_on_shapes_annotations(tmp_path, capsys):
    code = main(
        ["planted", "--probe-arg", "n=300", "--probe-arg", "image_size=16",
         "--similarities", "cos", "soft_wpmi", "--noise", "0", "1", "--units", "6",
         "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "planted-concept recovery" in out and "soft_wpmi" in out
    assert (tmp_path / "planted.csv").is_file()
    assert main(["planted", "--similarities", "cosine", "--units", "2"]) == 2
    assert "unknown similarity" in capsys.readouterr().err


def test_sparse_units_stay_alive_on_binary_concepts_without_noise():
    P = _annotations(n=200, m=6)  # binary, each concept on 10-40 % of the images
    result = planted_recovery(P, units=12, noise=(0.0,), variants=("sparse",), progress=False)
    by_name = {r["similarity"]: r for r in result.rows}
    assert by_name["cos"]["top1"] > 0.5  # dead units (all zeros) would score 0 everywhere
    with pytest.raises(ValueError, match="no planted variants"):
        planted_recovery(P, units=4, variants=(), progress=False)


def test_planted_recovery_on_a_probe_set(monkeypatch):
    from discover.data.registry import build_probe
    from discover.evaluation import planted
    from discover.evaluation.planted import planted_recovery_on_probe

    probe = build_probe("shapes", limit=150, n=300, image_size=16)
    result = planted_recovery_on_probe(
        probe, similarities=("cos",), units=4, noise=(0.0,), progress=False
    )
    assert result.meta["probe"] == {"type": "ShapesWorld", "images": 150}
    assert result.meta["concept_set"] == "shapes" and result.meta["images"] == 150
    assert result.config["units"] == 4 and [r["similarity"] for r in result.ranking] == ["cos"]

    def no_embedder(spec):
        raise AssertionError("the embedder was built before the settings were checked")

    monkeypatch.setattr(planted, "build_embedder", no_embedder)
    with pytest.raises(ValueError, match="^similarity_params: 'soft_wpmi' is not among"):
        planted_recovery_on_probe(
            probe, similarities=("cos",), similarity_params={"soft_wpmi": {"top_k": 5}}
        )
