"""All the losses in one place: center loss and the losses it is compared with.

Each comes as plain JAX functions in the style of `centerloss_jax.loss`:
float32 arithmetic, example weights with 0 for padding, invalid labels masked
out, and a summed or per-example form for trainers that normalise over a
global batch.

* Center loss (Wen et al. 2016): `center_loss`, `center_distances`,
  `update_centers`.
* Softmax: `softmax_cross_entropy` (per example), `softmax_cross_entropy_loss`.
* Contrastive (DeepID2; the paper's comparison): `contrastive_loss_sums`,
  `contrastive_loss`.
* Triplet with batch-hard mining: `batch_hard_triplet_loss_sums`,
  `batch_hard_triplet_loss`.
* Margin softmax (logits for `softmax_cross_entropy`): `sphereface_logits`,
  `cosface_logits`, `arcface_logits`, `margin_logits`.
"""

from centerloss_jax.loss import center_distances
from centerloss_jax.loss import center_loss
from centerloss_jax.loss import update_centers
from centerloss_jax.losses.contrastive import contrastive_loss
from centerloss_jax.losses.contrastive import contrastive_loss_sums
from centerloss_jax.losses.margin import arcface_logits
from centerloss_jax.losses.margin import cosface_logits
from centerloss_jax.losses.margin import MARGIN_KINDS
from centerloss_jax.losses.margin import margin_logits
from centerloss_jax.losses.margin import sphereface_logits
from centerloss_jax.losses.margin import sphereface_psi
from centerloss_jax.losses.softmax import softmax_cross_entropy
from centerloss_jax.losses.softmax import softmax_cross_entropy_loss
from centerloss_jax.losses.triplet import batch_hard_triplet_loss
from centerloss_jax.losses.triplet import batch_hard_triplet_loss_sums

__all__ = [
    'MARGIN_KINDS',
    'arcface_logits',
    'batch_hard_triplet_loss',
    'batch_hard_triplet_loss_sums',
    'center_distances',
    'center_loss',
    'contrastive_loss',
    'contrastive_loss_sums',
    'cosface_logits',
    'margin_logits',
    'softmax_cross_entropy',
    'softmax_cross_entropy_loss',
    'sphereface_logits',
    'sphereface_psi',
    'update_centers',
]
