"""The center loss as a Flax linen module.

The centers live in their own variable collection, `'centers'`, never in
`'params'`: optimizers and `jax.grad` over params leave them alone, and they
move only by the paper's Eq. 4, when the module is applied with the
collection mutable. Applying it with `update=True` (the default) and the
collection immutable is an error, not a silent no-op.

Example::

  class Net(nn.Module):
    @nn.compact
    def __call__(self, images, labels):
      features = Backbone()(images)
      logits = nn.Dense(10)(features)
      return logits, CenterLoss(num_classes=10)(features, labels)

  variables = Net().init(rng, images, labels)      # {'params', 'centers'}
  (logits, loss), updates = Net().apply(
      variables, images, labels, mutable=['centers'])
  variables = {**variables, **updates}             # centers moved by Eq. 4
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from centerloss_jax import losses

CENTERS_COLLECTION = 'centers'

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class CenterLoss(nn.Module):
  """Center loss (Eq. 2) with centers updated by Eq. 4 as mutable state.

  Attributes:
    num_classes: number of classes (rows of the centers).
    alpha: the centers' update rate of Eq. 4 (the paper uses 0.5).
    axis_name: the mapped batch axis under `jax.pmap`/`jax.shard_map`, so the
      update uses the global batch; None under plain `jax.jit`.
    centers_init: initializer of the (num_classes, dim) float32 centers, called
      with the `'params'` RNG at `init`. Zeros by default: Eq. 4 moves a
      center to its class within a few batches.
    rule: the update, `'paper'` (Eq. 4) or `'ema'` (a moving average of
      each class's batch mean; see `losses.update_centers`).
    normalize: the cosine center loss for margin-softmax heads: features
      and centers on the unit sphere (`1 - cos(x_i, c_{y_i})` per example).
    strict_labels: raise on labels outside `[0, num_classes)` when they are
      concrete (eager use); they are masked out either way.

  Diagnostics are sown into `'intermediates'` (stored when it is mutable):
  `invalid_labels`, the count of masked labels, and the batch means of
  `losses.DIAGNOSTICS` (`feature_center_distance`, `center_norm`,
  `center_movement`; see `losses.diagnostics`).

  Examples:
    The loss uses the centers before this call's update; the update comes
    back in the mutable `'centers'` collection:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.linen import CenterLoss
    >>> layer = CenterLoss(num_classes=3, alpha=0.5)
    >>> features = jnp.array([[4., 0.], [0., 4.]])
    >>> labels = jnp.array([0, 1])
    >>> variables = layer.init(jax.random.key(0), features, labels)
    >>> loss, updates = layer.apply(variables, features, labels,
    ...                             mutable=['centers'])
    >>> print(loss)
    8.0
    >>> print(updates['centers']['centers'])
    [[1. 0.]
     [0. 1.]
     [0. 0.]]
  """
  num_classes: int
  alpha: float = 0.5
  axis_name: Optional[str] = None
  centers_init: Initializer = nn.initializers.zeros
  rule: str = 'paper'
  normalize: bool = False
  strict_labels: bool = False

  def __post_init__(self):
    losses.center.check_update_options(self.alpha, self.rule)
    super().__post_init__()

  @nn.compact
  def __call__(self, features: jax.Array, labels: jax.Array,
               weights: Optional[jax.Array] = None,
               update: bool = True) -> jax.Array:
    """Returns the center loss with the current centers; may update them.

    Args:
      features: (batch, dim) features.
      labels: (batch,) integer labels; out-of-range labels are masked out.
      weights: optional (batch,) example weights, 0 for padding.
      update: apply Eq. 4 to the centers (not during `init`). It needs the
        `'centers'` collection mutable (`apply(..., mutable=['centers'])`,
        then merge the returned updates into the variables); pass
        `update=False` to only read the centers (evaluation).

    Returns:
      The float32 scalar loss, computed with the centers as they were before
      this call's update (the paper's Algorithm 1).

    Raises:
      ValueError: `update=True` with an immutable `'centers'` collection,
        where the update would be silently lost (the centers would stay at
        their initial value and the loss become a feature-norm penalty).
    """
    if self.strict_labels:
      losses.common.check_labels_in_range(labels, self.num_classes)
    dim = features.shape[-1]
    centers = self.variable(
        CENTERS_COLLECTION, 'centers',
        lambda: self.centers_init(self.make_rng('params'),
                                  (self.num_classes, dim), jnp.float32))
    old_centers = centers.value
    loss = losses.center_loss(features, labels, old_centers, weights,
                              normalize=self.normalize)
    self.sow('intermediates', 'invalid_labels',
             losses.invalid_label_count(labels, self.num_classes, weights,
                                        axis_name=self.axis_name))
    if update and not self.is_initializing():
      if not self.is_mutable_collection(CENTERS_COLLECTION):
        raise ValueError(
            f'{type(self).__name__}(update=True) needs the '
            f"'{CENTERS_COLLECTION}' collection mutable, or Eq. 4 is lost "
            "and the centers never move: call apply(..., mutable=['"
            f"{CENTERS_COLLECTION}']) and merge the returned updates into "
            'the variables, or pass update=False to only read the centers.')
      centers.value = losses.update_centers(
          old_centers, features, labels, alpha=self.alpha, weights=weights,
          rule=self.rule, normalize=self.normalize, axis_name=self.axis_name)
    if self.is_mutable_collection('intermediates'):
      # Only when stored: the extra gathers cost nothing otherwise.
      for name, value in losses.center_diagnostics(
          features, labels, old_centers, centers.value, weights,
          axis_name=self.axis_name).items():
        self.sow('intermediates', name, value)
    return loss
