"""Class-sharded centers and classifier, for millions of identities.

With C identities and D-dimensional features, the centers (C, D) and the
softmax classifier's kernel (D, C) grow with C and stop fitting on one device
long before the network does. In the spirit of partial-FC face training, the
functions here split both along the class axis over a `'classes'` mesh axis: of
M class shards, shard k holds classes `[k * C/M, (k + 1) * C/M)`, its centers
rows and its kernel columns. The batch is sharded over the `'batch'` axis and
replicated over `'classes'`, so every class shard sees the same examples.

Exactness. Every function equals its replicated counterpart
(`center.center_loss`, `center.update_centers`,
`softmax.softmax_cross_entropy_loss`, `margin.margin_logits` of
`margin.cosine_scores`, `jnp.argmax`) up to float
reassociation, values and gradients alike:

* `class_sharded_center_loss`: each example's center lives on exactly one
  shard; that shard reads it, the others contribute zeros, and a `psum` over
  the class axis hands every shard the exact row (x + 0 = x). The distance is
  then computed locally, so its gradient to the features is local too.
* `class_sharded_update_centers`: Eq. 4 is per class, so each shard applies
  `center.update_centers` to its own classes from the global batch (labels of
  other shards are passed as -1 and ignored). The in-place scatter of
  `center.update_centers` is kept: with donated centers nothing shard-sized is
  copied.
* `class_sharded_logits` and `class_sharded_softmax_cross_entropy_loss`: each device
  computes the logits of the global batch (features all-gathered over the
  batch axis) for its classes; the log-sum-exp is a `pmax` of row maxima and
  a `psum` of per-shard sums of exponentials, and the target logit is picked
  on its owner shard and `psum`-ed.
* `class_sharded_margin_logits` (SphereFace, CosFace, ArcFace, partial-FC
  style): the cosines are per (row, column), and the margins elementwise
  with the target found by column index, so each shard applies
  `margin.margin_logits` to its own columns with the labels shifted into
  them; the cross-entropy is then the one above.

Communication per step, independent of C: the all-gather of the batch over
the batch axis (features for the logits and for `update_centers`, labels,
weights: O(global_batch x D)), `(batch, D)` psums over the class axis of the
own centers and, backward, of the features' cotangent, and `(global_batch,)`
reductions for the logits. Never the centers, the kernel, its gradient, or a
`batch x C` array: the kernel's gradient needs no reduction because every
batch replica computes it from the whole global batch (see `class_sharded_logits`).

A step (per device, inside the shard_map; `w` the weights with invalid labels
zeroed, `y_all` and `w_all` the labels and `w` all-gathered over 'batch', `W`
the sum of `w_all`)::

    features = trunk(params, x)
    logits = class_sharded_logits(features, kernel, class_axis='classes',
                                  batch_axis='batch')
    ce = class_sharded_softmax_cross_entropy_loss(logits, y_all,
                                                  reduction='none', ...)
    distances = class_sharded_center_loss(features, y, centers, w,
                                          reduction='none', ...)
    loss = (sum(w_all * ce) + lam * sum(distances)) / W
    # grad: psum the trunk's gradient over 'batch', not the kernel's.
    centers = class_sharded_update_centers(
        centers, features, y, alpha=alpha, weights=w, class_axis='classes',
        batch_axis='batch')

Mapping. The functions are per device and meant for
`jax.shard_map(..., check_vma=False)`, like the trainer (see
`training/parallel.py`). With `check_vma=False`, JAX transposes a `psum`
into another
`psum`: the gradient of a value that every class shard computes redundantly
would come back M times too large, and the features, replicated over the
class axis but multiplied by a kernel shard, would get only this shard's part
of their gradient. Two small `custom_vjp`s fix the gradients explicitly, as in
Megatron-style tensor parallelism: `_reduce_from_shards` (psum forward,
identity backward) and `_copy_to_shards` (all-gather forward, own rows and a
psum backward). The center-loss terms need neither: their collectives act on
the centers, which carry no gradient.

Examples:
  The center loss with 4 centers split over 2 devices (2 classes each) equals
  the replicated `center_loss` (on a CPU, get several devices with
  `XLA_FLAGS=--xla_force_host_platform_device_count=8`):

  >>> import functools
  >>> import jax
  >>> import jax.numpy as jnp
  >>> from jax.sharding import PartitionSpec as P
  >>> from centerloss_jax.losses import center_loss
  >>> from centerloss_jax.losses import class_sharded
  >>> mesh = jax.make_mesh((2,), ('classes',), devices=jax.devices()[:2])
  >>> @functools.partial(jax.shard_map, mesh=mesh,
  ...                    in_specs=(P(), P(), P('classes')), out_specs=P(),
  ...                    check_vma=False)
  ... def sharded_center_loss(features, labels, centers_shard):
  ...   return class_sharded.class_sharded_center_loss(
  ...       features, labels, centers_shard, class_axis='classes')
  >>> features = jnp.array([[4., 0.], [0., 4.], [2., 2.]])
  >>> labels = jnp.array([0, 3, 1])
  >>> centers = jnp.arange(8.).reshape(4, 2)
  >>> print(center_loss(features, labels, centers))
  10.5
  >>> centers_sharded = jax.device_put(centers,
  ...                                  jax.NamedSharding(mesh, P('classes')))
  >>> print(sharded_center_loss(features, labels, centers_sharded))
  10.5
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses import center
from centerloss_jax.losses import common
from centerloss_jax.losses import diagnostics
from centerloss_jax.losses import margin

Array = jax.Array


def class_shard_offset(num_local_classes: int, class_axis: str) -> Array:
  """The first global class id of this device's shard of the classes.

  Shard k of the class axis holds classes
  `[k * num_local_classes, (k + 1) * num_local_classes)`, the layout of an
  array sharded `P('classes', ...)` (centers) or `P(..., 'classes')` (kernel).

  Args:
    num_local_classes: the number of classes per shard, C / M.
    class_axis: the name of the mesh axis the classes are sharded over.

  Returns:
    An int32 scalar, `axis_index(class_axis) * num_local_classes`.
  """
  return jax.lax.axis_index(class_axis).astype(jnp.int32) * num_local_classes


def _valid_global_labels(labels: Array, num_local_classes: int,
                         class_axis: str) -> Array:
  """True where `0 <= label < C`, C the number of classes of all shards.

  The labels are widened to int32 first: `common.valid_label_mask` compares in
  the labels' dtype, where C (say 300) wraps for uint8 labels (to 44).
  """
  labels = jnp.asarray(labels)
  wide = jax.dtypes.canonicalize_dtype(
      jnp.promote_types(labels.dtype, jnp.int32))
  return common.valid_label_mask(
      labels.astype(wide), num_local_classes * jax.lax.axis_size(class_axis))


def _local_labels(labels: Array, num_local_classes: int,
                  class_axis: str) -> tuple[Array, Array]:
  """(in_shard, local_labels): labels of this shard shifted to [0, C/M).

  Labels of other shards, and out-of-range labels, become -1, which
  `center.update_centers` ignores. The comparisons are made in the labels'
  dtype promoted with int32 (the offset's) before the int32 cast, so no label
  wraps into the shard.
  """
  labels = jnp.asarray(labels)
  offset = class_shard_offset(num_local_classes, class_axis)
  in_shard = (labels >= offset) & (labels < offset + num_local_classes)
  local = jnp.where(in_shard, labels - offset, -1).astype(jnp.int32)
  return in_shard, local


def _check_logits(logits_shard, labels, weights=None) -> None:
  """Raises ValueError/TypeError (at trace time) for ill-shaped logits."""
  common.check_rows(logits_shard, labels, weights, rows_name='logits_shard',
                    columns='num_local_classes')


def _check_features_and_kernel(features, kernel_shard) -> None:
  """Raises ValueError (at trace time) unless (batch, D) and (D, C / M)."""
  if (jnp.ndim(features) != 2 or jnp.ndim(kernel_shard) != 2
      or jnp.shape(kernel_shard)[0] != jnp.shape(features)[1]):
    raise ValueError(
        'features must have shape (batch, D) and kernel_shard (D, C / M), got '
        f'shapes {jnp.shape(features)} and {jnp.shape(kernel_shard)}.')


def _global_weights(labels: Array, weights: Optional[Array],
                    num_local_classes: int, class_axis: str) -> Array:
  """float32 weights (1 by default), 0 where the global label is invalid."""
  valid = _valid_global_labels(labels, num_local_classes, class_axis)
  if weights is None:
    return valid.astype(jnp.float32)
  return jnp.where(valid, jnp.asarray(weights, jnp.float32), 0.0)


# ---------------------------------------------------------------------------
# Collectives with the gradients of tensor parallelism (check_vma=False).
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _reduce_from_shards(x: Array, axis_name: str) -> Array:
  """`psum` over `axis_name` whose gradient is the identity.

  The sum is used identically by every shard, so the cotangent each shard
  receives is already the full cotangent of its own summand.
  """
  return jax.lax.psum(x, axis_name)


def _reduce_from_shards_fwd(x, axis_name):
  return jax.lax.psum(x, axis_name), None


def _reduce_from_shards_bwd(axis_name, _, cotangent):
  del axis_name
  return (cotangent,)


_reduce_from_shards.defvjp(_reduce_from_shards_fwd, _reduce_from_shards_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _copy_to_shards(x: Array, class_axis: str,
                    batch_axis: Optional[str]) -> Array:
  """`x`, all-gathered over `batch_axis` if given; the gradient is summed.

  For per-example values (the features) replicated over `class_axis` that
  every class shard multiplies by its own part of the model, after gathering
  the global batch: the full gradient of this device's rows is the sum over
  the class shards of their parts, and every batch replica holds the same
  cotangent for the whole global batch (it computes the same global loss),
  so the backward pass keeps this replica's rows and `psum`s them over
  `class_axis`, O(batch x D).
  """
  del class_axis
  if batch_axis is None:
    return x
  return jax.lax.all_gather(x, batch_axis, axis=0, tiled=True)


def _copy_to_shards_fwd(x, class_axis, batch_axis):
  del class_axis
  if batch_axis is not None:
    x = jax.lax.all_gather(x, batch_axis, axis=0, tiled=True)
  return x, None


def _copy_to_shards_bwd(class_axis, batch_axis, _, cotangent):
  if batch_axis is not None:
    rows = cotangent.shape[0] // jax.lax.axis_size(batch_axis)
    cotangent = jax.lax.dynamic_slice_in_dim(
        cotangent, jax.lax.axis_index(batch_axis) * rows, rows, axis=0)
  return (jax.lax.psum(cotangent, class_axis),)


_copy_to_shards.defvjp(_copy_to_shards_fwd, _copy_to_shards_bwd)


# ---------------------------------------------------------------------------
# Center loss and Eq. 4.
# ---------------------------------------------------------------------------


def _own_centers(centers_shard: Array, labels: Array,
                 class_axis: str) -> Array:
  """Each example's own center, float32 (batch, D), exact on every shard.

  The owner shard gathers the row, the others contribute zeros; the `psum`
  moves (batch, D) values, whatever C is. The gather is the very one
  `center.update_centers` makes with the same local labels, so XLA merges the
  two reads and the update's scatter can still run in place.
  """
  num_local = centers_shard.shape[0]
  in_shard, local = _local_labels(labels, num_local, class_axis)
  own = center.own_centers(
      jax.lax.stop_gradient(jnp.asarray(centers_shard)).astype(jnp.float32),
      local)
  return jax.lax.psum(jnp.where(in_shard[:, None], own, 0.0), class_axis)


def class_sharded_center_loss(features: Array, labels: Array,
                              centers_shard: Array,
                              weights: Optional[Array] = None, *,
                              class_axis: str, normalize: bool = False,
                              reduction: str = 'mean') -> Array:
  """The center loss (Eq. 2) of this device's batch, with sharded centers.

  Equal to `center.center_loss(features, labels, centers, weights, ...)`
  with the full centers `centers = concat(centers_shard over class_axis)`,
  on every class shard. Centers get no gradient; the gradient to the
  features is Eq. 3, complete on every class shard (no further reduction
  over `class_axis` is needed or allowed). Out-of-range labels (outside
  `[0, C)` with `C = num_local_classes * axis_size(class_axis)`) and
  weight-0 rows contribute exactly 0.

  Communication: one `psum` over `class_axis` of the (batch, D) own centers
  in the forward pass, nothing in the backward pass.

  Args:
    features: (batch, D) floating point features of this device's examples,
      identical across `class_axis`.
    labels: (batch,) integer global class ids, identical across `class_axis`.
    centers_shard: (C / M, D) this device's rows of the centers.
    weights: optional (batch,) non-negative example weights (0 for padding).
    class_axis: the mesh axis the classes are sharded over.
    normalize: the cosine form, as in `center.center_loss`.
    reduction: `'mean'` (over this device's examples), `'sum'`, or `'none'`
      for the (batch,) weighted terms.

  Returns:
    A float32 scalar, or (batch,) for `'none'`; identical on every class
    shard.
  """
  common.check_reduction(reduction)
  center.check_inputs(features, labels, centers_shard, weights)
  own = _own_centers(centers_shard, labels, class_axis)
  return center.center_loss(
      features, _own_rows(labels, centers_shard.shape[0], class_axis), own,
      weights, normalize=normalize, reduction=reduction)


def _own_rows(labels: Array, num_local_classes: int,
              class_axis: str) -> Array:
  """Row i for example i, -1 for globally invalid labels.

  Indexes `_own_centers`' result as labels index the centers, so the
  replicated functions mask exactly the examples they mask themselves.
  """
  batch = jnp.shape(labels)[0]
  return jnp.where(
      _valid_global_labels(labels, num_local_classes, class_axis),
      jnp.arange(batch, dtype=jnp.int32), -1)


def class_sharded_center_diagnostics(features: Array, labels: Array,
                                     centers_shard: Array,
                                     new_centers_shard: Array,
                                     weights: Optional[Array] = None, *,
                                     class_axis: str,
                                     reduction: str = 'mean'
                                     ) -> dict[str, Array]:
  """`diagnostics.center_diagnostics` with sharded centers.

  Communication: two (batch, D) `psum`s over `class_axis` (the own centers
  before and after the update).
  """
  center.check_inputs(features, labels, centers_shard, weights)
  return diagnostics.diagnostics_from_own_centers(
      features, _own_centers(centers_shard, labels, class_axis),
      _own_centers(new_centers_shard, labels, class_axis),
      _global_weights(labels, weights, centers_shard.shape[0], class_axis),
      reduction=reduction)


def class_sharded_update_centers(centers_shard: Array, features: Array,
                                 labels: Array, *, alpha: float,
                                 weights: Optional[Array] = None,
                                 rule: str = 'paper', normalize: bool = False,
                                 class_axis: str,
                                 batch_axis: Optional[str] = None) -> Array:
  """Eq. 4 on this device's classes, from the global batch.

  Equal to this shard's rows of `center.update_centers(centers, features,
  labels, ...)` on the full centers and the global batch. Labels of other
  shards (and out-of-range labels) move nothing here; classes of this shard
  absent from the global batch are left bit-for-bit untouched. Features get
  `stop_gradient`.

  Communication: with `batch_axis`, the all-gather of the batch (features,
  labels, weights, own centers) over it, O(global_batch x D); nothing over
  `class_axis`. Donate the centers to the compiled step to update them in
  place.

  Args:
    centers_shard: (C / M, D) this device's rows of the centers.
    features: (batch, D) features of this device's examples, identical across
      `class_axis`.
    labels: (batch,) integer global class ids.
    alpha: the centers' learning rate, Eq. 4.
    weights: optional (batch,) non-negative weights; 0 marks padding.
    rule, normalize: as in `center.update_centers`.
    class_axis: the mesh axis the classes are sharded over.
    batch_axis: the mesh axis (or tuple of axes) the batch is sharded over,
      if any.

  Returns:
    The updated (C / M, D) shard, same dtype as `centers_shard`.
  """
  center.check_inputs(
      features, labels, centers_shard, weights)
  _, local = _local_labels(labels, centers_shard.shape[0], class_axis)
  return center.update_centers(centers_shard, features, local, alpha=alpha,
                               weights=weights, rule=rule,
                               normalize=normalize, axis_name=batch_axis)


# ---------------------------------------------------------------------------
# Softmax classifier.
# ---------------------------------------------------------------------------


def class_sharded_logits(features: Array, kernel_shard: Array, *,
                         class_axis: str,
                         batch_axis: Optional[str] = None) -> Array:
  """This shard's columns of the logits of the (global) batch.

  `features @ kernel_shard`, after all-gathering the features over
  `batch_axis` if given: then every device computes the logits of the whole
  global batch for its classes, so the kernel's gradient is complete on every
  device, and identical on its replicas along `batch_axis`. Do not reduce the
  kernel's gradient over `batch_axis` (that would double it and move
  O(C x D) per step, the traffic this module avoids); reduce the rest of the
  model's gradient over it as usual. The price is compute: the batch
  replicas of a class shard compute the same logits.

  The features' gradient is complete and identical on every class shard:
  each class shard holds only its classes' part of it, so the backward pass
  keeps this device's rows (every batch replica computes the same global
  loss, so holds the same cotangent) and `psum`s them over `class_axis`. A
  bare matmul would leave each class shard with its own part only (and
  `psum`'s own transpose, with `check_vma=False`, would be wrong).

  Communication: the all-gather of the (batch, D) features over `batch_axis`
  forward, a (batch, D) `psum` over `class_axis` backward.

  Args:
    features: (batch, D) features of this device's examples, identical across
      `class_axis`.
    kernel_shard: (D, C / M) this device's columns of the classifier kernel
      (no bias, as in the paper's classifier).
    class_axis: the mesh axis the classes are sharded over.
    batch_axis: the mesh axis (or tuple of axes) the batch is sharded over,
      if any. Pair the returned logits with labels (and weights) all-gathered
      over it too.

  Returns:
    (global_batch, C / M) logits of this shard's classes: the examples of all
    `batch_axis` replicas in order, or (batch, C / M) without `batch_axis`.
  """
  _check_features_and_kernel(features, kernel_shard)
  return _copy_to_shards(features, class_axis, batch_axis) @ kernel_shard


def class_sharded_margin_logits(kind: str, features: Array,
                                kernel_shard: Array, labels: Array, *,
                                class_axis: str,
                                batch_axis: Optional[str] = None,
                                epsilon: float = common.EPSILON,
                                **hparams) -> tuple[Array, Array]:
  """This shard's columns of a margin softmax's cosines and logits.

  The class-sharded form of a cosine classifier (`margin.cosine_scores`)
  followed by `margin.margin_logits(kind, ...)`, for the global batch, as
  `class_sharded_logits` is of the linear classifier: the features are
  all-gathered over `batch_axis` and every device scores them against its
  classes. The margin functions are elementwise, with the target column
  found by comparing the label with the column index; here the labels are
  shifted into this shard's columns first, and a label of another shard (or
  an invalid one) selects no column, so each shard adds the margin exactly
  where the replicated computation would. SphereFace's feature norm is taken
  of the gathered features, on every shard. Feed the logits to
  `class_sharded_softmax_cross_entropy_loss` with the same labels.

  Gradients: the kernel's is this shard's, complete (do not reduce it over
  `batch_axis`); the features' is summed over the class shards, as in
  `class_sharded_logits`.

  Communication: the all-gather of the (batch, D) features over `batch_axis`
  forward, a (batch, D) `psum` over `class_axis` backward; nothing of size C.

  Args:
    kind: 'sphereface', 'cosface' or 'arcface' (`margin.MARGIN_KINDS`).
    features: (batch, D) features of this device's examples, identical across
      `class_axis`.
    kernel_shard: (D, C / M) this device's columns of the cosine
      classifier's kernel.
    labels: (global_batch,) integer global class ids of the gathered batch
      (all-gathered over `batch_axis` like the features), identical across
      `class_axis`.
    class_axis: the mesh axis the classes are sharded over.
    batch_axis: the mesh axis the batch is sharded over, if any.
    epsilon: the normalisation floor of `margin.cosine_scores`.
    **hparams: the margin's keyword arguments (`margin.margin_logits`).

  Returns:
    (cosines, logits), both (global_batch, C / M) float32: the cosines are
    the scores to take the argmax of (no margin at test time), the logits
    the training logits.

  Raises:
    ValueError: for ill-shaped inputs, an unknown kind or bad
      hyper-parameters.
  """
  _check_features_and_kernel(features, kernel_shard)
  gathered = _copy_to_shards(features, class_axis, batch_axis)
  cosines = margin.cosine_scores(gathered, kernel_shard, epsilon=epsilon)
  _, local = _local_labels(labels, kernel_shard.shape[1], class_axis)
  return cosines, margin.margin_logits(kind, cosines, local, gathered,
                                       **hparams)


def class_sharded_softmax_cross_entropy_loss(
    logits_shard: Array, labels: Array, weights: Optional[Array] = None, *,
    class_axis: str, reduction: str = 'mean') -> Array:
  """Softmax cross-entropy from class-sharded logits.

  Equal to `softmax.softmax_cross_entropy_loss(logits, labels, weights,
  reduction=...)` on the full logits `concat(logits_shard over class_axis,
  axis=1)`, per example
  `optax.softmax_cross_entropy_with_integer_labels(logits, labels)`:
  `log sum_j exp(l_j - m) - (l_y - m)` with `m` the global row maximum (a
  `pmax`), the sum of exponentials a `psum`, and the target logit picked on
  its owner shard and `psum`-ed. Computed in float32. Out-of-range labels
  (outside `[0, C)`) and weight-0 rows give 0 and no gradient, and leave
  the normaliser of `'mean'`, like the masking of `common`.

  The gradient to `logits_shard` is this shard's part of
  `softmax(logits) - onehot(label)`, on every shard; get the logits from
  `class_sharded_logits` so the features' gradient is summed over the shards.

  Communication: (batch,) reductions over `class_axis` only.

  Args:
    logits_shard: (batch, C / M) logits of this shard's classes.
    labels: (batch,) integer global class ids, identical across `class_axis`.
    weights: optional (batch,) non-negative example weights.
    class_axis: the mesh axis the classes are sharded over.
    reduction: `'mean'`, `'sum'` or `'none'` for the (batch,) weighted
      terms.

  Returns:
    A float32 scalar, or (batch,) for `'none'`; identical on every class
    shard.
  """
  common.check_reduction(reduction)
  _check_logits(logits_shard, labels, weights)
  num_local = logits_shard.shape[1]
  logits = jnp.asarray(logits_shard).astype(jnp.float32)
  # The maximum only stabilises the exponentials; the result does not depend
  # on it, so it carries no gradient (and `pmax` needs none).
  row_max = jax.lax.pmax(
      jnp.max(jax.lax.stop_gradient(logits), axis=-1), class_axis)
  shifted = logits - row_max[:, None]
  in_shard, local = _local_labels(labels, num_local, class_axis)
  picked = jnp.take_along_axis(
      shifted, jnp.maximum(local, 0)[:, None], axis=-1)[:, 0]
  # One all-reduce of (batch, 2): the sum of exponentials and the target.
  sum_exp, target = _reduce_from_shards(
      jnp.stack([jnp.sum(jnp.exp(shifted), axis=-1),
                 jnp.where(in_shard, picked, 0.0)], axis=-1),
      class_axis).T
  weights = _global_weights(labels, weights, num_local, class_axis)
  per_example = jnp.where(weights > 0, weights * (jnp.log(sum_exp) - target),
                          0.0)
  return common.reduce_loss(per_example, jnp.sum(weights), reduction)


def class_sharded_argmax_accuracy(logits_shard: Array, labels: Array, *,
                                  class_axis: str) -> Array:
  """Per-example `argmax(logits) == label` from class-sharded logits.

  The global argmax breaks ties toward the lowest class id, and a NaN counts
  as the maximum, exactly like `jnp.argmax` on the full logits. Out-of-range
  labels are never correct.

  Communication: three (batch,) reductions over `class_axis`.

  Args:
    logits_shard: (batch, C / M) logits of this shard's classes.
    labels: (batch,) integer global class ids, identical across `class_axis`.
    class_axis: the mesh axis the classes are sharded over.

  Returns:
    (batch,) bool, identical on every class shard.
  """
  _check_logits(logits_shard, labels)
  num_local = logits_shard.shape[1]
  logits = jax.lax.stop_gradient(jnp.asarray(logits_shard))
  local_index = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  local_max = jnp.take_along_axis(logits, local_index[:, None], axis=-1)[:, 0]
  local_nan = jnp.isnan(local_max)
  any_nan = jax.lax.pmax(local_nan.astype(jnp.int32), class_axis) > 0
  global_max = jax.lax.pmax(jnp.where(local_nan, -jnp.inf, local_max),
                            class_axis)
  holds_max = jnp.where(any_nan, local_nan, local_max == global_max)
  candidate = jnp.where(
      holds_max, class_shard_offset(num_local, class_axis) + local_index,
      jnp.iinfo(jnp.int32).max)
  prediction = jax.lax.pmin(candidate, class_axis)
  return prediction == jnp.asarray(labels)
