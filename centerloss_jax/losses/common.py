"""What every loss here shares: validation, label masking, weights, epsilon.

Conventions of all losses in this package: float32 arithmetic whatever the
inputs' dtype, example weights with 0 for padding, and labels outside
`[0, num_classes)` masked out (never clipped or wrapped onto another class:
`clip` or `take`-style wrap-around would silently pull the feature toward,
and move, another class's center).

Reductions. Every loss is one function, `<name>_loss(..., reduction='mean')`,
as in pytorch-metric-learning and `torch.nn`: `'mean'` is the weighted mean
over what the loss counts (examples; pairs for the contrastive loss, anchors
that take part for the triplet loss), `'sum'` the weighted sum, and `'none'`
the (batch,) per-example terms with their weights applied, for trainers that
normalise over a global batch themselves (sum them, divide by the global
normaliser).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Divides a zero sum by this rather than by a zero weight (or count), so that
# an all-padding batch has loss 0 (and gradient 0) instead of NaN; also the
# floor of squared norms and distances whose square root is differentiated.
EPSILON = 1e-12

REDUCTIONS = ('mean', 'sum', 'none')


def check_labels(labels, rows, rows_name: str) -> None:
  """Raises unless `labels` are integers, one per row of `rows` (2-D)."""
  batch = jnp.shape(rows)[0]
  if jnp.shape(labels) != (batch,):
    raise ValueError(
        f'labels must have shape (batch,) = ({batch},) to match {rows_name} '
        f'of shape {jnp.shape(rows)}, got shape {jnp.shape(labels)}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(
        f'labels must be integers, got dtype {jnp.result_type(labels)}.')


def check_rows(rows, labels, weights=None, *, rows_name: str, columns: str,
               weights_name: str = 'weights') -> None:
  """Raises unless `rows` is (batch, columns) floating point, with one
  integer label and (when given) one weight per row.

  The one shape check of every loss here (at trace time).

  Args:
    rows: the per-example arrays: features, logits or cosines.
    labels: should be (batch,) integers.
    weights: should be None or (batch,).
    rows_name: `rows`' argument name, for the messages.
    columns: what the second dimension is, e.g. 'num_classes'.
    weights_name: `weights`' argument name, for the messages.
  """
  if jnp.ndim(rows) != 2:
    raise ValueError(
        f'{rows_name} must have shape (batch, {columns}), got shape '
        f'{jnp.shape(rows)}.')
  if not jnp.issubdtype(jnp.result_type(rows), jnp.floating):
    raise TypeError(
        f'{rows_name} must be floating point, got dtype '
        f'{jnp.result_type(rows)}.')
  check_labels(labels, rows, rows_name)
  batch = jnp.shape(rows)[0]
  if weights is not None and jnp.shape(weights) != (batch,):
    raise ValueError(
        f'{weights_name} must have shape (batch,) = ({batch},) to match '
        f'{rows_name} of shape {jnp.shape(rows)}, got shape '
        f'{jnp.shape(weights)}.')
  values = concrete(weights)
  if values is not None and np.any(values < 0):
    index = int(np.argmin(values))
    raise ValueError(
        f'{weights_name} must be non-negative (0 marks padding), got '
        f'{values[index]} at index {index}.')


def concrete(x: Any) -> Optional[np.ndarray]:
  """`x` as a numpy array when its value is known now, else None.

  None for None and for traced values (inside `jit`, `grad` of `x`,
  `pmap`, ...): checks of values run eagerly, never at a cost under `jit`.
  """
  if x is None or isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def check_alpha(alpha: Any) -> None:
  """Raises unless a concrete Eq. 4 rate `alpha` is in [0, 1].

  Above 1 a center overshoots its class mean and the centers diverge; below
  0 they move away from it.
  """
  value = concrete(alpha)
  if value is not None and not (value.ndim == 0 and 0 <= value <= 1):
    raise ValueError(
        f'alpha (the centers\' rate of Eq. 4) must be a number in [0, 1] '
        f'(the paper uses 0.5), got {alpha!r}.')


def check_labels_in_range(labels: Any, num_classes: int) -> None:
  """Raises if a concrete label lies outside `[0, num_classes)`.

  The losses mask such labels out, which is right under `jit` (and counted
  by `invalid_label_count`); eagerly, opt in to this check to catch, e.g.,
  1-indexed labels whose last class would silently vanish. Traced labels
  are not checked.

  Raises:
    ValueError: naming how many labels are out of range, the first one and
      its index.
  """
  values = concrete(labels)
  if values is None:
    return
  bad = (values < 0) | (values >= num_classes)
  if bad.any():
    index = int(np.argmax(bad))
    raise ValueError(
        f'{int(bad.sum())} of {bad.size} labels are outside [0, '
        f'{num_classes}): the first is {values[index]} at index {index} '
        '(1-indexed labels? the wrong num_classes?).')


def check_reduction(reduction: str) -> None:
  """Raises unless `reduction` is one of `REDUCTIONS`."""
  if reduction not in REDUCTIONS:
    raise ValueError(
        f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')


def reduce_loss(per_example: Array, normalizer: Array,
                reduction: str) -> Array:
  """Applies `reduction` to weighted per-example terms.

  Args:
    per_example: (batch,) float32 terms, weights already applied.
    normalizer: what `'mean'` divides the sum by (the sum of the weights, the
      number of pairs, ...); a zero normaliser gives 0, not NaN.
    reduction: one of `REDUCTIONS`.
  """
  check_reduction(reduction)
  if reduction == 'none':
    return per_example
  total = jnp.sum(per_example)
  if reduction == 'sum':
    return total
  return total / jnp.maximum(normalizer, EPSILON)


def valid_label_mask(labels: Array, num_classes: int) -> Array:
  """True where `0 <= label < num_classes`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> print(cl.valid_label_mask(jnp.array([-1, 0, 2, 3]), num_classes=3))
    [False  True  True False]
  """
  # Compare in (at least) int32: in uint8, num_classes = 300 would wrap to 44.
  labels = jnp.asarray(labels)
  labels = labels.astype(jnp.promote_types(labels.dtype, jnp.int32))
  return (labels >= 0) & (labels < num_classes)


def invalid_label_count(labels: Array, num_classes: int,
                        weights: Optional[Array] = None, *,
                        axis_name: Optional[str] = None) -> Array:
  """Number of examples (with non-zero weight) whose label is out of range.

  With `axis_name` (under `pmap`/`shard_map`), that of the global batch.

  Examples:
    >>> import jax.numpy as jnp
    >>> import centerloss_jax as cl
    >>> labels = jnp.array([-1, 0, 2, 3])
    >>> print(cl.invalid_label_count(labels, num_classes=3))
    2
    >>> print(cl.invalid_label_count(labels, 3, jnp.array([1., 1., 1., 0.])))
    1
  """
  invalid = ~valid_label_mask(labels, num_classes)
  if weights is not None:
    invalid &= weights != 0
  count = jnp.sum(invalid, dtype=jnp.int32)
  return count if axis_name is None else jax.lax.psum(count, axis_name)



def effective_weights(labels: Array, num_classes: int,
                      weights: Optional[Array] = None) -> Array:
  """float32 example weights (1 by default) with out-of-range labels zeroed."""
  valid = valid_label_mask(labels, num_classes)
  if weights is None:
    return valid.astype(jnp.float32)
  return jnp.where(valid, jnp.asarray(weights, jnp.float32), 0.0)


def explicit_mesh(x) -> Optional[jax.sharding.AbstractMesh]:
  """The mesh `x` is sharded over in JAX's explicit-sharding mode, if any.

  On such meshes (the default of `jax.make_mesh`) JAX asks for the output
  sharding of a gather, refuses to sort along a sharded axis, and forbids a
  (b, B) matrix sharded on both axes.
  """
  mesh = getattr(getattr(jax.typeof(x), 'sharding', None), 'mesh', None)
  if (mesh is None or mesh.empty
      or jax.sharding.AxisType.Explicit not in mesh.axis_types):
    return None
  return mesh


def replicate_explicit(x: Array) -> Array:
  """Gathers an explicitly sharded batch array onto every device.

  Under plain `jit` on an explicit-sharding mesh this is the all-gather that
  a `shard_map` step does by hand; elsewhere `x` is returned as is.
  """
  mesh = explicit_mesh(x)
  if mesh is None:
    return x
  return jax.sharding.reshard(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def l2_normalize(x: jax.Array, axis: int = -1,
                 epsilon: float = EPSILON) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis`; a zero vector stays zero.

  The squared norm is floored at `epsilon**2` rather than adding `epsilon` to
  the norm: vectors of ordinary size come out exactly unit length (so cosines
  stay within [-1, 1]), and neither the value nor the gradient is NaN at zero
  (the gradient of `sqrt` is infinite there, that of the sum of squares is 0).

  Args:
    x: the array to normalise.
    axis: the axis holding the vectors.
    epsilon: norms below this are treated as `epsilon`.

  Returns:
    `x / max(||x||, epsilon)`, same shape and dtype as `x`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import l2_normalize
    >>> unit = l2_normalize(jnp.array([[3., 4.], [0., 0.]]))
    >>> print(bool(jnp.allclose(unit, jnp.array([[0.6, 0.8], [0., 0.]]))))
    True
  """
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, epsilon**2))

