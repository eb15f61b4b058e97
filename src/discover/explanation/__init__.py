"""Per-image explanations: the few units that fired, with their labels (docs/method.md §8).

:func:`explain` runs one forward pass and reads, for every LWTA layer, the units that won
their competition (from the winner **mask**, never from an argmax over the signed outputs:
a winner can be negative, and then an argmax lands on a loser). Each winner is listed with
its activation, pooled the way the dissection pooled that layer, and with the dissection's
label. For the features that feed the classifier it also gives each active unit's
contribution ``activation x weight`` to the predicted logit, and the share of the logit
(minus the bias) that the listed units explain.

Aggregation, per layer and image (documented here because the reference code has none for
conv maps):

* a unit is a feature (vectors), a channel (conv maps) or a token feature pooled as the
  dissection pooled it (``cls`` by default for ViTs);
* LWTA layers: a unit is *active* if it won at least once in the pooled region (the CLS
  token; any position of a conv map under ``avg``/``max``); its ``activation`` is the pooled
  output, e.g. for ``avg`` the mean over positions (zero where it lost);
* dense layers: a unit is active if ``|pooled activation| > threshold`` (the reference lists
  ``|a| > 1e-4``, nearly every unit of a dense network: that contrast is the point);
* ``active_fraction`` is measured on the raw output before pooling: the fraction of
  (unit, position) entries that won (exactly ``1/U`` for LWTA), or that exceed the threshold;
* winners are sorted by ``|activation|``, contributions by ``|contribution|``, both
  descending, and ``top`` keeps the first ones (``active`` always counts all of them);
* **labels**: a unit's ``label`` is the dissection's label, or ``None`` when the dissection
  shows the unit unlabelled (``abstained`` gives why; ``candidates`` lists its best
  concepts either way);
* **image-conditioned labels** (``embedder=``): for every listed unit, the vision-language
  model scores the unit's candidates in *this* image; each score is standardised by that
  concept's mean and spread over the dissection's probe (``Dissection.concept_stats``; a
  dissection without them keeps the raw score), and ``seen`` lists the candidates by that
  score, ``conditioned_label`` the first. It says which of the unit's meanings this image
  shows, next to the unit's global label;
* the layer of a sparse autoencoder whose latents were dissected (``dissect(..., sae=)``) is
  explained through its latents (kind ``sae``): a latent is active if it is nonzero after
  pooling (:meth:`~discover.dissection.sae.SAE.image_latents`), ``active_fraction`` is the
  share of nonzero (latent, position) entries (``k / latents`` per position);
* **where it fired**: each listed winner of a layer with spatial extent, and each listed
  contribution (the classifier's features before pooling), carries its ``map`` on the image
  (the layer's resolution; :func:`~discover.dissection.spatial.spatial_maps`) and
  ``where``, the 3 x 3 part of the image holding the centre of its above-half-peak region;
  a layer without spatial extent says so in ``maps``. ``class_evidence`` is a Grad-CAM map
  of the predicted class (ReLU'd): at the last conv map (captum's ``LayerGradCam``), or for
  a ViT/DeiT at the input of its last block on the patch grid; or a note saying why there
  is none.

The modules, in the order the data flows: :mod:`.inputs` (images to a batch),
:mod:`.maps` (where units fired, Grad-CAM), :mod:`.rows` and :mod:`.result` (the
:class:`Explanation` and its rows, :mod:`.render` their text and tables),
:mod:`.selection` (the units listed and their contributions), :mod:`.conditioning`
(image-conditioned labels), :mod:`.checks` (its options checked), :mod:`.core`
(:func:`explain`), :mod:`.layers` (which layers to explain and dissect) and :mod:`.run`
(:func:`explain_run`).
"""

from __future__ import annotations

from discover.explanation.core import DEFAULT_CANDIDATES, DEFAULT_THRESHOLD, DEFAULT_TOP, explain
from discover.explanation.inputs import read_images
from discover.explanation.layers import classifier_input_layer, default_layers
from discover.explanation.model import find_classifier
from discover.explanation.result import Explanation, explanations_to_json, print_explanations
from discover.explanation.rows import Contributions, LayerExplanation, UnitContribution, Winner
from discover.explanation.run import RunExplanations, explain_run
from discover.explanation.selection import WEAK

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP",
    "DEFAULT_CANDIDATES",
    "WEAK",
    "Winner",
    "LayerExplanation",
    "UnitContribution",
    "Contributions",
    "Explanation",
    "RunExplanations",
    "default_layers",
    "explain",
    "explain_run",
    "find_classifier",
    "read_images",
    "print_explanations",
    "explanations_to_json",
    "classifier_input_layer",
]
