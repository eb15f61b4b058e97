"""Sanity tests for similarity functions, after Neuron_Eval (Oikarinen, Yan & Weng, ICML 2025).

For a unit that detects a binary concept column ``c`` (``N`` images, positives ``c = 1``)
and a corruption fraction ``f`` in ``(0, 1)``:

* ``c_missing``: ``c`` with ``max(1, round(f * #positives))`` randomly chosen positive
  images set to 0 (missing labels);
* ``c_extra``: ``c`` with ``max(1, round(f * #negatives))`` randomly chosen negative images
  set to 1 (extra labels).

All units of one case are scored together: ``P'`` holds, for every unit, its columns
``[c, c_missing, c_extra]`` (each unit's corrupted columns are distractors for the others),
plus ``distractors`` independent binary columns for planted units, and ``S = sim(P', Q)``
with every similarity function in :data:`~discover.dissection.similarity.SIMILARITIES`. A
unit *passes* the missing-labels test when ``S[k, c] > S[k, c_missing]`` and the
extra-labels test when ``S[k, c] > S[k, c_extra]`` (strictly: a tie fails). Pass rates are
reported per function, source, test and ``f``, over all units and seeds. Sources:

* ``planted``: synthetic binary concepts (base rates drawn uniformly from
  ``base_rates``) and units that are noisy monotone functions of them
  (:func:`~discover.evaluation.planted.planted_neurons`, noise ``planted_noise``);
* an annotation table (e.g. ShapesWorld's): each ground-truth column is itself the unit
  (a perfect, binary detector with many tied activations).

A function *passes* a test on a source when its pass rate, over all ``f`` and seeds, is at
least ``pass_bar`` (0.95: "nearly all cases").

Example:
    >>> from discover.evaluation.sanity import similarity_sanity
    >>> result = similarity_sanity(planted_units=10, planted_images=300, seeds=(0,),
    ...                            fractions=(0.5,), similarities=("cos",))
    >>> result.verdicts()
    {'cos': True}
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from discover._utils import check_options, csv_text, read_json, write_files
from discover.dissection.similarity import DEFAULT_SIMILARITY, SIMILARITIES, get_similarity
from discover.errors import InputError
from discover.evaluation.detection import binary_table
from discover.evaluation.planted import PlantedConfig, planted_neurons

__all__ = [
    "SANITY_PASS_BAR",
    "SanityConfig",
    "SanityResult",
    "corrupt_labels",
    "similarity_sanity",
]

SANITY_PASS_BAR = 0.95
"""A similarity function passes a sanity test when it passes in at least this share of cases."""

SANITY_JSON = "similarity_sanity.json"
SANITY_CSV = "similarity_sanity.csv"
SANITY_DEFINITION = (
    "unit k detects binary concept c; c_missing = c with max(1, round(f*#pos)) random "
    "positives set to 0; c_extra = c with max(1, round(f*#neg)) random negatives set "
    "to 1; P' = [c, c_missing, c_extra] for every unit of the case (+ random binary "
    "distractors for planted units); pass when S[k,c] > S[k,c_missing] (missing) / "
    "S[k,c] > S[k,c_extra] (extra), strictly"
)

_Case = tuple[str, int, float, Tensor, Tensor]
"""``(source, seed, f, Q, P')``: the units of one case and their true and corrupted columns."""
_Tally = dict[tuple[str, str, str, float], list[int]]
"""``{(similarity, source, test, f): [cases, passed, tied]}``."""


def corrupt_labels(
    columns: Tensor, fraction: float, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The missing-labels and extra-labels versions of binary concept ``columns`` ``(N, K)``.

    ``missing``: in each column, ``max(1, round(fraction * #positives))`` random positives set
    to 0; ``extra``: ``max(1, round(fraction * #negatives))`` random negatives set to 1.

    Example:
        >>> c = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0]])
        >>> missing, extra = corrupt_labels(c, 0.5)
        >>> int(missing.sum()), int(extra.sum())
        (2, 6)
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction!r}")
    A = binary_table("columns", columns)
    generator = generator or torch.Generator().manual_seed(0)
    noise = torch.rand(A.shape, generator=generator)
    out = []
    for value, pool in ((1.0, A == 1), (0.0, A == 0)):
        count = pool.sum(dim=0)
        flip = (fraction * count.double()).round().clamp_min(1).long()
        # the ``flip`` members of ``pool`` with the smallest random keys, per column
        keys = torch.where(pool, noise, 2.0)
        rank = keys.argsort(dim=0).argsort(dim=0)
        chosen = (rank < flip) & pool
        out.append(torch.where(chosen, 1.0 - value, A))
    return out[0], out[1]


@dataclass
class SanityConfig:
    """Every setting of :func:`similarity_sanity`; saved with its results.

    Attributes:
        fractions: corruption fractions ``f``.
        seeds: one case per seed and ``f`` (new planted data, new corruptions).
        similarities: functions to test (default: all registered).
        similarity_params: ``{similarity: {param: value}}``.
        planted_units: planted units (and concepts) per case; 0 skips the planted source.
        planted_images: probe images of the planted source.
        planted_noise: noise of the planted units (concept-column standard deviations).
        planted_variant: activation variant, a name in ``planted.VARIANTS``.
        base_rates: the range of the planted concepts' base rates.
        distractors: extra random binary columns in the planted ``P'``.
        pass_bar: the pass rate a function needs to pass a test.
    """

    fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    similarities: tuple[str, ...] = ()
    similarity_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    planted_units: int = 50
    planted_images: int = 2000
    planted_noise: float = 1.0
    planted_variant: str = "dense"
    base_rates: tuple[float, float] = (0.05, 0.3)
    distractors: int = 50
    pass_bar: float = SANITY_PASS_BAR

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.similarities = tuple(self.similarities) or tuple(SIMILARITIES)
        self.base_rates = (float(self.base_rates[0]), float(self.base_rates[1]))
        for name in self.similarities:
            get_similarity(name)  # raises with suggestions
        for name, params in self.similarity_params.items():
            if name not in self.similarities:
                raise InputError(f"similarity_params names {name!r}, which is not tested")
            check_options(get_similarity(name), params, f"similarity {name!r}")
        if not self.fractions or any(not 0 < f < 1 for f in self.fractions):
            raise InputError(f"fractions must be in (0, 1), got {self.fractions}")
        if not self.seeds:
            raise InputError("seeds: need at least one seed")
        lo, hi = self.base_rates
        if not 0 < lo <= hi < 1:
            raise InputError(f"base_rates must satisfy 0 < low <= high < 1, got {self.base_rates}")
        if self.planted_units < 0 or self.distractors < 0 or self.planted_images < 10:
            raise InputError(
                "need planted_units >= 0, distractors >= 0 and planted_images >= 10, got "
                f"{self.planted_units}, {self.distractors}, {self.planted_images}"
            )
        if not 0 < self.pass_bar <= 1:
            raise InputError(f"pass_bar must be in (0, 1], got {self.pass_bar}")
        PlantedConfig(variants=(self.planted_variant,))  # checks the variant name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SanityResult:
    """Pass rates of the missing- and extra-labels tests.

    Attributes:
        rows: ``similarity, source, test ("missing" / "extra"), fraction, cases, passed,
            tied, rate`` for every combination (cases = units x seeds; ``tied``: the true
            and the corrupted concept scored exactly equal, a failure).
        config: the :class:`SanityConfig` as a dict.
        meta: per source: images, units; the definition; timing.
    """

    rows: list[dict[str, Any]]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r["source"] for r in self.rows))

    @property
    def similarities(self) -> list[str]:
        return list(dict.fromkeys(r["similarity"] for r in self.rows))

    def rate(
        self,
        similarity: str,
        source: str,
        test: str,
        fraction: float | None = None,
        *,
        count: str = "passed",
    ) -> float:
        """The pass rate (``count="tied"``: the tie rate) over all fractions (or one) and
        seeds."""
        rows = [
            r
            for r in self.rows
            if (r["similarity"], r["source"], r["test"]) == (similarity, source, test)
            and (fraction is None or r["fraction"] == fraction)
        ]
        if not rows:
            raise InputError(f"no rows for {similarity!r}, {source!r}, {test!r}, {fraction!r}")
        return sum(r[count] for r in rows) / sum(r["cases"] for r in rows)

    def summary(self) -> list[dict[str, Any]]:
        """Per similarity: the pass rate of each (source, test) over all fractions and seeds,
        and ``passes``: every rate is at least ``pass_bar``."""
        bar = self.config["pass_bar"]
        out = []
        for name in self.similarities:
            entry: dict[str, Any] = {"similarity": name}
            for source in self.sources:
                for test in ("missing", "extra"):
                    entry[f"{source} {test}"] = self.rate(name, source, test)
            entry["passes"] = all(v >= bar for k, v in entry.items() if k != "similarity")
            out.append(entry)
        return out

    def verdicts(self) -> dict[str, bool]:
        """``{similarity: passes both tests on every source}``."""
        return {s["similarity"]: s["passes"] for s in self.summary()}

    def table(self, by_fraction: bool = False, count: str = "passed") -> str:
        """A Markdown table of pass rates (%; ``count="tied"``: tie rates): one row per
        similarity (``by_fraction``: per similarity and fraction), one column per source and
        test, and (pass rates over all fractions) whether the function passes."""
        bar = self.config["pass_bar"]
        default = self.meta.get("default_similarity")
        header = ["similarity"] + (["f"] if by_fraction else [])
        header += [f"{s} {t}" for s in self.sources for t in ("missing", "extra")]
        verdict = not by_fraction and count == "passed"
        header += [f"passes (>= {100 * bar:g}%)"] if verdict else []
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in self.similarities:
            shown = f"{name} (default)" if name == default else name
            fractions = self.config["fractions"] if by_fraction else [None]
            for f in fractions:
                cells = [shown] + ([f"{f:g}"] if by_fraction else [])
                cells += [
                    f"{100 * self.rate(name, s, t, f, count=count):.1f}"
                    for s in self.sources
                    for t in ("missing", "extra")
                ]
                if verdict:
                    cells.append("yes" if self.verdicts()[name] else "no")
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "summary": self.summary(),
            "config": self.config,
            "meta": self.meta,
        }

    def save(self, out: str | Path) -> Path:
        """Write ``similarity_sanity.json`` and ``similarity_sanity.csv`` into folder ``out``;
        returns the JSON path."""
        folder = write_files(
            out,
            {
                SANITY_JSON: json.dumps(self.to_dict(), indent=1) + "\n",
                SANITY_CSV: csv_text(self.rows),
            },
        )
        return folder / SANITY_JSON

    @classmethod
    def load(cls, out: str | Path) -> SanityResult:
        """Read a folder written by :meth:`save` (or the JSON file itself)."""
        data = read_json(out, "similarity sanity result", name=SANITY_JSON)
        return cls(list(data["rows"]), dict(data["config"]), dict(data.get("meta") or {}))


