"""The center loss of Wen et al. (ECCV 2016) as pure JAX functions.

Two functions make up the method:

* `center_loss` is Eq. 2 per mini-batch, a weighted mean of half squared
  distances between features and their class centers (`reduction='none'`
  gives the per-example terms). Its gradient to the features is Eq. 3; the
  centers get none.
* `update_centers` is Eq. 4, the centers' own update rule, applied outside the
  optimizer (no momentum, no weight decay, a rate `alpha` independent of the
  network's learning rate).

Options: `normalize=True` on both is the cosine form (features and centers on
the unit sphere), `rule='ema'` a moving-average update. For gradient
accumulation, `center_statistics` / `apply_center_statistics` split Eq. 4
into per-class sums that add across micro-batches and one application, and
`accumulate_centers` is the two together for `optax.MultiSteps`.

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

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses.common import check_alpha
from centerloss_jax.losses.common import check_reduction
from centerloss_jax.losses.common import check_rows
from centerloss_jax.losses.common import effective_weights
from centerloss_jax.losses.common import EPSILON
from centerloss_jax.losses.common import explicit_mesh
from centerloss_jax.losses.common import l2_normalize
from centerloss_jax.losses.common import reduce_loss
from centerloss_jax.losses.common import replicate_explicit
from centerloss_jax.losses.common import valid_label_mask

Array = jax.Array

# The forms of the center update: the paper's Eq. 4, or a moving average.
UPDATE_RULES = ('paper', 'ema')


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


def center_loss(features: Array, labels: Array, centers: Array,
                weights: Optional[Array] = None, *, normalize: bool = False,
                reduction: str = 'mean') -> Array:
  """The center loss, Eq. 2: half squared distances of features to centers.

  Per example `0.5 * w_i ||x_i - c_{y_i}||^2`; the default `'mean'` divides
  their sum by `sum_i w_i`, so with unit weights it is half the mean squared
  distance of each feature to its class center, as in the reference Caffe
  layer. The gradient to `x_i` is Eq. 3, `w_i (x_i - c_{y_i})` over the
  normaliser; `centers` are wrapped in `stop_gradient`, their gradient is
  exactly zero (they move by `update_centers`). Computed in float32 whatever
  the features' dtype. Examples with weight 0 or an out-of-range label
  contribute exactly 0 (and NaNs in their rows leak into neither the loss
  nor the gradient).

  Args:
    features: (batch, dim) features, e.g. bfloat16 on TPU.
    labels: (batch,) integer class ids; out-of-range ids are masked out.
    centers: (num_classes, dim) class centers.
    weights: optional (batch,) non-negative example weights; 0 marks padding.
    normalize: the cosine form for margin-softmax heads (ArcFace, CosFace):
      features and centers are L2-normalised first, so each term is
      `0.5 * ||x/|x| - c/|c| ||^2 = 1 - cos(x_i, c_{y_i})`. Pair it with
      `update_centers(..., normalize=True)`, which keeps the centers on the
      unit sphere.
    reduction: `'mean'` (weighted mean over the examples), `'sum'`, or
      `'none'` for the (batch,) weighted terms, for trainers that normalise
      over a global batch (sum these, divide by the global sum of weights).

  Returns:
    A float32 scalar (0 when every weight is 0), or (batch,) for `'none'`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> features = jnp.array([[1., 1.], [2., 0.]])
    >>> labels = jnp.array([0, 1])
    >>> centers = jnp.zeros((2, 2))
    >>> print(cl.center_loss(features, labels, centers))
    1.5
    >>> print(cl.center_loss(features, labels, centers, reduction='none'))
    [1. 2.]
  """
  check_reduction(reduction)
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_inputs(features, labels, centers, weights)
  weights = effective_weights(labels, centers.shape[0], weights)
  own = own_centers(jax.lax.stop_gradient(centers).astype(jnp.float32), labels)
  features = features.astype(jnp.float32)
  if normalize:
    features, own = l2_normalize(features), l2_normalize(own)
  # Selects, not products: a NaN in a padding row must leak neither into the
  # loss (0 * NaN) nor into the gradient (hence the select before squaring).
  diff = jnp.where(weights[:, None] > 0, features - own, 0.0)
  per_example = 0.5 * weights * jnp.sum(diff * diff, axis=-1)
  return reduce_loss(per_example, jnp.sum(weights), reduction)


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


class _ClassSums(NamedTuple):
  """A batch sorted by label, with each class's sums read off its last row."""
  labels: Array        # (B,) int32 sorted labels, invalid ones as -1.
  feature_sums: Array  # (B, D) S_j = sum_i w_i x_i at each class's last row.
  counts: Array        # (B,) n_j = sum_i w_i at each class's last row.
  own: Optional[Array]  # (B, D) the sorted rows' own centers, if given.
  target: Array        # (B,) each class's last row's label, others dropped.


