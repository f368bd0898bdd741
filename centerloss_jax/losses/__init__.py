"""All the losses in one place: center loss and the losses it is compared with.

Pure JAX (and optax): no Flax, no training code. Each loss follows the
conventions of `common`: float32 arithmetic, example weights with 0 for
padding, invalid labels masked out, and one function per loss,
`<name>_loss(..., reduction='mean')`, whose `reduction='none'` is the
per-example form for trainers that normalise over a global batch.

* Center loss (Wen et al. 2016), `center`: `center_loss`, `update_centers`
  (Eq. 4, or `rule='ema'`; `normalize=True` for the cosine form), and for
  gradient accumulation `center_statistics`, `apply_center_statistics`,
  `accumulate_centers`; `diagnostics`: `center_diagnostics`; with the
  classes split over devices, `class_sharded`.
* Softmax: `softmax_cross_entropy_loss`.
* Contrastive (DeepID2; the paper's comparison): `contrastive_loss`, and
  `contrastive_loss_sums` for pairs that span replicas.
* Triplet with batch-hard mining: `batch_hard_triplet_loss`, and
  `batch_hard_triplet_loss_sums` for mining over replicas.
* Margin softmax (logits for `softmax_cross_entropy`): `sphereface_logits`,
  `cosface_logits`, `arcface_logits`, `margin_logits`.
"""

from centerloss_jax.losses import center
from centerloss_jax.losses.center import accumulate_centers
from centerloss_jax.losses.center import apply_center_statistics
from centerloss_jax.losses.center import center_loss
from centerloss_jax.losses.center import center_statistics
from centerloss_jax.losses.center import CenterStatistics
from centerloss_jax.losses.center import update_centers
from centerloss_jax.losses.center import UPDATE_RULES
from centerloss_jax.losses import class_sharded
from centerloss_jax.losses import common
from centerloss_jax.losses.common import EPSILON
from centerloss_jax.losses.common import REDUCTIONS
from centerloss_jax.losses.common import invalid_label_count
from centerloss_jax.losses.common import l2_normalize
from centerloss_jax.losses.common import valid_label_mask
from centerloss_jax.losses import contrastive
from centerloss_jax.losses import diagnostics
from centerloss_jax.losses.diagnostics import center_diagnostics
from centerloss_jax.losses.diagnostics import DIAGNOSTICS
from centerloss_jax.losses.contrastive import contrastive_loss
from centerloss_jax.losses.contrastive import contrastive_loss_sums
from centerloss_jax.losses import margin
from centerloss_jax.losses.margin import arcface_logits
from centerloss_jax.losses.margin import cosface_logits
from centerloss_jax.losses.margin import MARGIN_KINDS
from centerloss_jax.losses.margin import margin_logits
from centerloss_jax.losses.margin import sphereface_logits
from centerloss_jax.losses.margin import sphereface_psi
from centerloss_jax.losses import softmax
from centerloss_jax.losses.softmax import softmax_cross_entropy_loss
from centerloss_jax.losses import triplet
from centerloss_jax.losses.triplet import batch_hard_triplet_loss
from centerloss_jax.losses.triplet import batch_hard_triplet_loss_sums

__all__ = [
    'CenterStatistics',
    'DIAGNOSTICS',
    'EPSILON',
    'MARGIN_KINDS',
    'REDUCTIONS',
    'UPDATE_RULES',
    'accumulate_centers',
    'apply_center_statistics',
    'arcface_logits',
    'batch_hard_triplet_loss',
    'batch_hard_triplet_loss_sums',
    'center_diagnostics',
    'center_loss',
    'center_statistics',
    'contrastive_loss',
    'contrastive_loss_sums',
    'cosface_logits',
    'invalid_label_count',
    'l2_normalize',
    'margin_logits',
    'softmax_cross_entropy_loss',
    'sphereface_logits',
    'sphereface_psi',
    'update_centers',
    'valid_label_mask',
]