def _planted_case(config: SanityConfig, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Planted concepts ``(N, K)``, their units ``(N, K)`` and distractors ``(N, D)``."""
    g = torch.Generator().manual_seed(seed)
    N, K, D = config.planted_images, config.planted_units, config.distractors
    lo, hi = config.base_rates

    def binary(n: int) -> Tensor:
        rates = lo + (hi - lo) * torch.rand(n, generator=g)
        cols = (torch.rand(N, n, generator=g) < rates).float()
        cols[torch.randint(0, N, (n,), generator=g), torch.arange(n)] = 1.0  # never empty
        return cols

    concepts, distractors = binary(K), binary(D)
    planted = PlantedConfig(variants=(config.planted_variant,), seed=seed)
    units = planted_neurons(
        concepts,
        torch.arange(K),
        config.planted_variant,
        config.planted_noise,
        config=planted,
        generator=g,
    )
    return concepts, units, distractors


def _corrupted_columns(concepts: Tensor, fraction: float, seed: int) -> Tensor:
    """``[c, c_missing, c_extra]`` for every column ``c`` of ``concepts``, side by side."""
    generator = torch.Generator().manual_seed(seed)
    missing, extra = corrupt_labels(concepts, fraction, generator=generator)
    return torch.stack([concepts, missing, extra], dim=2).flatten(1)


def _planted_cases(config: SanityConfig) -> tuple[list[_Case], dict[str, Any]]:
    """One case per seed and fraction on fresh planted data, and what the source holds."""
    cases: list[_Case] = []
    for seed in config.seeds:
        concepts, units, distractors = _planted_case(config, seed)
        for i, f in enumerate(config.fractions):
            P = _corrupted_columns(concepts, f, 1000 * seed + i)
            cases.append(("planted", seed, f, units, torch.cat([P, distractors], dim=1)))
    about = {
        "images": config.planted_images,
        "units": config.planted_units,
        "distractors": config.distractors,
    }
    return cases, about


def _annotation_cases(
    annotations: Tensor, config: SanityConfig, source: str
) -> tuple[list[_Case], dict[str, Any]]:
    """One case per seed and fraction with the annotation columns as their own units (those
    with fewer than 2 positives or negatives skipped), and what the source holds."""
    A = binary_table("annotations", annotations)
    positives = A.sum(dim=0)
    keep = (positives >= 2) & (positives <= A.shape[0] - 2)
    if not keep.any():
        raise InputError("annotations: no column has at least 2 positives and 2 negatives")
    A = A[:, keep]
    cases: list[_Case] = [
        (source, seed, f, A, _corrupted_columns(A, f, 1000 * seed + i + 500))
        for seed in config.seeds
        for i, f in enumerate(config.fractions)
    ]
    about = {
        "images": A.shape[0],
        "units": int(keep.sum()),
        "skipped_columns": int((~keep).sum()),
    }
    return cases, about


def _score_cases(name: str, params: dict[str, Any], cases: Sequence[_Case], tally: _Tally) -> None:
    """Add one similarity function's passes and ties on every case to ``tally``."""
    fn = get_similarity(name)
    for source, _, f, Q, P in cases:
        S = fn(P, Q, **params).double()
        K = Q.shape[1]
        own = S[torch.arange(K)[:, None], 3 * torch.arange(K)[:, None] + torch.arange(3)]
        for test, col in (("missing", 1), ("extra", 2)):
            entry = tally.setdefault((name, source, test, f), [0, 0, 0])
            entry[0] += K
            entry[1] += int((own[:, 0] > own[:, col]).sum())
            entry[2] += int((own[:, 0] == own[:, col]).sum())


def _tally_rows(tally: _Tally) -> list[dict[str, Any]]:
    return [
        {
            "similarity": name,
            "source": source,
            "test": test,
            "fraction": f,
            "cases": total,
            "passed": passed,
            "tied": tied,
            "rate": passed / total,
        }
        for (name, source, test, f), (total, passed, tied) in tally.items()
    ]


@torch.no_grad()
def similarity_sanity(
    annotations: Tensor | None = None,
    config: SanityConfig | None = None,
    *,
    source: str = "annotations",
    progress: bool = False,
    **overrides: Any,
) -> SanityResult:
    """Missing- and extra-labels sanity tests of the similarity functions (module
    docstring), on planted units and, when given, on ``annotations`` columns as their own
    units.

    Args:
        annotations: an optional binary ``(N, C)`` ground-truth table (e.g. ShapesWorld's
            ``concepts_table()``); columns with fewer than 2 positives or negatives are
            skipped (a corruption would empty them).
        config: settings; keyword ``overrides`` replace its fields.
        source: the name of the annotation source in the results (e.g. ``"shapes"``).
        progress: print one line per similarity function.

    Example:
        >>> r = similarity_sanity(planted_units=10, planted_images=300, seeds=(0,),
        ...                       fractions=(0.5,), similarities=("cos",))
        >>> r.verdicts()
        {'cos': True}
    """
    if config is None:
        config = SanityConfig(**overrides)
    elif overrides:
        config = SanityConfig(**{**config.to_dict(), **overrides})
    if source == "planted":
        raise InputError("source: 'planted' is the name of the built-in source; pick another")
    cases: list[_Case] = []
    sources: dict[str, Any] = {}
    if config.planted_units:
        planted, sources["planted"] = _planted_cases(config)
        cases += planted
    if annotations is not None:
        annotated, sources[source] = _annotation_cases(annotations, config, source)
        cases += annotated
    if not cases:
        raise InputError("nothing to test: planted_units is 0 and no annotations were given")
    tally: _Tally = {}
    seconds: dict[str, float] = {}
    for name in config.similarities:
        t0 = time.perf_counter()
        _score_cases(name, config.similarity_params.get(name, {}), cases, tally)
        seconds[name] = round(time.perf_counter() - t0, 3)
        if progress:
            print(f"similarity_sanity: {name} done in {seconds[name]:.1f} s", flush=True)
    meta = {
        "sources": sources,
        "default_similarity": DEFAULT_SIMILARITY,
        "seconds": seconds,
        "definition": SANITY_DEFINITION,
    }
    return SanityResult(_tally_rows(tally), config.to_dict(), meta)
