"""``discover demo``: the whole method on built-in data, offline, in a few minutes on a CPU.

:func:`run_demo` trains a small CVN and its non-competitive twin (same architecture,
``U = 1``), evaluates both, dissects every LWTA layer of the CVN and the same layers of the
twin, dissects the final layer with the class names as concepts and scores those
descriptions against the class names (method.md §9), explains a few held-out images and
writes an HTML report. Everything lands in ``OUT``::

    OUT/demo.json            the DemoConfig and the figures of the summary
    OUT/cvn/, OUT/dense/     training runs (config.json, weights, log.jsonl, eval-*.json)
    OUT/*/dissection/        the LWTA layers (the twin: the same layers), data-set concepts
    OUT/*/dissection-final/  the classifier, concepts = the class names, and its
                             description_scores.json/.csv (the final-layer protocol)
    OUT/explanations.json    the explained images (Explanation.to_dict())
    OUT/report/index.html    the report
    OUT/cache/               recorded activations and concept matrices (reruns reuse them)

A rerun with the same settings reuses finished training runs (and resumes interrupted
ones), so nothing already computed is lost.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from discover._utils import Registry, dataclass_from_dict, require_int
from discover.errors import InputError

__all__ = [
    "DemoConfig",
    "DemoResult",
    "DemoData",
    "DEMO_DATA",
    "convergence_notes",
    "register_demo_data",
    "run_demo",
]


@dataclass
class DemoConfig:
    """Every setting of a demo run; saved as ``OUT/demo.json``.

    Use :meth:`preset` for the tested sizes (``fast=True`` is the CI size).

    Example:
        >>> config = DemoConfig.preset("shapes", fast=True, out="runs/demo-fast")
        >>> config.U, config.embedder
        (4, 'annotations')
    """

    out: str = "runs/demo"
    data: str = "shapes"
    embedder: str = "annotations"
    fast: bool = False
    model: str = "small_resnet"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"widths": [16, 32, 64], "depths": [1, 1, 1]}
    )
    U: int = 4
    recipe: str = "cvn_small"  # anneals the competition: --policy argmax loses nothing
    epochs: int = 4
    lr: float = 1.5e-3
    batch_size: int = 64
    warmup_epochs: int = 0
    image_size: int = 32  # generated data sets only
    train_images: int = 16_000
    probe_images: int = 2_000
    test_images: int = 1_000
    explain_images: int = 6
    policy: str = "sample"  # LWTA eval policy for evaluation, dissection and explanations
    eval_samples: int = 6  # stochastic passes averaged in the evaluation (policy "sample")
    similarity: str | None = None  # None: the embedder kind's default (LABEL_DEFAULTS)
    top: int = 8  # winners listed per layer in the explanations
    precision_images: int = 200  # held-out images whose explanations are checked (Shapes)
    seed: int = 0
    threads: int = 2

    @classmethod
    def preset(cls, data: str = "shapes", *, fast: bool = False, **overrides: Any) -> DemoConfig:
        """The demo's settings for ``data`` (and the CI size with ``fast``); ``None``
        overrides are ignored."""
        spec = get_demo_data(data)
        values: dict[str, Any] = {"data": data, "fast": fast, **spec.defaults}
        if fast:
            values.update(spec.fast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(copy.deepcopy(values))  # presets are shared class data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """From :meth:`to_dict`'s keys; unknown keys raise, naming the closest options."""
        return dataclass_from_dict(cls, data, "demo option")


# -- data sets --------------------------------------------------------------------------------
# ``--fast``: the CI size, the same for every built-in data set (about a minute, rough labels).
_FAST: dict[str, Any] = {
    "model_kwargs": {"widths": [8, 16, 32], "depths": [1, 1, 1]},
    "epochs": 1,
    "train_images": 1_500,
    "probe_images": 300,
    "test_images": 200,
    "explain_images": 3,
    "eval_samples": 2,
    "precision_images": 40,
}


