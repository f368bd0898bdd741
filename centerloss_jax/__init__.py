"""centerloss_jax: the center loss of Wen et al. (ECCV 2016) in JAX and Flax.

The core is functional (`center_loss`, `update_centers`, in
`centerloss_jax.losses`); `centerloss_jax.linen` and `centerloss_jax.nnx` wrap
it as Flax modules that keep the centers in non-differentiable, mutable state.
Importing this package loads the loss core only (jax and optax); the trainer
is `centerloss_jax.training`.
"""

from centerloss_jax.losses.center import accumulate_centers
from centerloss_jax.losses.center import apply_center_statistics
from centerloss_jax.losses.center import center_loss
from centerloss_jax.losses.center import center_statistics
from centerloss_jax.losses.center import CenterStatistics
from centerloss_jax.losses.center import update_centers
from centerloss_jax.losses.diagnostics import center_diagnostics
from centerloss_jax.losses.common import invalid_label_count
from centerloss_jax.losses.common import valid_label_mask

__version__ = '0.1.0'

__all__ = [
    'CenterStatistics',
    'accumulate_centers',
    'apply_center_statistics',
    'center_diagnostics',
    'center_loss',
    'center_statistics',
    'invalid_label_count',
    'update_centers',
    'valid_label_mask',
]
