"""What to watch while the centers learn: norms, movement, distances.

Center loss fails quietly: centers that never move (an update that was
dropped), centers that chase the features outward (`alpha` too high, or the
softmax inflating feature norms), or features that stay far from their
centers all train without an error. Three numbers per batch show which:

* `feature_center_distance`: `||x_i - c_{y_i}||`, each feature's Euclidean
  distance to its class center before the update (the square root of twice
  the center-loss term);
* `center_norm`: `||c'_{y_i}||`, the norm of its center after the update;
* `center_movement`: `||c'_{y_i} - c_{y_i}||`, how far the update moved it
  (exactly 0 when nothing was updated).

All are read at the batch's own classes, O(batch x dim) (never a pass over
the num_classes centers), and weighted by the examples' weights (so a class
counts as often as it appears), with `reduction` as for the losses: `'mean'`
over the examples, `'sum'`, or the (batch,) terms with `'none'`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses.center import check_inputs
from centerloss_jax.losses.center import own_centers
from centerloss_jax.losses.common import check_reduction
from centerloss_jax.losses.common import effective_weights
from centerloss_jax.losses.common import EPSILON

Array = jax.Array

DIAGNOSTICS = ('feature_center_distance', 'center_norm', 'center_movement')


def diagnostics_from_own_centers(features: Array, own: Array, new_own: Array,
                                 weights: Array, *, reduction: str = 'mean',
                                 axis_name: Optional[str] = None
                                 ) -> dict[str, Array]:
  """The diagnostics from each example's center before (`own`) and after.

  The building block of `center_diagnostics` for layouts that read the
  examples' centers their own way (class-sharded centers).

  Args:
    features: (batch, dim) features.
    own: (batch, dim) each example's center before the update.
    new_own: (batch, dim) the same centers after it.
    weights: (batch,) float32 weights, 0 for padding and invalid labels.
    reduction: `'mean'`, `'sum'` or `'none'`.
    axis_name: the mapped batch axis, if any: `'mean'` and `'sum'` are then
      of the global batch (psums of the sums), `'none'` stays per replica.

  Returns:
    A dict of float32 values, keyed by `DIAGNOSTICS`.
  """
  check_reduction(reduction)
  features, own, new_own = (
      jax.lax.stop_gradient(x).astype(jnp.float32)
      for x in (features, own, new_own))
  keep = weights[:, None] > 0
  def weighted_norms(x):
    # A select first: NaNs of padding rows must not reach the sums.
    return weights * jnp.linalg.norm(jnp.where(keep, x, 0.0), axis=-1)
  terms = {
      'feature_center_distance': weighted_norms(features - own),
      'center_norm': weighted_norms(new_own),
      'center_movement': weighted_norms(new_own - own),
  }
  if reduction == 'none':
    return terms
  sums = {name: jnp.sum(value) for name, value in terms.items()}
  total_weight = jnp.sum(weights)
  if axis_name is not None:
    sums, total_weight = jax.lax.psum((sums, total_weight), axis_name)
  if reduction == 'sum':
    return sums
  return {name: value / jnp.maximum(total_weight, EPSILON)
          for name, value in sums.items()}


def center_diagnostics(features: Array, labels: Array, centers: Array,
                       new_centers: Optional[Array] = None,
                       weights: Optional[Array] = None, *,
                       reduction: str = 'mean',
                       axis_name: Optional[str] = None) -> dict[str, Array]:
  """Feature-to-center distance, center norm and movement of a batch.

  Args:
    features: (batch, dim) features.
    labels: (batch,) integer class ids; out-of-range ids are masked out.
    centers: (num_classes, dim) centers before the update.
    new_centers: the centers after it (`update_centers`' result); None when
      they were not updated (movement 0).
    weights: optional (batch,) non-negative weights; 0 marks padding.
    reduction: `'mean'` (weighted mean over the examples), `'sum'`, or
      `'none'` for (batch,) weighted terms.
    axis_name: the mapped batch axis under `pmap`/`shard_map`, for the
      global batch's mean or sum.

  Returns:
    A dict of float32 values, keyed by `DIAGNOSTICS` (see the module
    docstring).

  Examples:
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> features, labels = jnp.array([[3., 4.]]), jnp.array([0])
    >>> centers = jnp.zeros((2, 2))
    >>> new_centers = cl.update_centers(centers, features, labels, alpha=0.5)
    >>> diagnostics = cl.center_diagnostics(features, labels, centers,
    ...                                     new_centers)
    >>> for name, value in diagnostics.items():
    ...   print(name, float(value))
    feature_center_distance 5.0
    center_norm 1.25
    center_movement 1.25
  """
  check_reduction(reduction)
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_inputs(features, labels, centers, weights)
  if new_centers is None:
    new_centers = centers
  elif jnp.shape(new_centers) != jnp.shape(centers):
    raise ValueError(
        f'new_centers must have the shape of centers, {jnp.shape(centers)}, '
        f'got {jnp.shape(new_centers)}.')
  return diagnostics_from_own_centers(
      features, own_centers(centers, labels),
      own_centers(new_centers, labels),
      effective_weights(labels, centers.shape[0], weights),
      reduction=reduction, axis_name=axis_name)