class DemoData(ABC):
    """How the demo uses one data set: training data, probe set, held-out images, concepts."""

    name: str
    dataset: str  # name in discover.data.datasets's registry
    embedders: tuple[str, ...]  # embedders that work on it (the first is the default)
    concepts: str  # concept set for the hidden layers
    defaults: dict[str, Any] = {}
    fast: dict[str, Any] = _FAST  # the --fast overrides

    def check(self, config: DemoConfig) -> None:
        """Raise a clear error when the data (or the embedder) cannot be used."""
        if config.embedder not in self.embedders:
            raise InputError(
                f"embedder: {config.embedder!r} does not work with the {self.name} demo data; "
                f"choose one of {', '.join(self.embedders)}"
            )

    @abstractmethod
    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        """``TrainConfig`` fields for this data set (``dataset_kwargs``, ...)."""

    @abstractmethod
    def probe(self, config: DemoConfig) -> Dataset:
        """Raw probe images (``uint8`` tensors) with labels, never seen in training."""

    @abstractmethod
    def held_out(self, config: DemoConfig) -> Dataset:
        """Raw held-out images (``uint8`` tensors) to explain, never seen in training."""

    def truth(self, held_out: Dataset, indices: list[int]) -> tuple[torch.Tensor, list[str]] | None:
        """The concepts of held-out images ``(len(indices), C)`` and their names, where the
        data set knows them (``None``: it does not, so explanations cannot be checked)."""
        return None


DEMO_DATA: Registry[DemoData] = Registry("demo data")


def register_demo_data(spec: DemoData) -> DemoData:
    """Make ``discover demo --data NAME`` available (``spec.name``)."""
    return DEMO_DATA.register(spec.name, spec)


def get_demo_data(name: str) -> DemoData:
    """The registered demo data ``name`` (unknown names list the closest ones)."""
    return DEMO_DATA.get(name)