def _class_sums(features: Array, labels: Array, weights: Array,
                num_classes: int, *, normalize: bool,
                axis_name: Optional[str], own: Optional[Array] = None
                ) -> _ClassSums:
  """Per-class weighted sums and counts of the (global) batch.

  The batch (with `own`, the examples' current centers, if given) is
  all-gathered over `axis_name`, sorted by label (stably, so the order of
  additions, and so the result, is independent of the device count) and
  summed per class with a segmented scan. The sums sit at each class's last
  row; `target` is that row's class there and an out-of-bounds index
  elsewhere (weight-0 classes and invalid labels included), unique per row,
  for an in-place `.at[target].set(..., mode='drop', unique_indices=True)`.
  """
  features = jax.lax.stop_gradient(features).astype(jnp.float32)
  if normalize:
    features = l2_normalize(features)
  weights = jax.lax.stop_gradient(
      effective_weights(labels, num_classes, weights))
  # int32 from here on, with invalid labels at -1: narrow label dtypes
  # (uint8) would wrap the out-of-bounds indices below onto real rows, and
  # int64 labels >= 2**31 would wrap into range.
  labels = jnp.where(valid_label_mask(labels, num_classes), labels,
                     -1).astype(jnp.int32)
  rows = (features, labels, weights) + (() if own is None else (own,))
  if axis_name is not None:
    # Typed invariant: the global batch is the same on every replica, so
    # what is computed from it is replicated, as `jax.shard_map`'s default
    # `check_vma=True` needs it for `out_specs=P()` (pmap, and shard_map
    # without the check, compile the same all-gather).
    rows = tuple(
        jax.lax.all_gather(x, axis_name, axis=0, tiled=True, to='invarying')
        for x in rows)
  else:
    rows = tuple(replicate_explicit(x) for x in rows)
  labels = rows[1]
  order = jnp.argsort(labels, stable=True)
  features, labels, weights, *own = (x[order] for x in rows)
  batch = labels.shape[0]
  run_starts = jnp.concatenate(
      [jnp.ones((1,), bool), labels[1:] != labels[:-1]])
  run_ends = jnp.concatenate([labels[1:] != labels[:-1], jnp.ones((1,), bool)])
  sums = _segmented_inclusive_sum(
      jnp.concatenate([jnp.where(weights[:, None] > 0,
                                 weights[:, None] * features, 0.0),
                       weights[:, None]], axis=1),
      run_starts)
  feature_sums, counts = sums[:, :-1], sums[:, -1]
  # Rows of other positions, of weight-0 classes and of invalid labels are
  # sent out of bounds (each to its own index, so indices stay unique).
  writes = run_ends & (counts > 0) & valid_label_mask(labels, num_classes)
  target = jnp.where(writes, labels,
                     num_classes + jnp.arange(batch, dtype=jnp.int32))
  return _ClassSums(labels, feature_sums, counts, own[0] if own else None,
                    target)


def _moved_centers(centers: Array, feature_sums: Array, counts: Array, *,
                   alpha: float, rule: str, normalize: bool) -> Array:
  """float32 new centers of classes with sums S_j, counts n_j > 0.

  `'paper'` (Eq. 4): c + alpha (S - n c) / (1 + n); `'ema'`: an exponential
  moving average of the class mean, c + alpha (S / n - c).
  """
  counts = counts[:, None]
  if rule == 'paper':
    step = alpha * (feature_sums - counts * centers) / (1.0 + counts)
  else:
    step = alpha * (feature_sums - counts * centers) / jnp.maximum(
        counts, EPSILON)
  moved = centers + step
  return l2_normalize(moved) if normalize else moved


def check_update_options(alpha: Any, rule: str) -> None:
  """Raises for an `alpha` outside [0, 1] or an unknown update `rule`."""
  check_alpha(alpha)
  if rule not in UPDATE_RULES:
    raise ValueError(
        f'rule (of the center update) must be one of {UPDATE_RULES}, got '
        f'{rule!r}.')


