"""Neuron dissection: a text label for every unit of any layer (CLIP-Dissect, LWTA-aware).

For a probe set of ``N`` raw images and ``M`` concept strings, the embedder gives the
image-concept matrix ``P`` (``N x M``); recording gives each layer's pooled activations ``Q``
(``N x K``, post-competition for LWTA layers); a similarity function scores ``S = sim(P, Q)``
(``K x M``) and unit ``k`` is described by ``argmax_m S[k, m]`` (method.md §6).

The target model sees the probe through its own evaluation transform (from the training
run's ``data_config`` when it has one); the embedder applies its own preprocessing.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import io
import json
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from torch.utils.data import Dataset

from discover._utils import (
    atomic_path,
    cache_root,
    cache_warning,
    check_options,
    require_file,
    resolve_device,
    spreadsheet_safe,
    staged_dir,
    write_files,
)
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.labels import (
    MATCH_SIMILARITY,
    TIE_BREAK_SIMILARITY,
    abstentions,
    choose_labels,
    column_flags,
    label_defaults,
)
from discover.dissection.recording import (
    LayerMaps,
    dataset_fingerprint,
    model_fingerprint,
    model_view,
    record,
    record_rows,
    resolve_layers,
)
from discover.dissection.sae import SAE, as_sae, record_latents
from discover.dissection.significance import (
    SIGNIFICANCE_SIMILARITY,
    SIGNIFICANT_P,
    label_significance,
)
from discover.dissection.similarity import get_similarity
from discover.dissection.streaming import (
    BLOCK_ROWS,
    FileRows,
    RowWriter,
    TensorRows,
    column_stats,
    streamed_significance,
    streamed_similarity,
)
from discover.errors import InputError
from discover.nn.checkpoints import count_parameters
from discover.nn.lwta import LWTA

__all__ = [
    "label_layers",
    "model_about",
    "probe_about",
    "UnitDescription",
    "ConceptStats",
    "DissectedLayer",
    "DissectedModel",
    "Dissection",
    "DissectConfig",
    "StaleDissectionError",
    "concept_matrix",
    "concept_rows",
    "dissect_config",
    "STREAM_ENTRIES",
    "default_dissection_dir",
    "dissect",
]

CSV_COLUMNS = (
    "layer",
    "unit",
    "block",
    "position",
    "label",
    "abstained",
    "score",
    "match",
    "top5",
    "z",
    "p_null",
)
SCORES_FILE = "scores.safetensors"  # optional: the full score matrices (keep_scores=True)
ACTIVATIONS_FILE = "activations.safetensors"  # Q and the winner fractions per layer
MAPS_FILE = "maps.safetensors"  # spatial maps of each unit's top probe images
OLD_SCORES_FILE = "scores.pt"  # the score matrices as written by discover 0.1; still read
ROWS_DIR = "rows"  # a streamed dissection's Q, one folder of row files per layer
DISSECTION_FILES = (
    "descriptions.csv",
    "dissection.json",
    SCORES_FILE,
    ACTIVATIONS_FILE,
    MAPS_FILE,
    OLD_SCORES_FILE,
)
DISSECTION_DIR = "dissection"  # a training run's dissection: RUN/dissection
# Results computed from a dissection and saved beside it: they go when it is replaced.
_DERIVED_PREFIXES = ("description_scores", "simulation_scores-", "groundtruth")


class StaleDissectionError(InputError):
    """A dissection is used with a model it does not describe (other weights, layers or U)."""


@dataclass
class UnitDescription:
    """The description of one unit; ``block``/``position`` are set for LWTA layers.

    ``label`` is the similarity function's best concept (ties broken as
    :mod:`discover.dissection.labels` says); when ``abstained`` names a reason, the unit is
    shown *unlabelled* and ``label`` is only its first candidate (:attr:`shown_label` is
    then ``None``).
    """

    layer: str
    unit: int
    label: str
    score: float
    top: list[tuple[str, float]]
    block: int | None = None
    position: int | None = None
    active_fraction: float | None = None  # LWTA: how often the unit won on the probe set
    z: float | None = None
    """The label's significance: its score's z against the unit's shuffled-image null (see
    :mod:`discover.dissection.significance`; comparable across runs, ``None``: not drawn)."""
    p_null: float | None = None
    """The null's upper tail beyond the score (Gumbel fit); the label beats chance when
    ``p_null <= 0.001``."""
    abstained: str | None = None
    """Why the unit is shown unlabelled (one of
    :data:`~discover.dissection.labels.ABSTAIN_REASONS`), or ``None``: it is labelled."""
    match: float | None = None
    """How well the label explains the unit: the Pearson correlation over the probe between
    the unit and the label's column of ``P`` (``None``: saved by discover <= 0.3)."""

    @property
    def above_chance(self) -> bool | None:
        """Whether the label beats the shuffled-image null (``None``: not measured)."""
        return None if self.p_null is None else self.p_null <= SIGNIFICANT_P

    @property
    def shown_label(self) -> str | None:
        """The label a reader sees: ``label``, or ``None`` when the unit abstained."""
        return None if self.abstained else self.label

    @property
    def candidates(self) -> list[str]:
        """The unit's concepts, best first (the label or, if it abstained, its candidates)."""
        return [concept for concept, _ in self.top]


@dataclass
class DissectConfig:
    """Every setting of a dissection; saved as ``dissection.json``."""

    layers: list[str]
    concepts: str
    embedder: str
    similarity: str = "soft_wpmi"  # files of discover <= 0.3 do not say; that was the default
    similarity_params: dict[str, Any] = field(default_factory=dict)
    pooling: str | dict[str, str] = "auto"
    policy: str = "argmax"
    seed: int = 0
    batch_size: int = 64
    top_k: int = 5
    null_repeats: int = 0  # shuffled-image draws behind each label's z (0: none)
    # the function that judges each label for its z (None: ``similarity``, discover <= 0.3)
    significance_similarity: str | None = None
    abstain_p: float | None = None  # labels with p_null above it abstain (None: never)
    min_match: float | None = None  # labels whose match is below it abstain (None: never)


@dataclass(frozen=True)
class DissectedLayer:
    """What a dissection recorded about one layer."""

    name: str
    units: int
    pooling: str | None
    U: int | None  # the layer's LWTA block size (None: dense)
    dead_units: int  # never active on the probe
    above_chance: int | None = None  # labels that beat the shuffled-image null
    sae: bool = False  # the units are the latents of an SAE on this layer