class _Shapes(DemoData):
    name = dataset = "shapes"
    embedders = ("annotations", "shapes-clip", "conse")
    concepts = "shapes"

    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        return {
            "dataset_kwargs": {"n": config.train_images, "image_size": config.image_size},
            "model_kwargs": {**config.model_kwargs, "img_size": config.image_size},
        }

    def probe(self, config: DemoConfig) -> Dataset:
        from discover.data.shapes import ShapesWorld

        return ShapesWorld(n=config.probe_images, image_size=config.image_size, split="val")

    def held_out(self, config: DemoConfig) -> Dataset:
        from discover.data.shapes import ShapesWorld

        n = max(200, config.explain_images, config.precision_images)
        return ShapesWorld(n=n, image_size=config.image_size, split="test")

    def truth(self, held_out: Dataset, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        return held_out.concepts_table(indices), list(held_out.concept_names)


class _FashionMNIST(DemoData):
    name = dataset = "fashion-mnist"
    embedders = ("conse",)
    concepts = "broden"
    defaults = {"embedder": "conse", "train_images": 12_000}

    def check(self, config: DemoConfig) -> None:
        if config.embedder == "annotations":
            raise InputError(
                "embedder: Fashion-MNIST has no ground-truth concept annotations; "
                "use embedder='conse'"
            )
        super().check(config)
        from discover.data.fashion_mnist import FashionMNIST

        FashionMNIST(split="test", download=False)  # a clear FileNotFoundError when missing

    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        return {
            "dataset_kwargs": {"download": False},
            "train_subset": config.train_images,
            "model_kwargs": {**config.model_kwargs, "img_size": 28, "in_chans": 1},
        }

    @functools.lru_cache(maxsize=1)  # noqa: B019 (one registered instance; read the files once)
    def _test(self) -> Dataset:
        from discover.data.fashion_mnist import FashionMNIST

        return FashionMNIST(split="test", download=False)

    def probe(self, config: DemoConfig) -> Dataset:
        return Subset(self._test(), range(config.probe_images))  # fingerprinted

    def held_out(self, config: DemoConfig) -> Dataset:
        test = self._test()
        start = max(config.probe_images, len(test) - 500)  # disjoint from the probe images
        return Subset(test, range(start, len(test)))


register_demo_data(_Shapes())
register_demo_data(_FashionMNIST())


# -- result -----------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """The figures of a demo run (also in ``OUT/demo.json``)."""

    out: Path
    report: Path
    accuracy: dict[str, dict[str, float]]  # model -> {"top1", "top5"}
    sparsity: dict[str, float]  # model -> mean active fraction over the explained layers
    description_scores: dict[str, dict[str, Any]]  # model -> final-layer protocol figures
    final_labels: dict[str, list[str]]  # model -> classifier unit labels (class-name concepts)
    # model -> ExplanationScores.to_dict() on held-out images whose concepts are known
    explanation_precision: dict[str, dict[str, Any]]
    class_names: list[str]
    policy: str
    test_images: int
    seconds: dict[str, float] = field(default_factory=dict)
    # model -> the plateau rule on its validation curve (discover.training.plateau)
    convergence: dict[str, dict[str, Any]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """What the figures do not say: a warning when a model was still learning."""
        return convergence_notes(self.convergence)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"], data["report"] = str(self.out), str(self.report)
        return data

    def summary(self) -> str:
        """The short summary ``discover demo`` prints.

        Accuracy on the held-out test images; the active fraction of the LWTA layers (the
        twin: units with ``|a| > 1e-6`` at the same places), measured on the same images; the
        final-layer protocol's description accuracy (unit ``k`` labelled as class ``k``).
        """
        width = max(len(name) for name in self.accuracy) + 2
        lines = [
            f"{'':<{width}}{'top-1':>8}{'top-5':>9}{'active':>9}   final-layer descriptions",
        ]
        for model, acc in self.accuracy.items():
            scores = self.description_scores.get(model) or {}
            lines.append(
                f"{model:<{width}}{_percent(acc['top1']):>8}{_percent(acc['top5']):>9}"
                f"{_percent(self.sparsity.get(model)):>9}   top-1 "
                f"{_percent(scores.get('top1'))}, top-5 {_percent(scores.get('top5'))}"
            )
        for model, figures in self.explanation_precision.items():
            table = figures.get("contributions") or {}
            if table.get("precision") is not None:
                lines.append(
                    f"{model} explanations: {_percent(table['precision'])} of the labels in the "
                    f"contribution tables are true of the held-out image (shuffled labels "
                    f"{_percent(table.get('shuffled'))}, chance {_percent(figures['chance'])}, "
                    f"{_percent(table.get('abstained'))} of the rows unlabelled; "
                    f"{figures['images']} images)"
                )
        for model, labels in self.final_labels.items():
            matched = sum(a == b for a, b in zip(labels, self.class_names, strict=False))
            lines.append(
                f"{model} final-layer labels ({matched} of {len(self.class_names)} = the class "
                f"name): {', '.join(labels)}"
            )
        lines += [f"NOTE: {note}" for note in self.notes()]
        total = sum(self.seconds.values())
        lines.append(
            f"(LWTA policy {self.policy}; {self.test_images} held-out test images; "
            f"{total / 60:.1f} min)"
        )
        lines.append(f"explained images: {self.out / 'explanations.json'}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def convergence_notes(convergence: dict[str, dict[str, Any]]) -> list[str]:
    """A warning for models that had not plateaued (``{model: Plateau.to_dict()}``); ``[]``
    when every model had.

    Example:
        >>> convergence_notes({"dense twin": {"plateaued": True, "reason": ""}})
        []
    """
    learning = {
        model: check.get("reason") or "not plateaued"
        for model, check in convergence.items()
        if not check.get("plateaued", True)
    }
    if not learning:
        return []
    which = "; ".join(f"{model}: {reason}" for model, reason in learning.items())
    return [
        "Not a verdict on competition: these models had not converged (the plateau rule on "
        f"their validation top-1; {which}), so their accuracy gap says little about what "
        "competition costs. For CVNs against dense twins trained until they plateau, over "
        "several seeds, see the project's evidence page (benchmarks/results/evidence.md)."
    ]


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


# -- steps ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Hide (or keep) the weight-loading bars of transformers (the sentence model)."""
    try:
        from transformers.utils import logging
    except ImportError:  # pragma: no cover - a dependency
        yield
        return
    previous = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if previous else logging.disable_progress_bar)()


def _train(options: dict[str, Any], progress: bool, log: Callable[[str], None]) -> Path:
    """Train (or reuse/resume an identical run in ``options['out']``)."""
    from discover.training.trainer import TrainConfig, train

    out = Path(options["out"])
    if (out / "state" / "trainer.pt").is_file():
        try:
            result = train(TrainConfig(**options, resume=True), progress=progress)
            log(f"  reused the run in {out} ({result.epochs_run} epoch(s))")
            return out
        except ValueError as exc:  # different settings: start over
            log(f"  {out} holds a run with other settings; training anew ({exc})")
    train(TrainConfig(**options, overwrite=True), progress=progress)  # the demo owns `out`
    return out


def _pick_images(dataset: Dataset, count: int) -> list[int]:
    """Indices of ``count`` images, one class after the other (first image of each class)."""
    if count <= 0:
        return []
    chosen, seen = [], set()
    for index in range(len(dataset)):
        label = int(dataset[index][1])
        if label not in seen:
            seen.add(label)
            chosen.append(index)
        if len(chosen) == count:
            return chosen
    rest = [i for i in range(len(dataset)) if i not in chosen]
    return chosen + rest[: count - len(chosen)]


def run_demo(
    config: DemoConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> DemoResult:
    """Train, evaluate, dissect and explain a CVN and its dense twin; write the report.

    Example:
        >>> result = run_demo(DemoConfig.preset("shapes", fast=True, out="runs/demo-fast"))  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    from discover.dissection.concepts import concept_set_from_lines
    from discover.dissection.core import Dissection, dissect
    from discover.dissection.embedders import build_embedder
    from discover.evaluation.classification import evaluate_run
    from discover.evaluation.explanations import score_explanations
    from discover.explanation import explain, explanations_to_json, find_classifier
    from discover.nn.lwta import lwta_layers
    from discover.training.convergence import plateau
    from discover.training.runs import load_run

    spec = get_demo_data(config.data)
    spec.check(config)
    if config.U < 2:
        raise InputError(f"discover demo: U must be >= 2 for the CVN, got {config.U}")
    counts = ("threads", "epochs", "batch_size", "train_images", "probe_images", "test_images")
    lows = [("eval_samples", 1), ("explain_images", 0), ("precision_images", 0)]
    for name, least in [*((n, 1) for n in counts), *lows]:
        require_int(getattr(config, name), f"discover demo: {name}", least)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(out / "demo.json", {"config": config.to_dict()})
    cache = out / "cache"
    seconds: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        t0 = time.time()
        return lambda: seconds.__setitem__(name, seconds.get(name, 0.0) + time.time() - t0)

    with _threads(config.threads), _transformers_progress(progress):
        # 1. train the CVN and its dense twin with the same recipe, data and seed
        base = {
            "model": config.model,
            "dataset": spec.dataset,
            "recipe": config.recipe,
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "warmup_epochs": config.warmup_epochs,
            "eval_policy": config.policy,
            "eval_samples": 1,
            "seed": config.seed,
            **spec.train_options(config),
        }
        runs = {"cvn": out / "cvn", "dense": out / "dense"}
        names = {"cvn": f"CVN (U={config.U})", "dense": "dense twin (U=1)"}
        for key, U in (("cvn", config.U), ("dense", 1)):
            done = step(f"train {key}")
            log(f"training the {names[key]} ...")
            _train({**base, "U": U, "out": str(runs[key])}, progress, log)
            done()

        models: dict[str, nn.Module] = {}
        loaded: dict[str, Any] = {}
        evaluations: dict[str, Any] = {}
        convergence: dict[str, dict[str, Any]] = {}
        for key, run in runs.items():
            done = step("evaluate")
            loaded[key] = load_run(run)
            models[key] = loaded[key].model
            curve = [h["val_top1"] for h in loaded[key].history if h.get("val_top1") is not None]
            convergence[names[key]] = plateau(curve).to_dict()
            evaluations[key] = evaluate_run(
                run,
                split="test",
                policy=config.policy,
                samples=config.eval_samples,
                seed=config.seed,
                limit=config.test_images,
                progress=progress,
            )
            _atomic_json(run / "eval-demo.json", evaluations[key].to_dict())
            done()
        class_names = loaded["cvn"].class_names

        # 2. dissect: hidden layers with the data set's concepts, the classifier with the
        #    class names (method.md §9)
        classifier = find_classifier(models["cvn"])
        if classifier is None:
            raise InputError(f"discover demo: {config.model} has no final nn.Linear to dissect")
        hidden = list(lwta_layers(models["cvn"]))
        probe = spec.probe(config)
        final_concepts = concept_set_from_lines(
            class_names,
            name=f"{spec.name} class names",
            source="the run's class_names",
            keep_duplicates=True,
        )
        dissections: dict[str, Any] = {}
        final_scores: dict[str, dict[str, Any]] = {}
        final_labels: dict[str, list[str]] = {}
        emb = build_embedder(_embedder_spec(config, progress, log))
        for key, model in models.items():
            log(f"dissecting the {names[key]} ...")
            done = step("dissect")
            common = dict(
                similarity=config.similarity,  # None: the embedder kind's default
                policy=config.policy,
                seed=config.seed,
                cache_dir=cache,
                progress=progress,
            )
            hidden_dissection = dissect(model, hidden, probe, spec.concepts, emb, **common)
            hidden_dissection.save(runs[key] / "dissection")
            final = dissect(
                model,
                [classifier[0]],
                probe,
                final_concepts,
                emb,
                keep_scores=True,  # exact ranks for the final-layer protocol
                **common,
            )
            final.save(runs[key] / "dissection-final")
            # one dissection for the report and the explanations: the hidden layers labelled
            # with the data set's concepts, the classifier with the class names (method.md §9)
            dissections[key] = Dissection.merge(hidden_dissection, final)
            final_labels[key] = final.labels(classifier[0])
            from discover.evaluation.descriptions import evaluate_descriptions

            scores = evaluate_descriptions(
                final,
                class_names,
                layer=classifier[0],
                embedder=None if config.embedder == "annotations" else emb,
                seed=config.seed,
            )
            scores.save(runs[key] / "dissection-final")
            final_scores[key] = _compact_scores(scores, final_labels[key])
            done()

        # 3. explain held-out images with both models
        done = step("explain")
        held_out = spec.held_out(config)
        picked = _pick_images(held_out, config.explain_images)
        raw = [held_out[i] for i in picked]
        images = [item[0] for item in raw]
        targets = [int(item[1]) for item in raw]
        image_names = [f"{spec.name}-held-out[{i}]" for i in picked]
        looker = emb if emb.kind == "vlm" else None  # ground truth would be an oracle
        explanations = []
        for key, model in models.items():
            explanations += explain(
                model,
                images,
                dissections[key],
                policy=config.policy,
                top=config.top,
                class_names=class_names,
                names=image_names,
                targets=targets,
                seed=config.seed,
                embedder=looker,
            )
        explanations_to_json(explanations, out / "explanations.json")
        done()

        # 4. how often the explanations' labels are true of held-out images (where known)
        precision: dict[str, Any] = {}
        checked = list(range(min(config.precision_images, len(held_out))))
        truth = spec.truth(held_out, checked) if checked else None
        if truth is not None:
            done = step("explanation precision")
            log(
                f"checking explanations of {len(checked)} held-out images against their concepts ..."
            )
            table, concept_names = truth
            pictures_checked = [held_out[i][0] for i in checked]
            scores = None
            if looker is not None:
                scores = looker.concept_matrix(pictures_checked, concept_names, progress=False)
            for key, model in models.items():
                checked_explanations = explain(
                    model,
                    pictures_checked,
                    dissections[key],
                    policy=config.policy,
                    top=config.top,
                    class_names=class_names,
                    seed=config.seed,
                    embedder=looker,
                )
                stats = dissections[key].concept_stats
                precision[key] = score_explanations(
                    checked_explanations,
                    dissections[key],
                    table,
                    concept_names,
                    image_scores=None
                    if scores is None
                    else stats.standardise(concept_names, scores),
                    seed=config.seed,
                )
            done()

        # 5. the report
        done = step("report")
        log("writing the report ...")
        from torchvision.transforms.functional import to_pil_image

        from discover.report.writer import ReportConfig, ReportSection, write_report

        pictures = [to_pil_image(image) for image in images] * len(models)
        sections = [
            ReportSection(
                name=names[key],
                model=model,
                dissection=dissections[key],
                probe=probe,
                accuracy={"top1": evaluations[key].top1, "top5": evaluations[key].top5},
                sparsity={row.layer: row.fraction for row in evaluations[key].sparsity},
                settings=_settings(config, loaded[key], evaluations[key], dissections[key]),
                description_scores=final_scores[key],
                explanation_scores=precision.get(key),
            )
            for key, model in models.items()
        ]
        report = write_report(
            out / "report",
            sections,
            explanations=[(e.to_dict(), p) for e, p in zip(explanations, pictures, strict=True)],
            meta={"demo": config.to_dict(), "seconds": dict(seconds)},
            config=ReportConfig(title=f"discover demo: {spec.name}"),
            progress=progress,
            notes=convergence_notes(convergence),
        )
        done()

    result = DemoResult(
        out=out,
        report=Path(report),
        accuracy={names[k]: {"top1": e.top1, "top5": e.top5} for k, e in evaluations.items()},
        sparsity={
            names[k]: sum(r.fraction for r in e.sparsity) / max(1, len(e.sparsity))
            for k, e in evaluations.items()
        },
        description_scores={names[k]: v for k, v in final_scores.items()},
        final_labels={names[k]: v for k, v in final_labels.items()},
        explanation_precision={names[k]: v.to_dict() for k, v in precision.items()},
        class_names=class_names,
        policy=config.policy,
        test_images=evaluations["cvn"].images,
        seconds=seconds,
        convergence=convergence,
    )
    _atomic_json(out / "demo.json", {"config": config.to_dict(), "result": result.to_dict()})
    return result


def _compact_scores(scores: Any, labels: list[str]) -> dict[str, Any]:
    """The final-layer figures for the overview and the summary (all of them are saved in
    ``dissection-final/description_scores.json``)."""
    compact: dict[str, Any] = {}
    for name, metric in scores.metrics.items():
        if metric.value is None:
            continue
        compact[name] = metric.value
        null = metric.shuffled_neurons
        if null is not None and null.mean is not None:
            compact[f"{name} (shuffled-neurons baseline)"] = null.mean
    compact["concepts"] = f"the {scores.units} class names"
    compact["labels"] = ", ".join(labels)
    return compact


def _embedder_spec(config: DemoConfig, progress: bool, log: Callable[[str], None]) -> str:
    """The embedder spec of ``config``: ``shapes-clip`` is the Shapes world's small CLIP,
    trained on first use (about 20 minutes on 2 cores) and then read from the cache."""
    if config.embedder != "shapes-clip":
        return config.embedder
    from discover.training.clip import train_shapes_clip

    log("the Shapes CLIP (trained once, then cached) ...")
    return train_shapes_clip(progress=progress).spec


def _settings(config: DemoConfig, run: Any, evaluation: Any, dissection: Any) -> dict[str, Any]:
    recipe = run.recipe
    return {
        "model": run.train.model,
        "U": run.train.U,
        "model_kwargs": run.train.model_kwargs,
        "data set": run.dataset,
        "training images": config.train_images,
        "recipe": f"{recipe.name} (lr {recipe.lr}, {recipe.epochs} epochs)",
        "evaluation": f"policy {evaluation.policy}, {evaluation.samples} pass(es), "
        f"{evaluation.images} held-out images",
        "dissection": f"{dissection.config.similarity}, embedder {config.embedder}, "
        f"{config.probe_images} probe images, LWTA policy {config.policy}, seed {config.seed}, "
        f"units unlabelled when p_null > {dissection.config.abstain_p}",
    }


def _atomic_json(path: Path, data: Any) -> None:
    from discover._utils import write_atomic

    write_atomic(path, json.dumps(data, indent=2, default=str))