def update_centers(centers: Array, features: Array, labels: Array, *,
                   alpha: float, weights: Optional[Array] = None,
                   rule: str = 'paper', normalize: bool = False,
                   axis_name: Optional[str] = None) -> Array:
  """The center update of Eq. 4, returning the new centers.

  For every class j present in the batch with (weighted) count
  `n_j = sum_i w_i [y_i = j]`::

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

  Gradient accumulation (`optax.MultiSteps`) wants the centers to move once
  per accumulated batch: use `accumulate_centers` instead.

  Args:
    centers: (num_classes, dim) current centers; donate them to update in
      place.
    features: (batch, dim) features of this (per-device) batch.
    labels: (batch,) integer class ids.
    alpha: the centers' learning rate, Eq. 4, in [0, 1] (the paper uses
      0.5).
    weights: optional (batch,) non-negative weights; 0 marks padding.
    rule: `'paper'`, Eq. 4 above, or `'ema'`, an exponential moving average
      of each class's batch mean, `c_j <- c_j + alpha (mean_j - c_j)`
      (Eq. 4 without its `n_j / (1 + n_j)` damping of rare classes).
    normalize: the cosine form (see `center_loss`): the update uses the
      L2-normalised features and puts the moved centers back on the unit
      sphere.
    axis_name: the mapped axis (or tuple of axes) of the batch, if any.

  Returns:
    The updated centers, same shape and dtype as `centers`.

  Raises:
    ValueError: `alpha` outside [0, 1], an unknown `rule`, negative
      (concrete) weights, no class, or ill-shaped inputs (TypeError for
      non-integer labels).

  Examples:
    With one example per class, Eq. 4 moves each center by
    `alpha / 2` of the way to its feature; class 2 is absent and stays put.

    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> centers = jnp.zeros((3, 2))
    >>> features = jnp.array([[4., 0.], [0., 4.]])
    >>> labels = jnp.array([0, 1])
    >>> print(cl.update_centers(centers, features, labels, alpha=0.5))
    [[1. 0.]
     [0. 1.]
     [0. 0.]]
  """
  check_update_options(alpha, rule)
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_inputs(features, labels, centers, weights)
  centers = jnp.asarray(centers)
  # Each example's own center, read with the same gather as `center_loss`
  # (same labels, so XLA merges the two): the scatter below then depends on
  # the only read of the centers, and XLA can update the donated buffer in
  # place. A second, independent read (say, with the sorted, cast or gathered
  # labels) would have to finish before the scatter, and XLA copies the
  # whole (C, D) centers for it: O(num_classes) per step.
  own = own_centers(centers.astype(jnp.float32), labels)
  sums = _class_sums(features, labels, weights, centers.shape[0],
                     normalize=normalize, axis_name=axis_name, own=own)
  # Scatter only each class's last row, to unique indices.
  new_rows = _moved_centers(sums.own, sums.feature_sums, sums.counts,
                            alpha=alpha, rule=rule, normalize=normalize)
  return centers.at[sums.target].set(new_rows.astype(centers.dtype),
                                     mode='drop', unique_indices=True)


class CenterStatistics(NamedTuple):
  """Per-class sums of a batch for Eq. 4, which add across batches.

  Attributes:
    feature_sums: (num_classes, dim) float32, `S_j = sum_i w_i [y_i = j] x_i`.
    counts: (num_classes,) float32, `n_j = sum_i w_i [y_i = j]`.

  Examples:
    >>> import centerloss_jax as cl
    >>> statistics = cl.CenterStatistics.zeros(num_classes=3, feature_dim=2)
    >>> print(statistics.feature_sums.shape, statistics.counts.shape)
    (3, 2) (3,)
  """
  feature_sums: Array
  counts: Array

  @classmethod
  def zeros(cls, num_classes: int, feature_dim: int) -> 'CenterStatistics':
    """Empty statistics, the start of an accumulation."""
    return cls(jnp.zeros((num_classes, feature_dim), jnp.float32),
               jnp.zeros((num_classes,), jnp.float32))


def center_statistics(features: Array, labels: Array, num_classes: int, *,
                      weights: Optional[Array] = None,
                      normalize: bool = False,
                      axis_name: Optional[str] = None) -> CenterStatistics:
  """The per-class sums and counts of Eq. 4 for one (micro-)batch.

  Eq. 4 reads the batch only through `S_j` and `n_j`, so the update from k
  micro-batches accumulated (`jax.tree.map(jnp.add, ...)`) and applied once
  by `apply_center_statistics` is the update from their concatenation, up to
  the order of the float additions (exact where the sums are). With
  `axis_name` the statistics are of the global batch, identical on every
  replica (the batch is all-gathered, as in `update_centers`; no
  (num_classes, dim) reduction crosses devices). They are dense: memory
  O(num_classes x dim), like the centers.

  Args:
    features: (batch, dim) features.
    labels: (batch,) integer class ids; out-of-range ids are ignored.
    num_classes: the number of centers.
    weights: optional (batch,) non-negative weights; 0 marks padding.
    normalize: sum L2-normalised features (the cosine form).
    axis_name: the mapped axis (or tuple of axes) of the batch, if any.

  Returns:
    The batch's `CenterStatistics`.

  Examples:
    The statistics of two micro-batches add up to those of both together:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> first = cl.center_statistics(jnp.array([[4., 0.]]), jnp.array([0]),
    ...                              num_classes=3)
    >>> second = cl.center_statistics(jnp.array([[0., 4.]]), jnp.array([1]),
    ...                               num_classes=3)
    >>> total = jax.tree.map(jnp.add, first, second)
    >>> print(total.counts)
    [1. 1. 0.]
  """
  features, labels = jnp.asarray(features), jnp.asarray(labels)
  check_rows(features, labels, weights, rows_name='features',
             columns='feature_dim')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  sums = _class_sums(features, labels, weights, num_classes,
                     normalize=normalize, axis_name=axis_name)
  empty = CenterStatistics.zeros(num_classes, features.shape[1])
  return CenterStatistics(
      empty.feature_sums.at[sums.target].set(
          sums.feature_sums, mode='drop', unique_indices=True),
      empty.counts.at[sums.target].set(sums.counts, mode='drop',
                                       unique_indices=True))


