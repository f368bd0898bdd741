"""The center loss as a Flax NNX module.

The centers are a `Centers` variable, a subclass of `nnx.Variable` and not of
`nnx.Param`, so `nnx.Optimizer(model, tx, wrt=nnx.Param)` and
`nnx.grad(..., argnums=nnx.DiffState(0, nnx.Param))` leave them alone; Eq. 4
updates them in place when the module is called.

Example:

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.backbone = Backbone(rngs=rngs)
      self.head = nnx.Linear(2, 10, rngs=rngs)
      self.center_loss = CenterLoss(10, 2, alpha=0.5, rngs=rngs)

  def loss_fn(model, images, labels):
    features = model.backbone(images)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        model.head(features), labels).mean()
    return ce + 0.01 * model.center_loss(features, labels)

  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(
      model, images, labels)               # centers updated in place
  optimizer.update(model, grads)           # nnx.Optimizer(..., wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from flax import nnx
import jax
import jax.numpy as jnp

from centerloss_jax import losses

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class Centers(nnx.Variable):
  """Class centers: non-differentiable state, updated by Eq. 4 only."""


class CenterLoss(nnx.Module):
  """Center loss (Eq. 2) whose centers are updated in place by Eq. 4."""

  def __init__(self, num_classes: int, feature_dim: int, *,
               alpha: float = 0.5, axis_name: Optional[str] = None,
               centers_init: Initializer = nnx.initializers.zeros,
               rngs: nnx.Rngs):
    """Creates float32 centers of shape (num_classes, feature_dim).

    Args:
      num_classes: number of classes.
      feature_dim: dimension of the features.
      alpha: the centers' update rate of Eq. 4 (the paper uses 0.5).
      axis_name: the mapped batch axis under `jax.pmap`/`jax.shard_map`, so
        the update uses the global batch; None under plain `jax.jit`.
      centers_init: initializer for the centers; zeros by default.
      rngs: the RNG streams; `rngs.params()` seeds `centers_init`.
    """
    self.num_classes = num_classes
    self.alpha = alpha
    self.axis_name = axis_name
    self.centers = Centers(
        centers_init(rngs.params(), (num_classes, feature_dim), jnp.float32))

  def __call__(self, features: jax.Array, labels: jax.Array,
               weights: Optional[jax.Array] = None,
               update: bool = True) -> jax.Array:
    """Returns the center loss with the current centers, then updates them.

    Args:
      features: (batch, dim) features.
      labels: (batch,) integer labels; out-of-range labels are masked out.
      weights: optional (batch,) example weights, 0 for padding.
      update: apply Eq. 4 to the centers in place (False for evaluation).

    Returns:
      The float32 scalar loss, computed with the centers as they were before
      this call's update (the paper's Algorithm 1).
    """
    centers = self.centers[...]
    loss = losses.center_loss(features, labels, centers, weights)
    if update:
      self.centers[...] = losses.update_centers(
          centers, features, labels, alpha=self.alpha, weights=weights,
          axis_name=self.axis_name)
    return loss