@dataclass(frozen=True)
class DissectedModel:
    """What a dissection recorded about its model and probe set."""

    model_class: str | None
    parameters: int | None
    cvn: dict[str, Any]  # the CVN configuration (``cvn_config.to_dict()``; empty if none)
    sha256: str | None  # the weights hash, see :meth:`Dissection.check_model`
    probe_images: int
    probe_fingerprint: str | None
    skipped_images: dict[str, str]  # unreadable probe files (path -> reason)
    embedder: str | None
    concept_set: str | None  # name and sha256 prefix
    seconds: float | None
    sae: dict[str, Any] | None  # the SAE's provenance when the units are its latents
    embedder_spec: str | None = None  # the spec the embedder was built from, if one was
    embedder_kind: str | None = None  # "vlm" or "annotations" (None: discover <= 0.3)


@dataclass
class ConceptStats:
    """How strongly the embedder sees each concept across the probe: the mean and standard
    deviation of every column of ``P``. An image's concept score is compared with them
    (:meth:`standardise`) to tell which of a unit's candidate labels this image shows more
    than the probe's images do on average (image-conditioned explanations)."""

    names: list[str]
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, P: torch.Tensor, names: Sequence[str]) -> ConceptStats:
        """The statistics of the columns of ``P`` (``N x M``), named ``names``."""
        P = P.detach().double()
        std = P.std(dim=0, correction=0) if len(P) > 1 else torch.zeros(P.shape[1])
        return cls(list(names), P.mean(dim=0).float().cpu(), std.float().cpu())

    @classmethod
    def merge(cls, *parts: ConceptStats | None) -> ConceptStats | None:
        """The union of ``parts`` by concept name (the first part wins a name twice)."""
        index: dict[str, tuple[float, float]] = {}
        for part in parts:
            for name, m, s in (
                zip(part.names, part.mean.tolist(), part.std.tolist(), strict=True) if part else ()
            ):
                index.setdefault(name, (m, s))
        if not index:
            return None
        names = list(index)
        return cls(
            names,
            torch.tensor([index[n][0] for n in names]),
            torch.tensor([index[n][1] for n in names]),
        )

    def standardise(self, names: Sequence[str], scores: torch.Tensor) -> torch.Tensor:
        """``(scores - mean) / std`` for the concepts ``names`` (the columns of ``scores``,
        ``(n, len(names))``); a concept that never varied on the probe gets 0 where its
        score equals the mean, and a large value of the difference's sign elsewhere.

        Raises:
            InputError: a name is not a concept of this dissection.
        """
        where = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in where]
        if missing:
            raise InputError(f"concepts not in the dissection's concept statistics: {missing[:5]}")
        idx = torch.tensor([where[n] for n in names], dtype=torch.long)
        mean, std = self.mean[idx], self.std[idx]
        diff = scores.float() - mean
        return diff / std.clamp_min(1e-6)


