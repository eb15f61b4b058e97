"""A small CLIP for the Shapes world, trained offline: a real, imperfect vision-language model.

Real CLIP weights cannot be downloaded here, and the offline stand-ins are either an oracle
(the ground-truth annotations) or weak (ConSE). :func:`train_shapes_clip` trains a
contrastive image-text model with open_clip's own classes (architecture
:data:`~discover.nn.clip_archs.SHAPES_CLIP_ARCH`) on Shapes images and captions generated
from their concepts, so dissection sees a continuous ``P`` like CLIP's and goes through the
real loading path: the result loads with ``--embedder open_clip:ShapesCLIP-RN:<weights>``.

**Captions.** Each training image gets a fresh caption every epoch: with probability
``full_captions`` a sentence naming all six factors in one of several templates ("a small
cyan circle at the top right on a purple plain background"), otherwise a short list of one
to three of its concept names ("top right, circle"), the factors drawn with the weights
``factor_weights`` (shape and texture, the hardest to see, most often).

**Loss.** Symmetric InfoNCE with several positives: a caption that names only some factors
is true of every image in the batch that shares them, so each row (image to captions) and
column (caption to images) of the batch's similarity matrix is a cross-entropy against the
uniform distribution over its true pairs. With full captions this is CLIP's loss.

**Cache.** The result is keyed by its configuration (:func:`clip_key`) and stored under
``$DISCOVER_CACHE/shapes_clip/<key>/``: the weights (``open_clip_model.safetensors``),
``clip.json`` (configuration, zero-shot accuracy per factor, learning curve) and
``curve.png``. A second call with the same configuration returns it without training; an
interrupted one resumes from its last finished epoch (``state.pt``).

Example:
    >>> clip = train_shapes_clip(ShapesCLIPConfig(epochs=1, images=512))  # doctest: +SKIP
    >>> clip.spec  # doctest: +SKIP
    'open_clip:ShapesCLIP-RN:/root/.cache/discover/shapes_clip/3f2a.../open_clip_model.safetensors'
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discover._utils import (
    atomic_path,
    cache_root,
    dataclass_from_dict,
    import_extra,
    read_json,
    require_file,
    staged_dir,
    write_atomic,
)
from discover.data.shapes import FACTORS, ShapesWorld
from discover.errors import InputError
from discover.nn.clip_archs import SHAPES_CLIP_ARCH, register_open_clip_archs

__all__ = [
    "ShapesCLIPConfig",
    "ShapesCLIP",
    "shapes_caption",
    "clip_key",
    "zero_shot_accuracy",
    "train_shapes_clip",
]

WEIGHTS_FILE = "open_clip_model.safetensors"
RESULT_FILE = "clip.json"
STATE_FILE = "state.pt"
_TEXTURE_WORDS = {
    "plain background": "plain",
    "striped background": "striped",
    "dotted background": "dotted",
    "checkered background": "checkered",
    "noisy background": "noisy",
}
_RECIPE = 1  # bump when the training code changes what a configuration produces


@dataclass
class ShapesCLIPConfig:
    """Everything that determines a Shapes CLIP (and so its cache key).

    Attributes:
        arch: an open_clip architecture (discover's are registered on use).
        images: training images (Shapes ``train`` split, ``world_seed``), rendered at
            ``image_size``.
        epochs, batch_size, lr, weight_decay, warmup: AdamW with a linear warm-up over the
            first ``warmup`` share of the steps, then cosine decay to 0.
        full_captions: the share of captions that name all six factors.
        factor_weights: how often each factor (``FACTORS`` order) is named in short captions.
        eval_images: held-out images (``val`` split, seed ``world_seed + 1``) for the
            zero-shot accuracy after every epoch.
        seed: model initialisation, batches and captions.
    """

    arch: str = SHAPES_CLIP_ARCH
    images: int = 30_000
    image_size: int = 32
    world_seed: int = 7
    epochs: int = 16
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    full_captions: float = 0.25
    factor_weights: tuple[float, ...] = (5.0, 1.0, 1.0, 2.0, 2.0, 2.0)
    eval_images: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.factor_weights = tuple(float(w) for w in self.factor_weights)
        checks = {
            "images": self.images >= self.batch_size >= 2,
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "warmup": 0 <= self.warmup < 1,
            "full_captions": 0 <= self.full_captions <= 1,
            "factor_weights": len(self.factor_weights) == len(FACTORS)
            and min(self.factor_weights) >= 0
            and sum(self.factor_weights) > 0,
            "eval_images": self.eval_images >= 10,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"ShapesCLIPConfig: invalid {', '.join(bad)} (need images >= batch_size >= 2, "
                "epochs >= 1, lr > 0, 0 <= warmup < 1, 0 <= full_captions <= 1, one "
                f"non-negative weight per factor {FACTORS}, eval_images >= 10); got {self}"
            )


@dataclass
class ShapesCLIP:
    """A trained Shapes CLIP: where it is, how it was made and how well it sees.

    Attributes:
        folder: holds ``open_clip_model.safetensors``, ``clip.json`` and ``curve.png``.
        zero_shot: per factor (``FACTORS``), the share of held-out images whose true concept
            is the best of the factor's concepts by image-text cosine (raw concept names,
            as dissection uses them); ``chance`` per factor is one over its concepts.
        history: per epoch, the mean training loss and the zero-shot accuracies.
    """

    folder: Path
    config: ShapesCLIPConfig
    zero_shot: dict[str, float]
    chance: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    key: str = ""

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def spec(self) -> str:
        """The embedder spec that loads it: ``open_clip:<arch>:<weights file>``."""
        return f"open_clip:{self.config.arch}:{self.weights}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data

    @classmethod
    def load(cls, folder: str | Path) -> ShapesCLIP:
        """Read a trained Shapes CLIP back from its folder."""
        folder = Path(folder)
        path = require_file(folder, RESULT_FILE, "a Shapes CLIP", "discover train-clip --out DIR")
        data = read_json(path, "Shapes CLIP result")
        try:
            config = dataclass_from_dict(ShapesCLIPConfig, data["config"], "Shapes CLIP setting")
            return cls(
                folder=folder,
                config=config,
                zero_shot=dict(data["zero_shot"]),
                chance=dict(data["chance"]),
                history=list(data.get("history") or []),
                seconds=float(data.get("seconds") or 0.0),
                key=str(data.get("key") or ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"{folder / RESULT_FILE} is not a Shapes CLIP result ({error}); train it again "
                "with `discover train-clip`"
            ) from None

    def summary(self) -> str:
        """One line per factor: zero-shot accuracy against chance."""
        lines = [f"Shapes CLIP ({self.config.arch}, {self.config.epochs} epochs) in {self.folder}"]
        for factor in FACTORS:
            lines.append(
                f"  {factor:<10} zero-shot {100 * self.zero_shot[factor]:5.1f} %  "
                f"(chance {100 * self.chance[factor]:.1f} %)"
            )
        lines.append(f"embedder: --embedder {self.spec}")
        return "\n".join(lines)


def clip_key(config: ShapesCLIPConfig) -> str:
    """The content key of a configuration: the cache folder's name.

    Example:
        >>> clip_key(ShapesCLIPConfig()) == clip_key(ShapesCLIPConfig())
        True
    """
    import hashlib

    payload = json.dumps({"config": asdict(config), "recipe": _RECIPE}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def shapes_caption(
    concepts: Sequence[str], rng: random.Random, config: ShapesCLIPConfig
) -> tuple[str, list[int]]:
    """A caption of an image with ``concepts`` (one concept name per factor, ``FACTORS``
    order) and the factors it names.

    Example:
        >>> names = ["star", "red", "blue background", "striped background", "small", "top left"]
        >>> shapes_caption(names, random.Random(0), ShapesCLIPConfig(full_captions=1.0))[1]
        [0, 1, 2, 3, 4, 5]
    """
    shape, colour, background, texture, size, position = concepts
    bg, tex = background.removesuffix(" background"), _TEXTURE_WORDS.get(texture, texture)
    if rng.random() < config.full_captions:
        template = rng.randrange(4)
        if template == 0:
            text = f"a {size} {colour} {shape} at the {position} on a {bg} {tex} background"
        elif template == 1:
            text = f"{position}: a {colour} {shape}, {size}, on a {tex} {bg} background"
        elif template == 2:
            text = f"a {tex} {bg} background with a {size} {colour} {shape} in the {position}"
        else:
            parts = list(concepts)
            rng.shuffle(parts)
            text = ", ".join(parts)
        return text, list(range(len(FACTORS)))
    count = rng.choice((1, 1, 1, 2, 2, 3))
    chosen: list[int] = []
    weights = list(config.factor_weights)
    while len(chosen) < count and sum(weights) > 0:
        factor = rng.choices(range(len(FACTORS)), weights=weights)[0]
        chosen.append(factor)
        weights[factor] = 0.0
    parts = [concepts[f] for f in chosen]
    rng.shuffle(parts)
    return ", ".join(parts), sorted(chosen)


def _multi_positive_loss(logits: Tensor, positives: Tensor) -> Tensor:
    """Cross-entropy of each row and each column against the uniform law on its positives."""
    rows = positives / positives.sum(dim=1, keepdim=True)
    cols = positives.T / positives.T.sum(dim=1, keepdim=True)
    image_to_text = -(F.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
    text_to_image = -(F.log_softmax(logits.T, dim=1) * cols).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def _world(config: ShapesCLIPConfig, split: str, n: int, seed: int) -> ShapesWorld:
    return ShapesWorld(n=n, image_size=config.image_size, split=split, seed=seed)


def _render(world: ShapesWorld, progress: bool, what: str) -> Tensor:
    from tqdm.auto import tqdm

    items = tqdm(range(len(world)), desc=what, disable=not progress, leave=False)
    return torch.stack([world[i][0] for i in items])


class _Normalise(nn.Module):
    """The embedder's preprocessing of already-sized ``uint8`` images: scale, normalise."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


