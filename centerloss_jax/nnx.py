"""The center loss as a Flax NNX module.

The centers are a `Centers` variable, a subclass of `nnx.Variable` and not of
`nnx.Param`, so `nnx.Optimizer(model, tx, wrt=nnx.Param)` and
`nnx.grad(..., argnums=nnx.DiffState(0, nnx.Param))` leave them alone; Eq. 4
updates them in place when the module is called in training mode. Like
`nnx.BatchNorm`'s running statistics, they stay put after `model.eval()`
(which sets `use_running_average=True`) until `model.train()`. Every call
also refreshes the module's `Diagnostic` variables (`invalid_labels`,
`feature_center_distance`, `center_norm`, `center_movement`).

Example::

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
  """Class centers: non-differentiable state, updated by Eq. 4 only.

  Examples:
    A `CenterLoss` holds no `nnx.Param`: its centers are `Centers`, which
    `nnx.Optimizer(..., wrt=nnx.Param)` and `nnx.grad` leave alone.

    >>> import jax
    >>> from flax import nnx
    >>> from centerloss_jax.nnx import CenterLoss, Centers
    >>> layer = CenterLoss(num_classes=3, feature_dim=2, rngs=nnx.Rngs(0))
    >>> print(len(jax.tree.leaves(nnx.state(layer, nnx.Param))))
    0
    >>> print(jax.tree.leaves(nnx.state(layer, Centers))[0].shape)
    (3, 2)
  """


class Diagnostic(nnx.Variable):
  """A number about the last call, for logging; never differentiated.

  `CenterLoss` keeps `invalid_labels` (how many labels were outside
  `[0, num_classes)`) and the batch means of `losses.DIAGNOSTICS`:
  `feature_center_distance`, `center_norm`, `center_movement`.
  """


class CenterLoss(nnx.Module):
  """Center loss (Eq. 2) whose centers are updated in place by Eq. 4.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from centerloss_jax.nnx import CenterLoss
    >>> layer = CenterLoss(num_classes=3, feature_dim=2, alpha=0.5,
    ...                    rngs=nnx.Rngs(0))
    >>> features = jnp.array([[4., 0.], [0., 4.]])
    >>> labels = jnp.array([0, 1])
    >>> print(layer(features, labels))  # With the zero centers.
    8.0
    >>> print(layer.centers[...])  # Moved in place by Eq. 4.
    [[1. 0.]
     [0. 1.]
     [0. 0.]]
    >>> layer.eval()  # Only reads the centers from here on.
    >>> print(layer(features, labels))
    4.5
    >>> print(float(layer.center_movement[...]))
    0.0
  """

  def __init__(self, num_classes: int, feature_dim: int, *,
               alpha: float = 0.5, axis_name: Optional[str] = None,
               centers_init: Initializer = nnx.initializers.zeros,
               rule: str = 'paper', normalize: bool = False,
               use_running_average: bool = False,
               strict_labels: bool = False, rngs: nnx.Rngs):
    """Creates float32 centers of shape (num_classes, feature_dim).

    Args:
      num_classes: number of classes.
      feature_dim: dimension of the features.
      alpha: the centers' update rate of Eq. 4 (the paper uses 0.5).
      axis_name: the mapped batch axis under `jax.pmap`/`jax.shard_map`, so
        the update uses the global batch; None under plain `jax.jit`.
      centers_init: initializer for the centers; zeros by default.
      rule: the update, `'paper'` (Eq. 4) or `'ema'` (a moving average of
        each class's batch mean; see `losses.update_centers`).
      normalize: the cosine center loss for margin-softmax heads: features
        and centers on the unit sphere.
      use_running_average: only read the centers, as `nnx.BatchNorm` uses
        its running statistics: set by `model.eval()` (True) and
        `model.train()` (False), NNX's convention for train/eval state.
      strict_labels: raise on labels outside `[0, num_classes)` when they
        are concrete (eager use); they are masked out either way, and
        `invalid_labels` counts them at every call.
      rngs: the RNG streams; `rngs.params()` seeds `centers_init`.

    Raises:
      ValueError: `alpha` outside [0, 1] or an unknown `rule`.
    """
    losses.center.check_update_options(alpha, rule)
    self.num_classes = num_classes
    self.alpha = alpha
    self.axis_name = axis_name
    self.rule = rule
    self.normalize = normalize
    self.use_running_average = use_running_average
    self.strict_labels = strict_labels
    self.invalid_labels = Diagnostic(jnp.zeros((), jnp.int32))
    for name in losses.DIAGNOSTICS:
      setattr(self, name, Diagnostic(jnp.zeros((), jnp.float32)))
    self.centers = Centers(
        centers_init(rngs.params(), (num_classes, feature_dim), jnp.float32))

  def __call__(self, features: jax.Array, labels: jax.Array,
               weights: Optional[jax.Array] = None,
               update: Optional[bool] = None) -> jax.Array:
    """Returns the center loss with the current centers, then updates them.

    Args:
      features: (batch, dim) features.
      labels: (batch,) integer labels; out-of-range labels are masked out.
      weights: optional (batch,) example weights, 0 for padding.
      update: apply Eq. 4 to the centers in place; None (the default)
        follows the mode: update in training, not after `model.eval()`.

    Returns:
      The float32 scalar loss, computed with the centers as they were before
      this call's update (the paper's Algorithm 1).
    """
    if update is None:
      update = not self.use_running_average
    if self.strict_labels:
      losses.common.check_labels_in_range(labels, self.num_classes)
    centers = self.centers[...]
    loss = losses.center_loss(features, labels, centers, weights,
                              normalize=self.normalize)
    self.invalid_labels[...] = losses.invalid_label_count(
        labels, self.num_classes, weights, axis_name=self.axis_name)
    if update:
      self.centers[...] = losses.update_centers(
          centers, features, labels, alpha=self.alpha, weights=weights,
          rule=self.rule, normalize=self.normalize, axis_name=self.axis_name)
    for name, value in losses.center_diagnostics(
        features, labels, centers, self.centers[...], weights,
        axis_name=self.axis_name).items():
      getattr(self, name)[...] = value
    return loss