@dataclass
class Dissection:
    """One row per (layer, unit), plus the configuration, the metadata and the data that
    produced it: every layer's pooled probe activations ``Q`` and, for LWTA layers, how often
    each unit won. Later stages (evaluation, explanation, the report) read these instead of
    running the model again.
    """

    units: list[UnitDescription]
    config: DissectConfig
    meta: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """``{layer: S}``, the full ``K x M`` similarity matrix per layer (``keep_scores=True``)."""
    concepts: list[str] | None = field(default=None, repr=False)
    """The ``M`` concept strings, the columns of :attr:`scores` (``keep_scores=True``)."""
    folder: Path | None = field(default=None, repr=False, compare=False)
    """The folder it was saved to or loaded from, if any."""
    activations: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """``{layer: Q}``, the pooled probe activations ``(N, K)`` the labels were computed from."""
    winner_fractions: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """``{LWTA layer: (K,)}``, the fraction of the probe (positions included) each unit won."""
    concept_stats: ConceptStats | None = field(default=None, repr=False)
    """Each concept's mean and spread of ``P`` over the probe (``None``: saved by discover
    <= 0.3); image-conditioned explanations compare an image's concept scores with them."""
    maps: dict[str, LayerMaps] = field(default_factory=dict, repr=False)
    """``{layer: LayerMaps}``: for layers with spatial extent, the activation maps (and LWTA
    winner maps) of each unit's top probe images (empty: a layer without spatial extent, or
    a dissection saved before maps were kept)."""

    @property
    def layers(self) -> list[str]:
        """The dissected layers, in order."""
        return list(dict.fromkeys(u.layer for u in self.units))

    def probe_activations(self, name: str) -> torch.Tensor:
        """``Q`` of layer ``name``: its pooled activations on the probe set, ``(N, K)``."""
        if name not in self.activations:
            self.layer(name)  # an unknown layer names the ones there are
            where = f" in {self.folder}" if self.folder else ""
            raise InputError(
                f"the dissection{where} holds no probe activations of layer {name!r} (saved "
                "by an older discover, or its activations file is missing); redissect it with "
                "`discover dissect ... --out DIR` or discover.dissect(...)"
            )
        Q = self.activations[name]
        if isinstance(Q, torch.Tensor):
            return Q
        return torch.cat([block for _, block in Q.blocks(BLOCK_ROWS)]).float()

    def layer_info(self, name: str) -> DissectedLayer:
        """What the dissection recorded about layer ``name``."""
        rows = self.layer(name)
        info = (self.meta.get("layers") or {}).get(name, {})
        sae = self.meta.get("sae") or {}
        return DissectedLayer(
            name=name,
            units=int(info.get("units", len(rows))),
            pooling=self.pooling(name),
            U=info.get("U"),
            dead_units=int(info.get("dead_units", 0)),
            above_chance=info.get("above_chance"),
            sae=sae.get("layer") == name,
        )

    @property
    def about(self) -> DissectedModel:
        """What the dissection recorded about its model and probe set."""
        meta, probe = self.meta, self.meta.get("probe") or {}
        embedder = meta.get("embedder")
        return DissectedModel(
            model_class=meta.get("model_class"),
            parameters=meta.get("parameters"),
            cvn=dict(meta.get("model") or {}),
            sha256=meta.get("model_sha256") or (meta.get("recording") or {}).get("model_sha256"),
            probe_images=int(probe.get("images", 0)),
            probe_fingerprint=probe.get("fingerprint"),
            skipped_images=dict(probe.get("skipped_unreadable") or {}),
            embedder=embedder.get("name") if isinstance(embedder, dict) else embedder,
            concept_set=meta.get("concept_set")
            if isinstance(meta.get("concept_set"), str)
            else None,
            seconds=meta.get("seconds"),
            sae=meta.get("sae"),
            embedder_spec=embedder.get("spec") if isinstance(embedder, dict) else None,
            embedder_kind=embedder.get("kind") if isinstance(embedder, dict) else None,
        )

    @classmethod
    def merge(cls, *parts: Dissection) -> Dissection:
        """One dissection of the layers of ``parts`` (disjoint layers of one model and probe
        set), e.g. hidden layers labelled with a concept vocabulary and the classifier with
        the class names.

        Example:
            >>> both = Dissection.merge(hidden, final)  # doctest: +SKIP
        """
        if not parts:
            raise InputError("Dissection.merge: no dissections given")
        seen: dict[str, int] = {}
        for i, part in enumerate(parts):
            for name in part.layers:
                if name in seen:
                    raise InputError(
                        f"Dissection.merge: layer {name!r} is in parts {seen[name]} and {i}; "
                        "the parts must cover different layers"
                    )
                seen[name] = i
        if len({p.about.sha256 for p in parts} - {None}) > 1:
            raise InputError(
                "Dissection.merge: the parts describe different models (weights differ)"
            )
        if len({p.about.probe_fingerprint for p in parts} - {None}) > 1:
            raise InputError("Dissection.merge: the parts were made on different probe sets")
        first = parts[0]
        config = DissectConfig(
            **{
                **asdict(first.config),
                "layers": [name for p in parts for name in p.config.layers],
                "concepts": "; ".join(
                    f"{', '.join(p.config.layers)}: {p.config.concepts}" for p in parts
                ),
            }
        )
        meta = {**first.meta, "layers": {k: v for p in parts for k, v in p.meta["layers"].items()}}
        return cls(
            [u for p in parts for u in p.units],
            config,
            meta,
            activations={k: v for p in parts for k, v in p.activations.items()},
            winner_fractions={k: v for p in parts for k, v in p.winner_fractions.items()},
            concept_stats=ConceptStats.merge(*(p.concept_stats for p in parts)),
            maps={k: v for p in parts for k, v in p.maps.items()},
        )

    def layer(self, name: str) -> list[UnitDescription]:
        """The rows of one layer, in unit order."""
        rows = [u for u in self.units if u.layer == name]
        if not rows:
            raise InputError(
                f"no layer {name!r} in this dissection; it has "
                f"{', '.join(dict.fromkeys(u.layer for u in self.units))}"
            )
        return rows

    def pooling(self, name: str) -> str | None:
        """The pooling used for layer ``name``: as recorded, else as configured (``None``
        when neither says, e.g. ``"auto"`` for a layer this dissection does not cover)."""
        recorded = self.meta.get("layers", {}).get(name, {}).get("pooling")
        if recorded:
            return recorded
        configured = self.config.pooling
        if isinstance(configured, dict):
            configured = configured.get(name, "auto")
        return None if configured == "auto" else configured

    def labels(self, name: str) -> list[str]:
        """The label of every unit of layer ``name`` (for a unit that abstained, its first
        candidate; see :meth:`shown_labels`)."""
        return [u.label for u in self.layer(name)]

    def shown_labels(self, name: str) -> list[str | None]:
        """What a reader sees for every unit of layer ``name``: its label, or ``None`` for a
        unit shown unlabelled (``UnitDescription.abstained``)."""
        return [u.shown_label for u in self.layer(name)]

    def to_csv(self) -> str:
        """``layer,unit,block,position,label,abstained,score,match,top5,z,p_null`` with
        ``top5`` as a JSON list (the candidates, best first). ``label`` is empty and
        ``abstained`` gives the reason for a unit shown unlabelled; ``z`` and ``p_null`` are
        empty when the null was not drawn. A label that a spreadsheet would run as a formula
        gets a leading ``'`` (:func:`~discover._utils.spreadsheet_safe`)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for u in self.units:
            writer.writerow(
                [
                    spreadsheet_safe(u.layer),
                    u.unit,
                    "" if u.block is None else u.block,
                    "" if u.position is None else u.position,
                    spreadsheet_safe(u.shown_label or ""),
                    u.abstained or "",
                    f"{u.score:.6g}",
                    "" if u.match is None else f"{u.match:.4g}",
                    json.dumps([[c, round(s, 6)] for c, s in u.top]),
                    "" if u.z is None else f"{u.z:.4g}",
                    "" if u.p_null is None else f"{u.p_null:.4g}",
                ]
            )
        return buffer.getvalue()

    def save(self, out: str | Path) -> Path:
        """Write ``descriptions.csv``, ``dissection.json``, ``activations.safetensors`` (``Q``
        and the winner fractions) and, when the scores were kept, ``scores.safetensors`` into
        ``out``, as one unit.

        A new folder, or one that holds only an earlier dissection (and results computed from
        it, which no longer apply), is written beside ``out`` and swapped in whole. In a folder
        that holds other files, every file is first written in full under a temporary name and
        then renamed into place. Either way a rerun overwrites, never appends, and a failure
        (disk full included) leaves the previous result unchanged and no temporary file.
        """
        out = Path(out)
        stamp = uuid.uuid4().hex  # pairs the tensor files with their dissection.json
        payload = {
            "id": stamp,
            "config": asdict(self.config),
            "meta": self.meta,
            "units": [asdict(u) for u in self.units],
        }
        files: dict[str, Any] = {}
        if self.scores:
            scores = {name: S.detach().float().contiguous() for name, S in self.scores.items()}
            head = {"id": stamp, "concepts": json.dumps(self.concepts)}
            files[SCORES_FILE] = partial(_save_tensors, scores, head=head)
        streamed = {k: v for k, v in self.activations.items() if not isinstance(v, torch.Tensor)}
        payload["rows"] = {k: f"{ROWS_DIR}/layer-{i}" for i, k in enumerate(streamed)}
        if self.activations or self.winner_fractions or self.concept_stats:
            tensors = {
                f"Q/{k}": v for k, v in self.activations.items() if isinstance(v, torch.Tensor)
            }
            tensors.update({f"wins/{k}": v for k, v in self.winner_fractions.items()})
            head = {"id": stamp}
            if self.concept_stats is not None:
                tensors["P/mean"] = self.concept_stats.mean
                tensors["P/std"] = self.concept_stats.std
                head["concepts"] = json.dumps(self.concept_stats.names)
            tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
            files[ACTIVATIONS_FILE] = partial(_save_tensors, tensors, head=head)
        if self.maps:
            tensors_maps: dict[str, torch.Tensor] = {}
            for name, layer_maps in self.maps.items():
                tensors_maps.update(layer_maps.to_tensors(name))
            tensors_maps = {k: v.detach().contiguous() for k, v in tensors_maps.items()}
            head = {"id": stamp, "notes": json.dumps({n: m.note for n, m in self.maps.items()})}
            files[MAPS_FILE] = partial(_save_tensors, tensors_maps, head=head)
        files["descriptions.csv"] = self.to_csv()
        files["dissection.json"] = json.dumps(payload, indent=2, default=str)  # last: the index
        try:
            if _replaceable(out):
                with staged_dir(out) as staging:
                    write_files(staging, files)
                    _copy_rows(streamed, payload["rows"], staging)
            else:
                write_files(out, files)
                _copy_rows(streamed, payload["rows"], out)
                for name in (SCORES_FILE, ACTIVATIONS_FILE, MAPS_FILE, OLD_SCORES_FILE):
                    if name not in files:  # never leave another dissection's data beside ours
                        (out / name).unlink(missing_ok=True)
        except OSError as error:
            raise OSError(
                error.errno,
                f"could not write the dissection to {out} ({error.strerror or error}); "
                "the previous result there is unchanged",
            ) from error
        self.folder = out
        return out

    @classmethod
    def load(cls, out: str | Path) -> Dissection:
        """Read a saved dissection directory back.

        A tensor file that cannot be read or belongs to another ``dissection.json`` is ignored
        with a warning (without scores the ranks come from the top-5 lists; without
        activations the later stages ask for a redissection).
        """
        out = Path(out)
        path = require_file(out, "dissection.json", "a dissection", "discover dissect --out DIR")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            units = [
                UnitDescription(**{**u, "top": [tuple(t) for t in u["top"]]}) for u in data["units"]
            ]
            config = DissectConfig(**data["config"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"dissection {path} cannot be read ({type(error).__name__}: {error}): the file "
                f"is damaged or not a dissection; redissect with `discover dissect ... --out {out}`"
            ) from None
        result = cls(units, config, data.get("meta") or {}, folder=out)
        stamp = data.get("id")
        for name, folder in (data.get("rows") or {}).items():
            if (out / folder / "rows.json").is_file():
                result.activations[name] = FileRows(out / folder)
        activations = _read_tensors(out / ACTIVATIONS_FILE, stamp, "probe activations")
        if activations is not None:
            tensors, head = activations
            result.activations.update({k[2:]: v for k, v in tensors.items() if k.startswith("Q/")})
            result.winner_fractions = {
                k[5:]: v for k, v in tensors.items() if k.startswith("wins/")
            }
            result.concept_stats = _read_concept_stats(tensors, head)
        maps = _read_tensors(out / MAPS_FILE, stamp, "spatial maps")
        if maps is not None:
            tensors, head = maps
            notes = json.loads(head.get("notes") or "{}")
            result.maps = {
                name: LayerMaps.from_tensors(tensors, name, notes.get(name, ""))
                for name in notes
                if f"{name}.indices" in tensors and f"{name}.maps" in tensors
            }
        scores = _read_tensors(out / SCORES_FILE, stamp, "score matrices")
        if scores is not None:
            result.scores, head = scores
            result.concepts = json.loads(head["concepts"])
        elif (out / OLD_SCORES_FILE).is_file():
            result.scores, result.concepts = _read_old_scores(out / OLD_SCORES_FILE, stamp)
        return result

    def check_probe(self, probe: Dataset, what: str = "probe") -> str | None:
        """Refuse a probe set that is not the one this dissection was made on: another content
        fingerprint or, where none can be had, another number of images. Returns the probe's
        fingerprint (``None`` when it has none); ``what`` starts the error message.

        Example:
            >>> Dissection.load("runs/shapes-u8/dissection").check_probe(probe)  # doctest: +SKIP
        """
        about = self.about
        expected, actual = about.probe_fingerprint, dataset_fingerprint(probe)
        n = len(probe)
        if (expected and actual and actual != expected) or (
            about.probe_images and n != about.probe_images
        ):
            where = f" in {self.folder}" if self.folder else ""
            recorded = (self.meta.get("probe") or {}).get("type")
            raise InputError(
                f"{what}: not the probe set the dissection{where} was made on (given: "
                f"{type(probe).__name__}, {n} images, fingerprint {(actual or 'none')[:12]}; "
                f"dissected: {recorded or 'unknown'}, {about.probe_images} images, "
                f"fingerprint {(expected or 'none')[:12]}). Build it as for the dissection: "
                "the same data set, split, arguments (e.g. --probe-arg n=..., image_size=...) "
                "and limit"
            )
        return actual

    def check_model(
        self, model: nn.Module, *, allow_mismatch: bool = False, run: str | None = None
    ) -> list[str]:
        """Check that this dissection describes ``model``; returns what differs.

        Compares the weights hash recorded at dissection time (older dissections without one
        skip that check), that every dissected layer exists, and each layer's ``U``.

        Args:
            model: the model the dissection is about to be used with.
            allow_mismatch: warn instead of raising.
            run: the model's training run, for the redissect command in the message.

        Raises:
            StaleDissectionError: something differs and ``allow_mismatch`` is false.
        """
        problems = []
        recorded = self.meta.get("model_sha256") or (self.meta.get("recording") or {}).get(
            "model_sha256"
        )
        if recorded:
            current = model_fingerprint(model)
            if current != recorded:
                problems.append(
                    f"the weights differ (dissected sha256 {recorded[:12]}, this model "
                    f"{current[:12]}: retrained or replaced since?)"
                )
        modules = dict(model.named_modules())
        layer_meta = self.meta.get("layers") or {}
        for name in dict.fromkeys([*self.config.layers, *(u.layer for u in self.units)]):
            if name not in modules:
                problems.append(f"it has no layer {name!r}")
            elif "U" in layer_meta.get(name, {}):
                was = layer_meta[name]["U"]
                now = modules[name].U if isinstance(modules[name], LWTA) else None
                if was != now:
                    problems.append(f"layer {name!r} has U={now}, the dissection U={was}")
        if not problems:
            return []
        where = f" in {self.folder}" if self.folder else ""
        message = (
            f"the dissection{where} does not describe this model: {'; '.join(problems)}. "
            f"Redissect it: `discover dissect --run {run or 'RUN'} --layers "
            f"{' '.join(self.config.layers)} --out {self.folder or 'DIR'}` with the probe, "
            "--concepts and --embedder used before (see its dissection.json), or "
            "discover.dissect(model, ...); allow_mismatch=True uses it anyway"
        )
        if not allow_mismatch:
            raise StaleDissectionError(message)
        warned = self.__dict__.setdefault("_warned", set())
        if tuple(problems) not in warned:  # once per dissection and mismatch
            warned.add(tuple(problems))
            warnings.warn(message, UserWarning, stacklevel=2)
        return problems


def _read_concept_stats(
    tensors: dict[str, torch.Tensor], head: dict[str, str]
) -> ConceptStats | None:
    """The concept statistics saved with the activations (``None``: absent or damaged)."""
    try:
        names = json.loads(head["concepts"])
        mean, std = tensors["P/mean"], tensors["P/std"]
    except (KeyError, ValueError):
        return None
    if not isinstance(names, list) or not len(names) == len(mean) == len(std):
        return None
    return ConceptStats([str(n) for n in names], mean, std)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, head: dict[str, Any]) -> None:
    """safetensors bytes written through Python, so a full disk is an ``OSError``."""
    Path(path).write_bytes(save(tensors, {k: str(v) for k, v in head.items()}))


def _read_tensors(
    path: Path, stamp: str | None, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and header of a dissection's safetensors file, or ``None`` (missing, or
    ignored with a warning: unreadable or another dissection's)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            head = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        problem = None if head.get("id") == stamp else f"another dissection's {what}"
    except Exception as error:  # noqa: BLE001  (safetensors raises several types)
        problem = f"unreadable ({type(error).__name__}: {error})"
    if problem is None:
        return tensors, head
    hint = (
        "keep_scores=True (`discover dissect --keep-scores`) for exact ranks"
        if what == "score matrices"
        else "to recreate it"
    )
    warnings.warn(f"ignoring {path}: {problem}; redissect with {hint}", UserWarning, stacklevel=3)
    return None


def _read_old_scores(path: Path, stamp: str | None) -> tuple[dict[str, torch.Tensor], Any]:
    """``scores.pt`` of discover 0.1 (tensors and strings only: ``weights_only=True``)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        problem = None if saved.get("id") == stamp else "another dissection's"
    except Exception as error:  # noqa: BLE001  (torch.load raises many types)
        problem = f"unreadable ({type(error).__name__}: {error})"
    if problem is None:
        return dict(saved["scores"]), saved["concepts"]
    warnings.warn(
        f"ignoring {path}: {problem} score matrices; redissect with keep_scores=True "
        "(`discover dissect --keep-scores`) for exact ranks",
        UserWarning,
        stacklevel=3,
    )
    return {}, None