@torch.no_grad()
def zero_shot_accuracy(
    image_features: Tensor, text_features: Tensor, world: ShapesWorld
) -> dict[str, float]:
    """Per factor: how often the image's true concept has the highest cosine among the
    factor's concepts. ``image_features`` ``(N, D)`` for the ``N`` images of ``world``,
    ``text_features`` ``(M, D)`` for ``world.concept_names``, both L2-normalised.

    Example:
        >>> w = ShapesWorld(n=20, image_size=16)
        >>> truth = F.normalize(w.concepts_table(), dim=1)
        >>> zero_shot_accuracy(truth, torch.eye(len(w.concept_names)), w)["shape"]
        1.0
    """
    scores = image_features @ text_features.T
    codes = torch.from_numpy(world.factor_codes()).long()
    result, start = {}, 0
    for f, (factor, names) in enumerate(zip(FACTORS, world.concept_groups.values(), strict=True)):
        block = scores[:, start : start + len(names)]
        result[factor] = float((block.argmax(dim=1) == codes[:, f]).float().mean())
        start += len(names)
    return result


def _encode_all(model: nn.Module, prep: nn.Module, images: Tensor, batch: int = 500) -> Tensor:
    parts = [model.encode_image(prep(images[i : i + batch])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(parts).float(), dim=-1)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _lr_at(step: int, total: int, config: ShapesCLIPConfig) -> float:
    warm = max(1, round(config.warmup * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _save_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="contrastive loss")
    for factor in FACTORS:
        right.plot(
            epochs, [100 * h["zero_shot"][factor] for h in history], marker=".", label=factor
        )
    right.set(
        xlabel="epoch", ylabel="zero-shot accuracy (%)", title="held-out images", ylim=(0, 100)
    )
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def train_shapes_clip(
    config: ShapesCLIPConfig | None = None,
    *,
    out: str | Path | None = None,
    cache_dir: str | Path | None = "auto",
    progress: bool = True,
) -> ShapesCLIP:
    """Train (or find in the cache) a small CLIP of the Shapes world; see the module docstring.

    Args:
        config: the training configuration (default :class:`ShapesCLIPConfig`).
        out: a folder to write it to instead of the cache.
        cache_dir: the cache root (``"auto"``: ``$DISCOVER_CACHE``, default
            ``~/.cache/discover``); ignored with ``out``.
        progress: show progress bars.

    Returns:
        a :class:`ShapesCLIP`, whose :attr:`~ShapesCLIP.spec` is the embedder spec.

    Example:
        >>> clip = train_shapes_clip()  # doctest: +SKIP  (about 20 minutes on 2 CPU cores)
        >>> print(clip.summary())  # doctest: +SKIP
    """
    open_clip = import_extra("open_clip", "train_shapes_clip")
    config = config or ShapesCLIPConfig()
    register_open_clip_archs()
    if config.arch not in open_clip.list_models():
        raise InputError(f"ShapesCLIPConfig.arch: {config.arch!r} is not an open_clip architecture")
    key = clip_key(config)
    folder = _result_folder(key, out, cache_dir)
    if (folder / RESULT_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        found = ShapesCLIP.load(folder)
        if found.key == key:
            return found

    t0 = time.time()
    torch.manual_seed(config.seed)
    model, prep, tokenizer = _create_model(open_clip, config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    data = _ClipData.render(config, progress)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    start_epoch, history = _resume(state_path, key, model, optimizer)
    for epoch in range(start_epoch, config.epochs):
        losses = _train_epoch(model, prep, tokenizer, optimizer, data, config, epoch, progress)
        accuracy = _zero_shot(model, prep, tokenizer, data)
        spent = round((history[-1]["seconds"] if history else 0.0) + time.time() - t0, 1)
        t0 = time.time()
        loss = sum(losses) / len(losses)
        history.append({"epoch": epoch + 1, "loss": loss, "zero_shot": accuracy, "seconds": spent})
        _save_state(state_path, key, epoch + 1, model, optimizer, history)
    return _save_result(folder, key, config, model, history, data.eval_world)


def _result_folder(key: str, out: str | Path | None, cache_dir: str | Path | None) -> Path:
    """``out``, or the configuration's folder in the cache."""
    if out is not None:
        return Path(out)
    root = cache_root() if cache_dir == "auto" else Path(cache_dir or cache_root())
    return Path(root).expanduser() / "shapes_clip" / key


def _create_model(open_clip: Any, config: ShapesCLIPConfig) -> tuple[nn.Module, nn.Module, Any]:
    """A fresh open_clip model of ``config.arch``, its image preprocessing and its tokenizer."""
    with _quiet_root_logger():  # "No pretrained weights loaded": training from scratch is the point
        model = open_clip.create_model(config.arch, pretrained=None, output_dict=True)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if size != config.image_size:
        raise InputError(
            f"ShapesCLIPConfig.image_size={config.image_size}, but {config.arch} takes "
            f"{size} px images"
        )
    preprocess = open_clip.get_model_preprocess_cfg(model)
    prep = _Normalise(preprocess["mean"], preprocess["std"])
    return model, prep, open_clip.get_tokenizer(config.arch)


@dataclass
class _ClipData:
    """The rendered training images with their factor codes and concept names, and the
    held-out images the zero-shot accuracy is measured on."""

    images: Tensor
    codes: Tensor  # (N, factors): each image's concept index per factor
    names: list[list[str]]  # each image's concept name per factor
    concepts: list[str]  # every concept name, in the world's order
    eval_world: ShapesWorld
    eval_images: Tensor

    @classmethod
    def render(cls, config: ShapesCLIPConfig, progress: bool) -> _ClipData:
        train_world = _world(config, "train", config.images, config.world_seed)
        eval_world = _world(config, "val", config.eval_images, config.world_seed + 1)
        images = _render(train_world, progress, "rendering training images")
        codes = torch.from_numpy(train_world.factor_codes()).long()
        names = [
            [group[c] for group, c in zip(train_world.concept_groups.values(), row, strict=True)]
            for row in codes.tolist()
        ]
        eval_images = _render(eval_world, progress, "rendering held-out images")
        return cls(images, codes, names, train_world.concept_names, eval_world, eval_images)


def _resume(
    state_path: Path, key: str, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]]]:
    """The epoch to start from and the history so far: after the last finished epoch of a
    run of the same configuration, else from scratch."""
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            return int(state["epoch"]), json.loads(state["history"])
    return 0, []


def _positives(codes: Tensor, named: Sequence[list[int]]) -> Tensor:
    """``(images, captions)``: 1 where caption j is true of image i (every factor it names
    agrees with the image's)."""
    mentioned = torch.zeros(len(codes), len(FACTORS), dtype=torch.bool)
    for j, factors in enumerate(named):
        mentioned[j, factors] = True
    agree = codes[:, None, :] == codes[None, :, :]  # image i, caption j
    return (agree | ~mentioned[None]).all(dim=-1).float()


def _train_epoch(
    model: nn.Module,
    prep: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    data: _ClipData,
    config: ShapesCLIPConfig,
    epoch: int,
    progress: bool,
) -> list[float]:
    """One epoch over the training images, fresh captions for each; the batch losses."""
    from tqdm.auto import tqdm

    steps_per_epoch = config.images // config.batch_size
    total = steps_per_epoch * config.epochs
    model.train()
    rng = random.Random(f"{config.seed}/{epoch}")
    order = torch.randperm(
        config.images, generator=torch.Generator().manual_seed(rng.randrange(2**31))
    )
    losses = []
    bar = tqdm(
        range(steps_per_epoch),
        desc=f"Shapes CLIP epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        leave=False,
    )
    for b in bar:
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        captions, named = zip(
            *(shapes_caption(data.names[i], rng, config) for i in idx.tolist()), strict=True
        )
        positives = _positives(data.codes[idx], named)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(epoch * steps_per_epoch + b, total, config)
        outputs = model(prep(data.images[idx]), tokenizer(list(captions)))
        logits = outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
        loss = _multi_positive_loss(logits, positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def _zero_shot(model: nn.Module, prep: nn.Module, tokenizer: Any, data: _ClipData) -> dict:
    """Zero-shot accuracy per factor on the held-out images."""
    model.eval()
    text = F.normalize(model.encode_text(tokenizer(data.concepts)).float(), dim=-1)
    return zero_shot_accuracy(_encode_all(model, prep, data.eval_images), text, data.eval_world)


def _save_state(
    path: Path,
    key: str,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, Any]],
) -> None:
    """The resume point after ``epoch`` finished epochs."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "key": key,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": json.dumps(history),
            },
            tmp,
        )


def _save_result(
    folder: Path,
    key: str,
    config: ShapesCLIPConfig,
    model: nn.Module,
    history: list[dict[str, Any]],
    eval_world: ShapesWorld,
) -> ShapesCLIP:
    """Write the weights, ``clip.json`` and the learning curve to ``folder`` as one unit."""
    from safetensors.torch import save_file

    chance = {
        f: 1 / len(g) for f, g in zip(FACTORS, eval_world.concept_groups.values(), strict=True)
    }
    result = ShapesCLIP(
        folder=folder,
        config=config,
        zero_shot=history[-1]["zero_shot"],
        chance=chance,
        history=history,
        seconds=history[-1]["seconds"],
        key=key,
    )
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    data = result.to_dict()
    data.pop("folder")
    with staged_dir(folder) as staging:
        save_file(weights, str(staging / WEIGHTS_FILE), metadata={"arch": config.arch, "key": key})
        _save_curve(history, staging / "curve.png")
        write_atomic(staging / RESULT_FILE, json.dumps(data, indent=2))
    return result
