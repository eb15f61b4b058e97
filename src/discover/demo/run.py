"""The demo's steps: train both models, evaluate, dissect, explain, check, report."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from discover._utils import require_int, write_atomic
from discover.demo.config import DemoConfig, DemoData, get_demo_data
from discover.demo.result import DemoResult, convergence_notes
from discover.errors import InputError

__all__ = ["run_demo"]


def run_demo(
    config: DemoConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> DemoResult:
    """Train, evaluate, dissect and explain a CVN and its dense twin; write the report.

    Example:
        >>> result = run_demo(DemoConfig.preset("shapes", fast=True, out="runs/demo-fast"))  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    spec = _checked_data(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(out / "demo.json", {"config": config.to_dict()})
    demo = _Demo(config, spec, out, progress, log)
    twins = [
        _Twin("cvn", f"CVN (U={config.U})", config.U, out / "cvn"),
        _Twin("dense", "dense twin (U=1)", 1, out / "dense"),
    ]
    with _threads(config.threads), _transformers_progress(progress):
        _train_both(demo, twins)  # the same recipe, data and seed
        _evaluate_both(demo, twins)
        convergence = _convergence(twins)
        class_names = twins[0].run.class_names
        probe, embedder = _dissect_both(demo, twins, class_names)
        looker = embedder if embedder.kind == "vlm" else None  # ground truth would be an oracle
        held_out, images, explanations = _explain_both(demo, twins, class_names, looker)
        _check_explanations(demo, twins, class_names, held_out, looker)
        notes = convergence_notes(convergence)
        report = _write_report(demo, twins, probe, images, explanations, notes)
    return _finish(demo, twins, class_names, convergence, report)


@dataclass
class _Demo:
    """A demo run in progress: its settings, folder, output and the seconds of each step."""

    config: DemoConfig
    spec: DemoData
    out: Path
    progress: bool
    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the block's time to step ``name`` (when it finishes)."""
        t0 = time.time()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - t0


@dataclass
class _Twin:
    """One of the two compared models and what the demo learned about it."""

    key: str  # its folder in OUT
    name: str  # as shown in the summary and the report
    U: int
    folder: Path
    run: Any = None  # the training run read back (discover.training.Run)
    evaluation: Any = None
    dissection: Any = None  # hidden layers and classifier, merged
    final_scores: dict[str, Any] = field(default_factory=dict)
    final_labels: list[str] = field(default_factory=list)
    precision: Any = None  # ExplanationScores on held-out images, where their concepts are known

    @property
    def model(self) -> nn.Module:
        return self.run.model


def _checked_data(config: DemoConfig) -> DemoData:
    """The demo data of ``config``, with every setting checked before any work."""
    spec = get_demo_data(config.data)
    spec.check(config)
    if config.U < 2:
        raise InputError(f"discover demo: U must be >= 2 for the CVN, got {config.U}")
    counts = ("threads", "epochs", "batch_size", "train_images", "probe_images", "test_images")
    lows = [("eval_samples", 1), ("explain_images", 0), ("precision_images", 0)]
    for name, least in [*((n, 1) for n in counts), *lows]:
        require_int(getattr(config, name), f"discover demo: {name}", least)
    return spec


# -- 1. train and evaluate ----------------------------------------------------------------------
def _train_both(demo: _Demo, twins: list[_Twin]) -> None:
    """Train the CVN and its dense twin with the same recipe, data and seed."""
    config = demo.config
    base = {
        "model": config.model,
        "dataset": demo.spec.dataset,
        "recipe": config.recipe,
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "warmup_epochs": config.warmup_epochs,
        "eval_policy": config.policy,
        "eval_samples": 1,
        "seed": config.seed,
        **demo.spec.train_options(config),
    }
    for twin in twins:
        with demo.step(f"train {twin.key}"):
            demo.log(f"training the {twin.name} ...")
            _train({**base, "U": twin.U, "out": str(twin.folder)}, demo.progress, demo.log)


def _evaluate_both(demo: _Demo, twins: list[_Twin]) -> None:
    """Read both runs back and evaluate them on the held-out test images."""
    from discover.evaluation.classification import evaluate_run
    from discover.training.runs import load_run

    config = demo.config
    for twin in twins:
        with demo.step("evaluate"):
            twin.run = load_run(twin.folder)
            twin.evaluation = evaluate_run(
                twin.folder,
                split="test",
                policy=config.policy,
                samples=config.eval_samples,
                seed=config.seed,
                limit=config.test_images,
                progress=demo.progress,
            )
            _atomic_json(twin.folder / "eval-demo.json", twin.evaluation.to_dict())


def _convergence(twins: list[_Twin]) -> dict[str, dict[str, Any]]:
    """The plateau rule on each model's validation curve."""
    from discover.training.convergence import plateau

    curves = {
        twin.name: [h["val_top1"] for h in twin.run.history if h.get("val_top1") is not None]
        for twin in twins
    }
    return {name: plateau(curve).to_dict() for name, curve in curves.items()}


# -- 2. dissect ---------------------------------------------------------------------------------
def _dissect_both(demo: _Demo, twins: list[_Twin], class_names: list[str]) -> tuple[Dataset, Any]:
    """Dissect both models: the hidden layers with the data set's concepts, the classifier
    with the class names (docs/method.md §9); returns the probe set and the embedder."""
    from discover.dissection.concepts import concept_set_from_lines
    from discover.dissection.embedders import build_embedder
    from discover.explanation import find_classifier
    from discover.nn.lwta import lwta_layers

    config, spec = demo.config, demo.spec
    cvn = twins[0].model
    classifier = find_classifier(cvn)
    if classifier is None:
        raise InputError(f"discover demo: {config.model} has no final nn.Linear to dissect")
    hidden = list(lwta_layers(cvn))
    probe = spec.probe(config)
    final_concepts = concept_set_from_lines(
        class_names,
        name=f"{spec.name} class names",
        source="the run's class_names",
        keep_duplicates=True,
    )
    embedder = build_embedder(_embedder_spec(config, demo.progress, demo.log))
    for twin in twins:
        demo.log(f"dissecting the {twin.name} ...")
        with demo.step("dissect"):
            layers = (hidden, classifier[0])
            _dissect(demo, twin, layers, probe, final_concepts, embedder, class_names)
    return probe, embedder


def _dissect(
    demo: _Demo,
    twin: _Twin,
    layers: tuple[list[str], str],
    probe: Dataset,
    final_concepts: Any,
    embedder: Any,
    class_names: list[str],
) -> None:
    """Dissect one model's ``(hidden layers, classifier)`` and score the classifier's labels
    against the class names (the final-layer protocol)."""
    from discover.dissection.core import dissect
    from discover.dissection.result import Dissection
    from discover.evaluation.descriptions import evaluate_descriptions

    config = demo.config
    hidden, classifier = layers
    common = dict(
        similarity=config.similarity,  # None: the embedder kind's default
        policy=config.policy,
        seed=config.seed,
        cache_dir=demo.out / "cache",
        progress=demo.progress,
    )
    model = twin.model
    hidden_dissection = dissect(model, hidden, probe, demo.spec.concepts, embedder, **common)
    hidden_dissection.save(twin.folder / "dissection")
    final = dissect(
        model,
        [classifier],
        probe,
        final_concepts,
        embedder,
        keep_scores=True,  # exact ranks for the final-layer protocol
        **common,
    )
    final.save(twin.folder / "dissection-final")
    # one dissection for the report and the explanations: the hidden layers labelled
    # with the data set's concepts, the classifier with the class names (docs/method.md §9)
    twin.dissection = Dissection.merge(hidden_dissection, final)
    twin.final_labels = final.labels(classifier)
    scores = evaluate_descriptions(
        final,
        class_names,
        layer=classifier,
        embedder=None if config.embedder == "annotations" else embedder,
        seed=config.seed,
    )
    scores.save(twin.folder / "dissection-final")
    twin.final_scores = _compact_scores(scores, twin.final_labels)


# -- 3. explain ---------------------------------------------------------------------------------
def _explain_both(
    demo: _Demo, twins: list[_Twin], class_names: list[str], looker: Any
) -> tuple[Dataset, list[Any], list[Any]]:
    """Explain a few held-out images with both models (saved as ``explanations.json``);
    returns the held-out set, the explained images and the explanations."""
    from discover.explanation import explain, explanations_to_json

    config, spec = demo.config, demo.spec
    with demo.step("explain"):
        held_out = spec.held_out(config)
        picked = _pick_images(held_out, config.explain_images)
        raw = [held_out[i] for i in picked]
        images = [item[0] for item in raw]
        targets = [int(item[1]) for item in raw]
        image_names = [f"{spec.name}-held-out[{i}]" for i in picked]
        explanations = []
        for twin in twins:
            explanations += explain(
                twin.model,
                images,
                twin.dissection,
                policy=config.policy,
                top=config.top,
                class_names=class_names,
                names=image_names,
                targets=targets,
                seed=config.seed,
                embedder=looker,
            )
        explanations_to_json(explanations, demo.out / "explanations.json")
    return held_out, images, explanations


def _check_explanations(
    demo: _Demo, twins: list[_Twin], class_names: list[str], held_out: Dataset, looker: Any
) -> None:
    """How often the explanations' labels are true of held-out images (where the data set
    knows their concepts)."""
    from discover.evaluation.explanations import score_explanations
    from discover.explanation import explain

    config = demo.config
    checked = list(range(min(config.precision_images, len(held_out))))
    truth = demo.spec.truth(held_out, checked) if checked else None
    if truth is None:
        return
    with demo.step("explanation precision"):
        demo.log(
            f"checking explanations of {len(checked)} held-out images against their concepts ..."
        )
        table, concept_names = truth
        pictures = [held_out[i][0] for i in checked]
        scores = None
        if looker is not None:
            scores = looker.concept_matrix(pictures, concept_names, progress=False)
        for twin in twins:
            explanations = explain(
                twin.model,
                pictures,
                twin.dissection,
                policy=config.policy,
                top=config.top,
                class_names=class_names,
                seed=config.seed,
                embedder=looker,
            )
            stats = twin.dissection.concept_stats
            twin.precision = score_explanations(
                explanations,
                twin.dissection,
                table,
                concept_names,
                image_scores=None if scores is None else stats.standardise(concept_names, scores),
                seed=config.seed,
            )


# -- 4. report and summary ----------------------------------------------------------------------
def _write_report(
    demo: _Demo,
    twins: list[_Twin],
    probe: Dataset,
    images: list[Any],
    explanations: list[Any],
    notes: list[str],
) -> Path:
    """The HTML report of both models and the explained images, ``notes`` on top."""
    from torchvision.transforms.functional import to_pil_image

    from discover.report.inputs import ReportConfig, ReportSection
    from discover.report.writer import write_report

    config = demo.config
    with demo.step("report"):
        demo.log("writing the report ...")
        pictures = [to_pil_image(image) for image in images] * len(twins)
        sections = [
            ReportSection(
                name=twin.name,
                model=twin.model,
                dissection=twin.dissection,
                probe=probe,
                accuracy={"top1": twin.evaluation.top1, "top5": twin.evaluation.top5},
                sparsity={row.layer: row.fraction for row in twin.evaluation.sparsity},
                settings=_settings(config, twin.run, twin.evaluation, twin.dissection),
                description_scores=twin.final_scores,
                explanation_scores=twin.precision,
            )
            for twin in twins
        ]
        report = write_report(
            demo.out / "report",
            sections,
            explanations=[(e.to_dict(), p) for e, p in zip(explanations, pictures, strict=True)],
            meta={"demo": config.to_dict(), "seconds": dict(demo.seconds)},
            config=ReportConfig(title=f"discover demo: {demo.spec.name}"),
            progress=demo.progress,
            notes=notes,
        )
    return Path(report)


def _finish(
    demo: _Demo,
    twins: list[_Twin],
    class_names: list[str],
    convergence: dict[str, dict[str, Any]],
    report: Path,
) -> DemoResult:
    """The demo's figures, also saved in ``demo.json``."""
    config = demo.config
    result = DemoResult(
        out=demo.out,
        report=report,
        accuracy={t.name: {"top1": t.evaluation.top1, "top5": t.evaluation.top5} for t in twins},
        sparsity={
            t.name: sum(r.fraction for r in t.evaluation.sparsity)
            / max(1, len(t.evaluation.sparsity))
            for t in twins
        },
        description_scores={t.name: t.final_scores for t in twins},
        final_labels={t.name: t.final_labels for t in twins},
        explanation_precision={
            t.name: t.precision.to_dict() for t in twins if t.precision is not None
        },
        class_names=class_names,
        policy=config.policy,
        test_images=twins[0].evaluation.images,
        seconds=demo.seconds,
        convergence=convergence,
    )
    _atomic_json(demo.out / "demo.json", {"config": config.to_dict(), "result": result.to_dict()})
    return result


# -- helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads."""
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
    from discover.training.config import TrainConfig
    from discover.training.trainer import train

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
    """The settings the report shows for one of the models."""
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
    write_atomic(path, json.dumps(data, indent=2, default=str))