def default_dissection_dir(run: str | Path) -> Path:
    """Where the dissection of a training run lives unless told otherwise: ``RUN/dissection``.

    :func:`discover.explanation.explain_run` (``discover explain``) looks for it there.

    Example:
        >>> default_dissection_dir("runs/shapes-u8").as_posix()
        'runs/shapes-u8/dissection'
    """
    return Path(run) / DISSECTION_DIR


def _copy_rows(sources: dict[str, Any], folders: dict[str, str], out: Path) -> None:
    """Write the rows of a streamed dissection's ``Q`` into ``out`` (row files are copied,
    other row sources, such as the shards of a merge, written block by block)."""
    for name, source in sources.items():
        target = out / folders[name]
        folder = getattr(source, "folder", None)
        if folder is not None:
            if target.resolve() != Path(folder).resolve():
                shutil.copytree(folder, target, dirs_exist_ok=True)
            continue
        with RowWriter(target) as writer:
            for _, block in source.blocks(BLOCK_ROWS):
                writer.append(block)


def _replaceable(out: Path) -> bool:
    """Whether ``out`` is missing or holds nothing but a dissection and its derived results."""
    if not out.exists():
        return True
    if not out.is_dir():
        raise InputError(f"dissection destination {out} is a file, expected a folder")
    return all(
        (entry.is_dir() and entry.name == ROWS_DIR)
        or entry.is_file()
        and (
            entry.name in DISSECTION_FILES
            or entry.name.startswith(_DERIVED_PREFIXES)
            or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        )
        for entry in out.iterdir()
    )


