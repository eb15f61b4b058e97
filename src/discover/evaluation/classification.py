"""Classification evaluation: top-1/top-5 under an explicit LWTA policy, plus sparsity.

:func:`evaluate` measures a model on a data loader; :func:`evaluate_run` does it for a
training run directory (weights, data and preprocessing from the run's ``config.json``).
The active fraction of every LWTA layer comes from its winner masks over the whole
evaluation set; a dense model is measured at its activation sites as the fraction of units
with ``|a| > 1e-6``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from discover._utils import require_int, resolve_device, write_atomic
from discover.errors import InputError, NonFiniteError
from discover.evaluation.sparsity import LayerSparsity, SparsityMeter, format_sparsity
from discover.nn.lwta import EVAL_POLICIES, average_logits, eval_policy, lwta_layers

__all__ = ["EVAL_FILE", "EvalResult", "evaluate", "evaluate_run"]

EVAL_FILE = "eval-{split}-{weights}-{policy}.json"
"""Where :meth:`EvalResult.save` writes the result of :func:`evaluate_run` in its run folder."""


@dataclass
class EvalResult:
    """Accuracy and sparsity of one evaluation, with the settings that produced it."""

    top1: float
    top5: float
    loss: float
    images: int
    policy: str
    samples: int
    seed: int
    sparsity: list[LayerSparsity] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sparsity"] = [row.to_dict() for row in self.sparsity]
        return data

    def save(self, path: str | Path | None = None) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path.

        By default, a result of :func:`evaluate_run` goes into its run folder as
        ``eval-SPLIT-WEIGHTS-POLICY.json`` (:data:`EVAL_FILE`), so evaluations with other
        settings do not overwrite each other.

        Example:
            >>> evaluate_run("runs/shapes-u4", policy="sample").save()  # doctest: +SKIP
            PosixPath('runs/shapes-u4/eval-test-best-sample.json')
        """
        import json

        if path is None:
            if "run" not in self.meta:
                raise InputError("path: only a result of evaluate_run has a default file")
            name = EVAL_FILE.format(
                split=self.meta["split"], weights=self.meta["weights"], policy=self.policy
            )
            path = Path(self.meta["run"]) / name
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path

    def summary(self) -> str:
        """A readable table: accuracy first, then per-layer sparsity."""
        policy = (
            self.policy
            if self.policy == "argmax"
            else f"sample, logits averaged over {self.samples} passes"
        )
        lines = [
            f"images: {self.images}   eval policy: {policy}   seed: {self.seed}",
            f"top-1: {100 * self.top1:.2f} %   top-5: {100 * self.top5:.2f} %   loss: {self.loss:.4f}",
        ]
        if self.sparsity:
            lines += ["", format_sparsity(self.sparsity)]
        return "\n".join(lines)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    policy: str = "argmax",
    samples: int = 6,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Top-1/top-5 accuracy, loss and per-layer sparsity of ``model`` on ``loader``.

    ``policy="sample"`` averages the logits of ``samples`` stochastic passes (the reference
    evaluation used 6); ``"argmax"`` is deterministic. Sparsity is measured on the first
    pass of every batch. The model is put in eval mode and its policies are restored after.

    Example:
        >>> result = evaluate(model, loader, policy="sample", samples=6)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    if policy not in EVAL_POLICIES:
        raise InputError(
            f"unknown eval policy {policy!r}; expected one of {', '.join(EVAL_POLICIES)}"
        )
    require_int(samples, "evaluate: samples")
    device = resolve_device(device)
    model = model.to(device).eval()
    torch.manual_seed(seed)
    correct1 = correct5 = count = 0
    loss_sum = 0.0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", leave=False, dynamic_ncols=True)
    with eval_policy(model, policy), SparsityMeter(model) as meter:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            if samples > 1 and policy == "sample" and lwta_layers(model):
                with meter.paused():
                    rest = average_logits(model, images, samples=samples - 1)
                logits = (logits + (samples - 1) * rest) / samples
            broken = (~torch.isfinite(logits)).any(dim=1)
            if broken.any():
                raise NonFiniteError(
                    f"evaluate: the model's outputs are NaN or infinite for "
                    f"{int(broken.sum())} image(s) of the batch starting at image {count}: its "
                    "numbers are broken (check its weights and inputs), so no accuracy or "
                    "loss would mean anything"
                )
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(dim=1).sum().item()
            count += labels.numel()
    if count == 0:
        raise InputError("evaluate: the data loader yielded no images")
    return EvalResult(
        top1=correct1 / count,
        top5=correct5 / count,
        loss=loss_sum / count,
        images=count,
        policy=policy,
        samples=samples if policy == "sample" else 1,
        seed=seed,
        sparsity=meter.results(),
    )


def evaluate_run(
    run: str | Path,
    split: str = "test",
    weights: str = "best",
    policy: str = "argmax",
    samples: int = 6,
    seed: int = 0,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "cpu",
    limit: int | None = None,
    progress: bool = False,
    data_root: str | Path | None = None,
) -> EvalResult:
    """Evaluate a training run directory on one split of its data set.

    ``weights`` is ``"best"`` (selected on the held-out part of the training split) or
    ``"last"``. The run's own data configuration gives the evaluation transform.
    ``data_root`` is where the data set's files are (default: where the run was trained
    from, as its ``config.json`` says; data sets that are generated or installed need none).

    Example:
        >>> print(evaluate_run("runs/shapes-u4", policy="sample", samples=6).summary())  # doctest: +SKIP
    """
    from discover.data.registry import build_dataset
    from discover.data.transforms import build_transforms
    from discover.training.runs import load_run

    require_int(batch_size, "evaluate_run: batch_size")
    loaded = load_run(run, weights)
    model = loaded.model
    dataset = build_dataset(
        loaded.train.dataset,
        split,
        root=loaded.train.data_root if data_root is None else data_root,
        transform=build_transforms(loaded.data, train=False),
        **loaded.train.dataset_kwargs,
    )
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    result = evaluate(
        model, loader, policy=policy, samples=samples, seed=seed, device=device, progress=progress
    )
    result.meta = {
        "run": str(run),
        "split": split,
        "weights": weights,
        "model": loaded.info["model"],
        "dataset": loaded.dataset,
    }
    return result
