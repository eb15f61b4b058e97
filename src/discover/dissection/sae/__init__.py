"""Sparse autoencoders (TopK SAEs) on a layer's recorded activations, as dissection subjects.

A TopK SAE (Gao et al., 2024, *Scaling and evaluating sparse autoencoders*) rewrites a
layer's ``d``-dimensional activation vector ``x`` as a sparse code over
``latents = expansion * d`` dictionary directions:

* ``encode``: ``z = TopK(ReLU(W_enc ((x - b_pre) / scale) + b_enc))``; exactly the ``k``
  largest pre-activations per row are kept (those that are positive: at most ``k`` nonzero,
  exactly ``k`` unless fewer than ``k`` are positive), the others are 0;
* ``decode``: ``x_hat = scale * (W_dec z) + b_pre``; the columns of ``W_dec`` have unit
  norm (renormalised after every step, the gradient's component along each column removed),
  and the pre-encoder bias is the decoder bias ``b_pre``;
* loss: the mean squared error in units of the data's spread (``scale`` is the root mean
  squared distance of the training rows from their mean, fixed at initialisation, so the
  loss is the fraction of variance left unexplained), plus an optional auxiliary loss
  (AuxK) in which the ``aux_k`` largest pre-activations of the *dead* latents (no activation
  for ``dead_after`` training rows) reconstruct the residual, with weight ``aux_coef``.

**What the SAE is trained on** (``sites``). The dissection describes one pooled vector per
image (``Q``, see :func:`~discover.dissection.recording.record`), but a layer of a conv net
or a ViT computes one vector per position (pixel or token). An SAE trained on pooled vectors
(``sites="pooled"``) sees a different distribution from the per-position vectors the next
layer reads (an average of many positions is smoother and less sparse than any one of
them), so swapping its reconstruction into the network (:func:`sae_replacement_accuracy`) is
a poor test of it. The default, ``sites="positions"``, trains on per-position vectors (a
seeded sample of ``positions_per_image`` positions of every probe image), replaces the
layer position by position, and for dissection encodes every position and pools the
*latents* the way the dissection pools the layer (``avg``/``max`` over space, ``cls``/``mean``
/``max`` over tokens): latent ``j`` of image ``i`` is then, e.g., the mean over positions of
how strongly direction ``j`` is used. For a vector layer (``(N, d)`` outputs, pooling
``none``) both are the same. With ``sites="pooled"`` the latents of an image are
``encode(Q_i)`` and the replacement is still applied per position (documented caveat).

A trained SAE is a folder: ``sae.safetensors`` (weights) and ``sae.json`` (its
:class:`SAEConfig`: layer, pooling, ``k``, ``expansion``, input width, training settings, the
model's weights hash and the metrics). Training keeps ``train_state.pt`` (weights, optimizer,
epoch, dead-latent counters; tensors only, read with ``weights_only=True``) beside them,
written atomically after every epoch, so ``resume=True`` continues an interrupted or a
finished run for more epochs exactly as if it had not stopped.

The model is in :mod:`.model`, what is recorded through it in :mod:`.recording`, its
training in :mod:`.training` and the replacement test in :mod:`.replacement`.
"""

from __future__ import annotations

from discover.dissection.sae.model import CONFIG_FILE as CONFIG_FILE
from discover.dissection.sae.model import FORMAT as FORMAT
from discover.dissection.sae.model import SAE, SITES, SAEConfig
from discover.dissection.sae.model import WEIGHTS_FILE as WEIGHTS_FILE
from discover.dissection.sae.model import as_sae as as_sae
from discover.dissection.sae.recording import record_latents
from discover.dissection.sae.replacement import Replacement, sae_replacement_accuracy
from discover.dissection.sae.training import PROBE_SPLIT, default_sae_dir, train_sae
from discover.dissection.sae.training import STATE_FILE as STATE_FILE

__all__ = [
    "SITES",
    "SAEConfig",
    "SAE",
    "Replacement",
    "train_sae",
    "PROBE_SPLIT",
    "default_sae_dir",
    "record_latents",
    "sae_replacement_accuracy",
]