def concept_matrix(
    probe: Dataset,
    concepts: str | ConceptSet = "20k",
    embedder: str | Embedder = "conse",
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``P`` (``N x M``): the image-concept similarities of the probe set, the one way to get
    them (used by :func:`dissect`, the simulation score, planted recovery and the benchmarks).

    With ``cache_dir``, ``P`` comes from a content-keyed cache when it is there: the key hashes
    the embedder's id, the probe set's content and the concept set. An entry that cannot be
    read, or holds another key or shape, is a miss: it warns, naming the file, and is
    recomputed and replaced. A write that fails (disk full, read-only) warns and carries on
    without caching. The result always has shape ``(len(probe), len(concepts))``.

    Args:
        probe: raw probe images.
        concepts: a concept-set name, a file path or a :class:`ConceptSet`.
        embedder: an embedder name (see :func:`discover.build_embedder`) or an
            :class:`Embedder`.
        cache_dir: the cache root (``None``: no cache).
        info: filled with ``{"file": cache entry or None, "hit": bool}``.

    Example:
        >>> from discover.data import ShapesWorld
        >>> P = concept_matrix(ShapesWorld(n=64, image_size=32), "shapes",
        ...                    "annotations", progress=False)
        >>> tuple(P.shape)
        (64, 46)
    """
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    probe_id = dataset_fingerprint(probe)
    shape = (len(probe), len(concept_set))
    key = hashlib.sha256(
        json.dumps([emb.id, probe_id, len(probe), concept_set.sha256, 3]).encode()
    ).hexdigest()
    path = (
        cache_dir / "concepts" / f"{key}.safetensors"
        if cache_dir is not None and probe_id
        else None
    )
    found = {"file": None, "hit": False}
    if info is not None:
        info.update(found)
    if path is not None and path.is_file():
        P = _read_concept_matrix(path, key, shape)
        if P is not None:
            if info is not None:
                info.update(file=str(path), hit=True)
            return P
    P = emb.concept_matrix(probe, concept_set.concepts, batch_size=batch_size, progress=progress)
    if tuple(P.shape) != shape:
        raise InputError(
            f"embedder {emb.id!r} returned P of shape {tuple(P.shape)}, expected {shape} "
            "(probe images, concepts)"
        )
    if path is None:
        return P
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            _save_tensors({"P": P.detach().float().contiguous()}, tmp, {"key": key})
    except (OSError, RuntimeError) as error:
        cache_warning(
            f"could not write concept-matrix cache entry {path} ({type(error).__name__}: "
            f"{error}); carrying on without caching"
        )
        return P
    if info is not None:
        info["file"] = str(path)
    return P


STREAM_ENTRIES = 2**30
"""``dissect(stream="auto")`` streams ``P`` when it would hold at least this many entries
(``N x M``; 2**30 float32 values are 4 GiB). Below it the in-memory path is faster: a
streamed significance draw recomputes ``P``'s blocks from the image vectors (the scale
benchmark of issue 25 is to set this threshold by measurement)."""


def concept_rows(
    probe: Dataset,
    concepts: str | ConceptSet,
    embedder: str | Embedder,
    folder: str | Path,
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> Any:
    """``P`` as a row source (:mod:`discover.dissection.streaming`), never held whole: the
    probe's image vectors are written to row files and each row of ``P`` is computed when it
    is read (annotations: their columns). With ``cache_dir`` the image vectors are cached
    under a key of the embedder's id and the probe's content (not the concepts: every
    concept set reuses them); without, they go to ``folder``.

    Example:
        >>> P = concept_rows(probe, "20k", "conse", "tmp/vectors")  # doctest: +SKIP
    """
    from discover.dissection.streaming import FileRows, ProductRows, RowWriter, TensorRows

    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    texts = list(concept_set.concepts)
    if info is not None:
        info.update(file=None, hit=False, streamed=True)
    own = type(emb).concept_rows is not Embedder.concept_rows  # e.g. annotations
    if own:
        return emb.concept_rows(probe, texts, folder, batch_size=batch_size, progress=progress)
    if type(emb).concept_matrix is not Embedder.concept_matrix:  # P its own way, in memory
        return TensorRows(
            emb.concept_matrix(probe, texts, batch_size=batch_size, progress=progress)
        )
    probe_id = dataset_fingerprint(probe)
    if cache_dir is None or not probe_id:
        return emb.concept_rows(probe, texts, folder, batch_size=batch_size, progress=progress)
    key = hashlib.sha256(json.dumps([emb.id, probe_id, len(probe), 1]).encode()).hexdigest()
    cached = Path(cache_dir).expanduser() / "image-vectors" / key
    hit = (cached / "rows.json").is_file() and FileRows(cached).shape[0] == len(probe)
    if not hit:
        with staged_dir(cached) as staging:
            with RowWriter(staging) as writer:
                for vectors in emb.image_vectors(probe, batch_size, progress=progress):
                    writer.append(vectors)
    if info is not None:
        info.update(file=str(cached), hit=hit)
    return ProductRows(FileRows(cached), emb.text_vectors(texts, batch_size, progress))


def _read_concept_matrix(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached ``P`` at ``path``, or ``None`` (a miss, with a warning naming the file)."""
    try:
        with safe_open(path, framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
            P = f.get_tensor("P") if "P" in f.keys() else None  # noqa: SIM118
        if stored != key:
            problem = "it holds another key"
        elif P is None or tuple(P.shape) != shape:
            found = tuple(P.shape) if P is not None else "no matrix"
            problem = f"it holds {found}, expected shape {shape}"
        else:
            return P
    except Exception as error:  # noqa: BLE001  (damaged files raise several types)
        problem = f"{type(error).__name__}: {error}"
    cache_warning(f"concept-matrix cache entry {path} cannot be used ({problem}); recomputing it")
    return None


def _skipped(probe: Dataset) -> dict[str, str]:
    """Probe files that could not be decoded and were skipped (path -> reason)."""
    while isinstance(probe, torch.utils.data.Subset):
        probe = probe.dataset
    return {str(k): str(v) for k, v in (getattr(probe, "skipped", None) or {}).items()}


def dissect_config(
    model: nn.Module,
    layers: Sequence[str],
    concepts: str | ConceptSet,
    embedder: str | Embedder,
    similarity: str | None,
    *,
    similarity_params: dict[str, Any] | None = None,
    pooling: str | dict[str, str] = "auto",
    policy: str = "argmax",
    seed: int = 0,
    batch_size: int = 64,
    top_k: int = 5,
    null_repeats: int = 16,
    significance_similarity: str | None = SIGNIFICANCE_SIMILARITY,
    abstain_p: float | str | None = "default",
    min_match: float | str | None = "default",
) -> tuple[DissectConfig, ConceptSet, Embedder, dict[str, nn.Module]]:
    """:func:`dissect`'s options checked and resolved (the embedder kind's defaults filled
    in) before anything is recorded: the configuration, the concept set, the embedder and
    the layers. Shared with the sharded dissection (:mod:`discover.dissection.shards`)."""
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    defaults = label_defaults(emb.kind)
    if similarity is None:
        similarity = defaults.similarity
        if similarity_params is None:
            similarity_params = dict(defaults.similarity_params)
    if isinstance(abstain_p, str):
        if abstain_p != "default":
            raise InputError(f"abstain_p must be a number, None or 'default', got {abstain_p!r}")
        abstain_p = defaults.abstain_p if null_repeats else None
    elif abstain_p is not None and not 0 < abstain_p <= 1:
        raise InputError(f"abstain_p must be in (0, 1] or None, got {abstain_p!r}")
    if isinstance(min_match, str):
        if min_match != "default":
            raise InputError(f"min_match must be a number, None or 'default', got {min_match!r}")
        min_match = defaults.min_match
    elif min_match is not None and not -1 <= min_match <= 1:
        raise InputError(f"min_match must be in [-1, 1] or None, got {min_match!r}")
    if abstain_p is not None and not null_repeats:
        raise InputError(
            f"abstain_p={abstain_p} judges labels by their significance, which needs "
            "null_repeats >= 2 (shuffled-image draws); pass abstain_p=None to skip it"
        )
    score_fn = get_similarity(similarity)
    judge = significance_similarity or similarity
    get_similarity(judge)  # an unknown name fails now
    # checked before the (long) recording, not after it
    check_options(
        score_fn, dict(similarity_params or {}), f"similarity_params: similarity {similarity!r}"
    )
    modules = resolve_layers(model, layers)
    if null_repeats and null_repeats < 2:
        raise InputError(f"null_repeats must be 0 or >= 2, got {null_repeats}")
    config = DissectConfig(
        layers=list(modules),
        concepts=concept_set.name,
        embedder=emb.id,
        similarity=similarity,
        similarity_params=dict(similarity_params or {}),
        pooling=pooling,
        policy=policy,
        seed=seed,
        batch_size=batch_size,
        top_k=top_k,
        null_repeats=null_repeats,
        significance_similarity=judge if null_repeats else None,
        abstain_p=abstain_p,
        min_match=min_match,
    )
    return config, concept_set, emb, modules


def dissect(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    concepts: str | ConceptSet = "20k",
    embedder: str | Embedder = "conse",
    similarity: str | None = None,
    *,
    similarity_params: dict[str, Any] | None = None,
    pooling: str | dict[str, str] = "auto",
    policy: str = "argmax",
    seed: int = 0,
    batch_size: int = 64,
    top_k: int = 5,
    device: str = "cpu",
    transform: Callable | None = None,
    cache_dir: str | Path | None = "auto",
    progress: bool = True,
    keep_scores: bool = False,
    sae: SAE | str | Path | None = None,
    null_repeats: int = 16,
    significance_similarity: str | None = SIGNIFICANCE_SIMILARITY,
    abstain_p: float | str | None = "default",
    min_match: float | str | None = "default",
    allow_nonfinite: bool = False,
    stream: bool | str = "auto",
) -> Dissection:
    """Describe every unit of ``layers`` with a concept (CLIP-Dissect, method.md §6-7).

    Args:
        model: any model; LWTA layers are recorded after competition.
        layers: dotted layer names (see :func:`discover.dissection.recording.list_layers`).
        probe: raw probe images (a dataset of ``(image, ...)`` items, images not normalised).
        concepts: a concept-set name (``20k``, ``broden``, ``shapes``, ...) or a file path.
        embedder: ``conse`` (offline default), ``annotations`` (ground truth),
            ``open_clip:<arch>:<weights>``, ``hf:<dir>``, or an :class:`Embedder`.
        similarity: a name in :data:`discover.dissection.similarity.SIMILARITIES`; ``None``
            takes the default for the embedder's kind
            (:data:`~discover.dissection.labels.LABEL_DEFAULTS`, chosen by
            ``benchmarks/label_quality.py``; ``"soft_wpmi"`` is the paper's).
        similarity_params: keyword arguments for the similarity function (default: the
            kind's defaults when ``similarity`` is the kind's default, else none).
        pooling: ``auto``, one pooling for all layers, or ``{layer: pooling}``.
        policy: LWTA eval policy while recording (``argmax`` or ``sample``, seeded).
        top_k: runner-up concepts kept per unit.
        transform: the target model's preprocessing of a raw probe image (default: the
            model's evaluation transform, see :func:`model_view`).
        cache_dir: content-keyed cache of activations and of ``P``: ``"auto"`` puts it under
            :func:`discover._utils.cache_root` (``$DISCOVER_CACHE``, default
            ``~/.cache/discover``), a folder puts it there, ``None`` switches it off.
        keep_scores: also keep every layer's full ``K x M`` score matrix (and the concept
            list) as :attr:`Dissection.scores` / :attr:`Dissection.concepts`; ``save`` then
            writes ``scores.safetensors``. Needed for exact ranks in
            :func:`discover.evaluation.descriptions.evaluate_descriptions`.
        sae: a :class:`~discover.dissection.sae.SAE` of the one layer in ``layers`` (or
            its folder): its latents are the units, one label per latent
            (:func:`~discover.dissection.sae.record_latents`); ``meta["sae"]`` records it.
        null_repeats: shuffled-image draws of each layer's scores behind every label's
            calibrated significance (``UnitDescription.z``/``p_null``, see
            :mod:`discover.dissection.significance`); costs that many extra similarity
            computations per layer; 0 skips it.
        significance_similarity: the similarity function that judges each label for that
            significance (default ``corr``: Pearson correlation passes the missing- and
            extra-label sanity tests, see :func:`discover.evaluation.similarity_sanity`,
            ignores a vision-language model's shared offset, and costs one GEMM per draw);
            ``None`` judges with ``similarity`` itself. The label itself is always
            ``similarity``'s choice.
        abstain_p: a unit whose label's ``p_null`` is above this is shown *unlabelled*
            (``UnitDescription.abstained``), as are dead units, units with non-finite
            activations and units whose best concepts tie (see
            :mod:`discover.dissection.labels`); ``"default"``: the embedder kind's value;
            ``None``: never for significance. Needs ``null_repeats``.
        min_match: a unit whose label's ``match`` (Pearson r between the unit and the
            label's column of ``P`` over the probe) is below this is shown unlabelled;
            ``"default"``: the embedder kind's value; ``None``: never for that.
        allow_nonfinite: record NaN or infinite activations with a warning (those units
            stay unlabelled, "not finite") instead of raising
            :class:`~discover.errors.NonFiniteError` where they first appear.
        stream: compute ``P`` row block by row block instead of holding it whole
            (:func:`concept_rows`; the image vectors are cached, not ``P``), and every score
            from those blocks (:mod:`discover.dissection.streaming`): the same labels, scores
            equal to float32 rounding. ``"auto"``: when ``P`` would hold
            :data:`STREAM_ENTRIES` or more values.

    Example:
        >>> from discover.data import ShapesWorld
        >>> d = dissect(model, ["fc"], ShapesWorld(n=2000, split="val"),
        ...             concepts="shapes_classes", embedder="annotations")  # doctest: +SKIP
        >>> d.labels("fc")[:3]  # doctest: +SKIP
        ['circle', 'square', 'triangle']
    """
    t0 = time.time()
    config, concept_set, emb, modules = dissect_config(
        model, layers, concepts, embedder, similarity, similarity_params=similarity_params,
        pooling=pooling, policy=policy, seed=seed, batch_size=batch_size, top_k=top_k,
        null_repeats=null_repeats, significance_similarity=significance_similarity,
        abstain_p=abstain_p, min_match=min_match,
    )  # fmt: skip
    resolve_device(device)
    sae = as_sae(sae) if sae is not None else None
    # P and record expand "~"; only the string "auto" means the cache root
    auto = isinstance(cache_dir, str) and cache_dir == "auto"
    cache = cache_root() if auto else Path(cache_dir) if cache_dir is not None else None
    if stream not in (True, False, "auto"):
        raise InputError(f"stream must be True, False or 'auto', got {stream!r}")
    if stream == "auto":
        stream = len(probe) * len(concept_set) >= STREAM_ENTRIES
    view = model_view(model, probe, transform)
    common = dict(
        batch_size=batch_size, device=device, policy=policy, seed=seed, progress=progress,
        allow_nonfinite=allow_nonfinite,
    )  # fmt: skip
    if stream and sae is None:  # Q to row files as it is recorded: never N x K in memory
        rows_dir = _rows_folder(cache)
        recording = record_rows(model, list(modules), view, rows_dir, pooling, **common)
    else:
        recording = (record if sae is None else partial(record_latents, sae=sae))(
            model, list(modules), view, pooling, cache_dir=cache, **common
        )
    p_cache: dict[str, Any] = {}
    with contextlib.ExitStack() as scratch:
        P: Any
        if stream:  # the image vectors (or annotations): never N x M in memory
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="discover-P-"))
            P = concept_rows(
                probe, concept_set, emb, folder, batch_size=batch_size, cache_dir=cache,
                progress=progress, info=p_cache,
            )  # fmt: skip
        else:
            P = concept_matrix(
                probe, concept_set, emb, batch_size=batch_size, cache_dir=cache,
                progress=progress, info=p_cache,
            )  # fmt: skip
        units_per_block = {n: m.U if isinstance(m, LWTA) else None for n, m in modules.items()}
        return label_layers(
            recording, P, concept_set, emb.metadata(), config, units_per_block,
            model_about(model, recording.meta.get("model_sha256")), probe_about(probe),
            sae=sae, keep_scores=keep_scores, p_cache=p_cache, t0=t0,
        )  # fmt: skip


