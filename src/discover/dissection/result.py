"""A dissection's result: :class:`Dissection`, one row per unit with the settings, the
metadata and the data it was computed from, saved to and loaded from a folder."""

from __future__ import annotations

import csv
import io
import json
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from discover._utils import require_file, spreadsheet_safe, staged_dir, write_files
from discover.dissection.recording import dataset_fingerprint, model_fingerprint
from discover.dissection.records import (
    ConceptStats,
    DissectConfig,
    DissectedLayer,
    DissectedModel,
    UnitDescription,
)
from discover.dissection.rows import FileRows
from discover.dissection.spatial import LayerMaps
from discover.dissection.storage import (
    ACTIVATIONS_FILE,
    CSV_COLUMNS,
    MAPS_FILE,
    OLD_SCORES_FILE,
    ROWS_DIR,
    SCORES_FILE,
    copy_rows,
    read_concept_stats,
    read_old_scores,
    read_tensors,
    replaceable,
    save_tensors,
)
from discover.dissection.streaming import BLOCK_ROWS
from discover.errors import InputError
from discover.nn.lwta import LWTA

__all__ = ["StaleDissectionError", "Dissection"]


class StaleDissectionError(InputError):
    """A dissection is used with a model it does not describe (other weights, layers or U)."""


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
        streamed = {k: v for k, v in self.activations.items() if not isinstance(v, torch.Tensor)}
        payload = {
            "id": stamp,
            "config": asdict(self.config),
            "meta": self.meta,
            "units": [asdict(u) for u in self.units],
            "rows": {k: f"{ROWS_DIR}/layer-{i}" for i, k in enumerate(streamed)},
        }
        files = self._tensor_files(stamp)
        files["descriptions.csv"] = self.to_csv()
        files["dissection.json"] = json.dumps(payload, indent=2, default=str)  # last: the index
        _write(out, files, streamed, payload["rows"])
        self.folder = out
        return out

    def _tensor_files(self, stamp: str) -> dict[str, Any]:
        """The safetensors files to save (writers of a path), each stamped with ``stamp``:
        the scores if kept, ``Q`` with the winner fractions and concept statistics, the maps."""
        files: dict[str, Any] = {}
        if self.scores:
            scores = {name: S.detach().float().contiguous() for name, S in self.scores.items()}
            head = {"id": stamp, "concepts": json.dumps(self.concepts)}
            files[SCORES_FILE] = partial(save_tensors, scores, head=head)
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
            files[ACTIVATIONS_FILE] = partial(save_tensors, tensors, head=head)
        if self.maps:
            tensors_maps: dict[str, torch.Tensor] = {}
            for name, layer_maps in self.maps.items():
                tensors_maps.update(layer_maps.to_tensors(name))
            tensors_maps = {k: v.detach().contiguous() for k, v in tensors_maps.items()}
            head = {"id": stamp, "notes": json.dumps({n: m.note for n, m in self.maps.items()})}
            files[MAPS_FILE] = partial(save_tensors, tensors_maps, head=head)
        return files

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
        activations = read_tensors(out / ACTIVATIONS_FILE, stamp, "probe activations")
        if activations is not None:
            tensors, head = activations
            result.activations.update({k[2:]: v for k, v in tensors.items() if k.startswith("Q/")})
            result.winner_fractions = {
                k[5:]: v for k, v in tensors.items() if k.startswith("wins/")
            }
            result.concept_stats = read_concept_stats(tensors, head)
        maps = read_tensors(out / MAPS_FILE, stamp, "spatial maps")
        if maps is not None:
            tensors, head = maps
            notes = json.loads(head.get("notes") or "{}")
            result.maps = {
                name: LayerMaps.from_tensors(tensors, name, notes.get(name, ""))
                for name in notes
                if f"{name}.indices" in tensors and f"{name}.maps" in tensors
            }
        scores = read_tensors(out / SCORES_FILE, stamp, "score matrices")
        if scores is not None:
            result.scores, head = scores
            result.concepts = json.loads(head["concepts"])
        elif (out / OLD_SCORES_FILE).is_file():
            result.scores, result.concepts = read_old_scores(out / OLD_SCORES_FILE, stamp)
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


def _write(
    out: Path, files: dict[str, Any], streamed: dict[str, Any], rows: dict[str, str]
) -> None:
    """Write a dissection's ``files`` and the row files of its ``streamed`` layers into
    ``out``: a folder of nothing but an earlier dissection is replaced whole, another one
    file by file (removing the tensor files of an earlier dissection that this one has not)."""
    try:
        if replaceable(out):
            with staged_dir(out) as staging:
                write_files(staging, files)
                copy_rows(streamed, rows, staging)
        else:
            write_files(out, files)
            copy_rows(streamed, rows, out)
            for name in (SCORES_FILE, ACTIVATIONS_FILE, MAPS_FILE, OLD_SCORES_FILE):
                if name not in files:  # never leave another dissection's data beside ours
                    (out / name).unlink(missing_ok=True)
    except OSError as error:
        raise OSError(
            error.errno,
            f"could not write the dissection to {out} ({error.strerror or error}); "
            "the previous result there is unchanged",
        ) from error
