"""The center loss of Wen et al. (ECCV 2016) as pure JAX functions.

Three functions make up the method:

* `center_loss` is Eq. 2 per mini-batch, a weighted mean of half squared
  distances between features and their class centers. Its gradient to the
  features is Eq. 3; the centers get none.
* `update_centers` is Eq. 4, the centers' own update rule, applied outside the
  optimizer (no momentum, no weight decay, a rate `alpha` independent of the
  network's learning rate).
* `center_distances` is the per-example term both of them are built from, for
  trainers that normalise over a global batch themselves.

Cost. Nothing here materialises a `batch x num_classes` distance matrix or a
`num_classes x feature_dim` temporary: the loss gathers each example's own
center (O(batch x dim)), and the update sums duplicates of a class inside the
batch with a segmented scan over the label-sorted batch (O(batch x dim x
log batch)) before a scatter of at most `batch` rows into the centers, which
XLA performs in place when the caller donates them. Under data parallelism the
only communication is an all-gather of the batch and of its own centers
(O(global_batch x dim)), never of all the centers.

Invalid labels. A label outside `[0, num_classes)` is masked out: it adds
nothing to the loss (nor to its normaliser) and moves no center
(`common.invalid_label_count` counts them, so a trainer can report them).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses.common import check_alpha
from centerloss_jax.losses.common import check_rows
from centerloss_jax.losses.common import effective_weights
from centerloss_jax.losses.common import EPSILON
from centerloss_jax.losses.common import explicit_mesh
from centerloss_jax.losses.common import replicate_explicit
from centerloss_jax.losses.common import valid_label_mask

Array = jax.Array


def check_inputs(features, labels, centers, weights) -> None:
  """Raises ValueError/TypeError (at trace time) for ill-shaped inputs."""
  check_rows(features, labels, weights, rows_name='features',
             columns='feature_dim')
  dim = jnp.shape(features)[1]
  if jnp.ndim(centers) != 2 or jnp.shape(centers)[1] != dim:
    raise ValueError(
        f'centers must have shape (num_classes, feature_dim) = (C, {dim}) to '
        f'match features of shape {jnp.shape(features)}, got shape '
        f'{jnp.shape(centers)}.')
  if not jnp.issubdtype(jnp.result_type(centers), jnp.floating):
    raise TypeError(
        f'centers must be floating point, got dtype {jnp.result_type(centers)}.')
  if jnp.shape(centers)[0] == 0:
    raise ValueError(
        f'centers must have at least one row (num_classes >= 1), got shape '
        f'{jnp.shape(centers)}.')


def own_centers(centers, labels) -> Array:
  """Each example's own center, (batch, dim): a gather, not a distance matrix.

  Out-of-range labels read an arbitrary (clamped) row; callers mask them.
  The result is sharded like the labels.
  """
  centers = jnp.asarray(centers)
  out_sharding = None
  mesh = explicit_mesh(labels)
  if mesh is not None:
    spec = jax.typeof(labels).sharding.spec
    out_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*spec, None))
  return centers.at[labels].get(mode='clip', out_sharding=out_sharding)


def center_distances(features: Array, labels: Array, centers: Array,
                     weights: Optional[Array] = None) -> Array:
  """Per-example center-loss terms `0.5 * w_i * ||x_i - c_{y_i}||^2`, float32.

  The building block of `center_loss` for trainers that normalise over a
  global batch (sum these, divide by the global sum of weights). Centers get
  no gradient; examples with an out-of-range label contribute exactly 0.

  Args:
    features: (batch, dim) floating point features, any float dtype.
    labels: (batch,) integer class ids.
    centers: (num_classes, dim) class centers.
    weights: optional (batch,) non-negative example weights (0 for padding).

  Returns:
    (batch,) float32 array.
  """
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_inputs(features, labels, centers, weights)
  weights = effective_weights(labels, centers.shape[0], weights)
  own = own_centers(jax.lax.stop_gradient(centers).astype(jnp.float32), labels)
  # Selects, not products: a NaN in a padding row must leak neither into the
  # loss (0 * NaN) nor into the gradient (hence the select before squaring).
  diff = jnp.where(weights[:, None] > 0, features.astype(jnp.float32) - own,
                   0.0)
  return 0.5 * weights * jnp.sum(diff * diff, axis=-1)


def center_loss(features: Array, labels: Array, centers: Array,
                weights: Optional[Array] = None) -> Array:
  """The center loss, Eq. 2, as a weighted mean over the mini-batch.

  `0.5 * sum_i w_i ||x_i - c_{y_i}||^2 / sum_i w_i`, so with the default unit
  weights it is half the mean squared distance of each feature to its class
  center, as in the reference Caffe layer. The gradient to `x_i` is
  `w_i (x_i - c_{y_i}) / sum_i w_i` (Eq. 3); `centers` are wrapped in
  `stop_gradient`, their gradient is exactly zero (they move by
  `update_centers`). Computed in float32 whatever the features' dtype.

  Args:
    features: (batch, dim) features, e.g. bfloat16 on TPU.
    labels: (batch,) integer class ids; out-of-range ids are masked out.
    centers: (num_classes, dim) class centers.
    weights: optional (batch,) example weights; 0 marks padding.

  Returns:
    A float32 scalar; 0 when every weight is 0.
  """
  per_example = center_distances(features, labels, centers, weights)
  total_weight = jnp.sum(effective_weights(labels, centers.shape[0], weights))
  return jnp.sum(per_example) / jnp.maximum(total_weight, EPSILON)


def _segmented_inclusive_sum(values: Array, starts: Array) -> Array:
  """Running sums along axis 0 that restart wherever `starts` is True.

  An associative scan rather than a scatter-add: its order of additions is
  fixed by the shapes alone, so every device computes bit-identical sums
  (GPU scatter-adds with duplicate indices use atomics, whose order is not).
  """
  def combine(left, right):
    left_values, left_starts = left
    right_values, right_starts = right
    starts_b = right_starts.reshape(right_starts.shape + (1,) *
                                    (right_values.ndim - 1))
    return (jnp.where(starts_b, right_values, left_values + right_values),
            left_starts | right_starts)
  sums, _ = jax.lax.associative_scan(combine, (values, starts), axis=0)
  return sums


def update_centers(centers: Array, features: Array, labels: Array, *,
                   alpha: float, weights: Optional[Array] = None,
                   axis_name: Optional[str] = None) -> Array:
  """The center update of Eq. 4, returning the new centers.

  For every class j present in the batch with (weighted) count
  `n_j = sum_i w_i [y_i = j]`:

      delta_c_j = sum_i w_i [y_i = j] (c_j - x_i) / (1 + n_j)
      c_j <- c_j - alpha * delta_c_j

  Duplicates of a class are summed, classes absent from the batch (or present
  only with weight 0) are left bit-for-bit untouched, and out-of-range labels
  are ignored. Features get `stop_gradient`, so calling this inside a
  differentiated function is safe. The arithmetic is float32 and the result
  has the centers' dtype.

  Data parallelism: inside `jax.pmap` or `jax.shard_map`, pass the mapped
  `axis_name`; the per-device batches are all-gathered (O(global_batch x dim)
  traffic) and every device applies the identical update for the global batch,
  so replicas stay bit-identical. Under plain `jax.jit` with a sharded batch,
  arrays are already global and no `axis_name` is needed.

  Args:
    centers: (num_classes, dim) current centers; donate them to update in
      place.
    features: (batch, dim) features of this (per-device) batch.
    labels: (batch,) integer class ids.
    alpha: the centers' learning rate, Eq. 4, in [0, 1] (the paper uses
      0.5).
    weights: optional (batch,) non-negative weights; 0 marks padding.
    axis_name: the mapped axis (or tuple of axes) of the batch, if any.

  Returns:
    The updated centers, same shape and dtype as `centers`.

  Raises:
    ValueError: `alpha` outside [0, 1], negative (concrete) weights, no
      class, or ill-shaped inputs (TypeError for non-integer labels).
  """
  check_alpha(alpha)
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_inputs(features, labels, centers, weights)
  centers = jnp.asarray(centers)
  num_classes, _ = centers.shape
  features = jax.lax.stop_gradient(features).astype(jnp.float32)
  weights = jax.lax.stop_gradient(
      effective_weights(labels, num_classes, weights))
  # Each example's own center, read with the same gather as `center_loss`
  # (same labels, so XLA merges the two): the scatter below then depends on
  # the only read of the centers, and XLA can update the donated buffer in
  # place. A second, independent read (say, with the sorted, cast or gathered
  # labels) would have to finish before the scatter, and XLA copies the
  # whole (C, D) centers for it: O(num_classes) per step.
  own = own_centers(centers.astype(jnp.float32), labels)
  # int32 from here on, with invalid labels at -1: narrow label dtypes
  # (uint8) would wrap the out-of-bounds indices below onto real rows, and
  # int64 labels >= 2**31 would wrap into range.
  labels = jnp.where(valid_label_mask(labels, num_classes), labels,
                     -1).astype(jnp.int32)
  if axis_name is not None:
    # Typed invariant: the global batch is the same on every replica, so the
    # new centers are replicated values, as `jax.shard_map`'s default
    # `check_vma=True` needs them for `out_specs=P()` (pmap, and shard_map
    # without the check, compile the same all-gather).
    features, labels, weights, own = (
        jax.lax.all_gather(x, axis_name, axis=0, tiled=True, to='invarying')
        for x in (features, labels, weights, own))
  else:
    features, labels, weights, own = (
        replicate_explicit(x) for x in (features, labels, weights, own))

  # Sort by label so each class is a contiguous run; a stable sort keeps the
  # order of additions (and so the result) independent of device count.
  order = jnp.argsort(labels, stable=True)
  labels, features, weights, own = (
      x[order] for x in (labels, features, weights, own))
  batch = labels.shape[0]
  run_starts = jnp.concatenate(
      [jnp.ones((1,), bool), labels[1:] != labels[:-1]])
  run_ends = jnp.concatenate([labels[1:] != labels[:-1], jnp.ones((1,), bool)])

  # Per class: S_j = sum w_i x_i and n_j = sum w_i, read off at each run's end.
  sums = _segmented_inclusive_sum(
      jnp.concatenate([jnp.where(weights[:, None] > 0,
                                 weights[:, None] * features, 0.0),
                       weights[:, None]], axis=1),
      run_starts)
  feature_sums, counts = sums[:, :-1], sums[:, -1]

  # -alpha * delta_c_j = alpha * (S_j - n_j c_j) / (1 + n_j).
  step = alpha * (feature_sums - counts[:, None] * own) / (1.0 + counts[:, None])

  # Scatter only each run's last row, to unique indices: rows of other
  # positions, of weight-0 classes and of invalid labels are sent out of
  # bounds (each to its own index, so indices stay unique) and dropped.
  writes = run_ends & (counts > 0) & valid_label_mask(labels, num_classes)
  out_of_bounds = num_classes + jnp.arange(batch, dtype=jnp.int32)
  target = jnp.where(writes, labels, out_of_bounds)
  new_rows = (own + step).astype(centers.dtype)
  return centers.at[target].set(new_rows, mode='drop', unique_indices=True)