def apply_center_statistics(centers: Array, statistics: CenterStatistics, *,
                            alpha: float, rule: str = 'paper',
                            normalize: bool = False) -> Array:
  """Eq. 4 (or its `rule`) from accumulated `center_statistics`, once.

  Classes with count 0 are left bit-for-bit untouched. With the statistics
  of one batch this is `update_centers` on that batch.

  Args:
    centers: (num_classes, dim) centers.
    statistics: the accumulated `CenterStatistics`.
    alpha, rule, normalize: as in `update_centers`.

  Returns:
    The updated centers, same shape and dtype as `centers`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> statistics = cl.center_statistics(
    ...     jnp.array([[4., 0.], [0., 4.]]), jnp.array([0, 1]), num_classes=3)
    >>> print(cl.apply_center_statistics(jnp.zeros((3, 2)), statistics,
    ...                                  alpha=0.5))
    [[1. 0.]
     [0. 1.]
     [0. 0.]]
  """
  check_update_options(alpha, rule)
  centers = jnp.asarray(centers)
  if (statistics.feature_sums.shape != centers.shape
      or statistics.counts.shape != centers.shape[:1]):
    raise ValueError(
        f'statistics of shapes {statistics.feature_sums.shape} and '
        f'{statistics.counts.shape} do not fit centers of shape '
        f'{centers.shape}: expected {centers.shape} and {centers.shape[:1]}.')
  current = centers.astype(jnp.float32)
  moved = _moved_centers(current, statistics.feature_sums, statistics.counts,
                         alpha=alpha, rule=rule, normalize=normalize)
  return jnp.where(statistics.counts[:, None] > 0, moved,
                   current).astype(centers.dtype)


def accumulate_centers(centers: Array, statistics: CenterStatistics,
                       features: Array, labels: Array, *, apply: Any,
                       alpha: float, weights: Optional[Array] = None,
                       rule: str = 'paper', normalize: bool = False,
                       axis_name: Optional[str] = None
                       ) -> tuple[Array, CenterStatistics]:
  """Eq. 4 under gradient accumulation: add this micro-batch, apply on cue.

  Adds the micro-batch's `center_statistics` to `statistics`; where `apply`
  (a bool, traced or not) is true, applies the total to the centers once and
  starts a new accumulation. With `optax.MultiSteps`, pass
  `apply=optax.MultiSteps.has_updated(new_opt_state)`: the centers then
  move exactly when the params do, by Eq. 4 on the whole accumulated batch
  rather than on every micro-batch with its own `1 / (1 + n_j)`.

  Returns:
    (centers, statistics): the centers, moved if `apply`, and the running
    statistics, zero after an apply.

  Examples:
    Two micro-batches, the centers moving once, after the second:

    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> centers = jnp.zeros((3, 2))
    >>> statistics = cl.CenterStatistics.zeros(num_classes=3, feature_dim=2)
    >>> centers, statistics = cl.accumulate_centers(
    ...     centers, statistics, jnp.array([[4., 0.]]), jnp.array([0]),
    ...     apply=False, alpha=0.5)
    >>> print(centers.sum(), statistics.counts)
    0.0 [1. 0. 0.]
    >>> centers, statistics = cl.accumulate_centers(
    ...     centers, statistics, jnp.array([[0., 4.]]), jnp.array([1]),
    ...     apply=True, alpha=0.5)
    >>> print(centers)
    [[1. 0.]
     [0. 1.]
     [0. 0.]]
    >>> print(statistics.counts)
    [0. 0. 0.]
  """
  check_update_options(alpha, rule)
  statistics = jax.tree.map(
      jnp.add, statistics,
      center_statistics(features, labels, jnp.shape(centers)[0],
                        weights=weights, normalize=normalize,
                        axis_name=axis_name))
  moved = apply_center_statistics(centers, statistics, alpha=alpha, rule=rule,
                                  normalize=normalize)
  centers = jnp.where(apply, moved, centers)
  statistics = jax.tree.map(lambda s: jnp.where(apply, 0.0, s), statistics)
  return centers, statistics