def model_about(model: nn.Module, sha256: str | None = None) -> dict[str, Any]:
    """What a dissection records about its model (``sha256``: its fingerprint if known)."""
    return {
        "model": getattr(getattr(model, "cvn_config", None), "to_dict", dict)(),
        "model_class": type(model).__name__,
        "parameters": count_parameters(model),
        "model_sha256": sha256 or model_fingerprint(model),
    }


def probe_about(probe: Dataset) -> dict[str, Any]:
    """What a dissection records about its probe set."""
    return {
        "images": len(probe),
        "skipped_unreadable": _skipped(probe),
        "fingerprint": dataset_fingerprint(probe),
        "type": type(probe).__name__,
    }


def _rows_folder(cache: Path | None) -> Path:
    """Where a streamed dissection's ``Q`` rows go while the process runs: a temporary folder
    (on the cache's disk when there is a cache), removed when the process exits;
    :meth:`Dissection.save` copies them into the dissection."""
    parent = None
    if cache is not None:
        parent = cache.expanduser() / "tmp"
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="discover-Q-", dir=parent))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _rows(Q: Any) -> Any:
    return TensorRows(Q) if isinstance(Q, torch.Tensor) else Q


def _score(name: str, P: Any, Q: Any, params: dict[str, Any], info=None) -> torch.Tensor:
    """``S`` of one similarity function: in memory, or from row sources when ``P`` or ``Q``
    is one."""
    if isinstance(P, torch.Tensor) and isinstance(Q, torch.Tensor):
        return get_similarity(name)(P, Q, **params, info=info)
    return streamed_similarity(name, _rows(P), _rows(Q), info=info, **params)


def _significance(
    name: str, P: Any, Q: torch.Tensor, judged: torch.Tensor, params: dict[str, Any],
    repeats: int, seed: int,
) -> Any:  # fmt: skip
    """The labels' significance: in memory, or from row sources when ``P`` or ``Q`` is one."""
    if isinstance(P, torch.Tensor) and isinstance(Q, torch.Tensor):
        return label_significance(
            P, Q, judged, get_similarity(name), params, repeats=repeats, seed=seed
        )
    return streamed_significance(
        name, _rows(P), _rows(Q), judged, repeats=repeats, seed=seed, **params
    )


def label_layers(
    recording: Any,
    P: Any,
    concept_set: ConceptSet,
    embedder_info: dict[str, Any],
    config: DissectConfig,
    units_per_block: dict[str, int | None],
    model_info: dict[str, Any],
    probe_info: dict[str, Any],
    *,
    sae: Any = None,
    keep_scores: bool = False,
    p_cache: dict[str, Any] | None = None,
    t0: float | None = None,
) -> Dissection:
    """Score, label and judge every layer of a recording: the second half of :func:`dissect`
    (which records first), also used to merge the shards of a sharded dissection
    (:mod:`discover.dissection.shards`).

    Args:
        recording: a :class:`~discover.dissection.recording.Recording` or
            :class:`~discover.dissection.recording.RowsRecording` (``activations``,
            ``wins``, ``pooling``, ``maps``, ``meta``).
        P: ``N x M`` concept matrix, a tensor or a row source.
        embedder_info: the embedder's ``metadata()``.
        units_per_block: each layer's competition block size ``U`` (``None``: not LWTA).
        model_info, probe_info: :func:`model_about` and :func:`probe_about` of what was
            recorded.
    """
    t0 = time.time() if t0 is None else t0
    p_cache = {} if p_cache is None else p_cache
    similarity, judge, seed = config.similarity, config.significance_similarity, config.seed
    null_repeats, top_k = config.null_repeats, config.top_k
    abstain_p, min_match = config.abstain_p, config.min_match
    judge = judge or similarity
    k = min(top_k, len(concept_set))
    names = list(concept_set.concepts)
    units: list[UnitDescription] = []
    layer_meta: dict[str, Any] = {}
    scores: dict[str, torch.Tensor] = {}
    fractions: dict[str, torch.Tensor] = {}
    for name in config.layers:
        Q = recording.activations[name]
        info: dict[str, Any] = {}
        S = _score(similarity, P, Q, config.similarity_params, info)
        if keep_scores:
            scores[name] = S.detach().float().cpu()
        computed = {similarity: S}  # each score matrix once (the tie-break and match: corr)
        for extra in (TIE_BREAK_SIMILARITY, MATCH_SIMILARITY):
            if extra not in computed:
                computed[extra] = _score(extra, P, Q, {})
        choice = choose_labels(S, computed[TIE_BREAK_SIMILARITY], names, k)
        top_scores, top_idx = choice.scores, choice.top
        match = computed[MATCH_SIMILARITY].float().cpu().gather(1, top_idx[:, :1]).squeeze(1)
        sig = None
        if null_repeats:
            if judge == similarity:
                params, judged = config.similarity_params, top_scores[:, 0]
            else:  # the label's score under the judge, against the judge's best by chance
                params = {}
                judging = computed[judge] if judge in computed else _score(judge, P, Q, {})
                judged = judging.float().cpu().gather(1, top_idx[:, :1]).squeeze(1)
            sig = _significance(judge, P, Q, judged, params, null_repeats, seed)
        reasons = abstentions(
            Q, choice.tie, sig.p if sig is not None else None, abstain_p, match, min_match
        )
        U = units_per_block.get(name)
        wins = recording.wins.get(name)
        active = None
        if wins is not None:
            active = (
                wins.float().mean(0) if isinstance(wins, torch.Tensor) else column_stats(wins)[0]
            )
        if active is not None:
            fractions[name] = active.cpu()
        for unit in range(S.shape[0]):
            top = [
                (names[j], float(s)) for s, j in zip(top_scores[unit], top_idx[unit], strict=True)
            ]
            units.append(
                UnitDescription(
                    layer=name,
                    unit=unit,
                    label=top[0][0],
                    score=top[0][1],
                    top=top,
                    block=unit // U if U and sae is None else None,
                    position=unit % U if U and sae is None else None,
                    active_fraction=float(active[unit]) if active is not None else None,
                    z=float(sig.z[unit]) if sig is not None else None,
                    p_null=float(sig.p[unit]) if sig is not None else None,
                    abstained=reasons[unit],
                    match=float(match[unit]),
                )
            )
        dead = int(column_flags(Q)[0].sum())
        layer_meta[name] = {
            "units": int(S.shape[0]),
            "pooling": recording.pooling[name],
            "U": U,
            "dead_units": dead,
            "similarity_info": info,
            "above_chance": int(sig.above_chance.sum()) if sig is not None else None,
            "abstained": {
                reason: reasons.count(reason) for reason in dict.fromkeys(reasons) if reason
            },
        }
    meta = {
        "layers": layer_meta,
        "concept_set": concept_set.summary(),
        "embedder": embedder_info,
        "probe": probe_info,
        "recording": recording.meta,
        "concept_matrix_cache": p_cache,
        **model_info,
        "seconds": time.time() - t0,
        **({"sae": sae.provenance()} if sae is not None else {}),
    }
    return Dissection(
        units,
        config,
        meta,
        scores,
        list(concept_set.concepts) if keep_scores else None,
        activations={
            name: recording.activations[name].float().cpu()
            if isinstance(recording.activations[name], torch.Tensor)
            else recording.activations[name]  # row files (a streamed dissection)
            for name in config.layers
        },
        winner_fractions=fractions,
        concept_stats=ConceptStats.of(P, names)
        if isinstance(P, torch.Tensor)
        else ConceptStats(names, *column_stats(P)),
        maps={name: recording.maps[name] for name in config.layers if name in recording.maps},
    )
