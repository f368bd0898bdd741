"""The margin-based softmax family: SphereFace, CosFace and ArcFace logits.

These losses replaced center loss in practice. All three start from a
normalised classifier: the model returns `cosine[i, j] = cos(theta_ij)`, the
cosine between the L2-normalised feature `x_i` and the L2-normalised weight of
class `j`, and a margin is applied to the target class only before the usual
softmax cross-entropy (`centerloss_jax.losses.softmax_cross_entropy`):

  method                       target logit              other logits
  SphereFace (Liu et al. 2017)  ||x|| psi(theta)          ||x|| cos(theta)
  CosFace (Wang et al. 2018)    s (cos(theta) - m)        s cos(theta)
  ArcFace (Deng et al. 2019)    s cos(theta + m)          s cos(theta)

Every function here is elementwise over the (batch, num_classes) matrix: no
gather, so a classifier sharded over classes needs no communication, and the
cost is negligible next to the matmul that produced the cosines. Arithmetic is
float32 whatever the cosines' dtype.

Invalid labels (outside `[0, num_classes)`) select no target: their row is the
plain (scaled) cosine. The cross-entropy masks them anyway.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses import common
from centerloss_jax.losses import softmax

Array = jax.Array

MARGIN_KINDS = ('sphereface', 'cosface', 'arcface')

# Floor of sin^2(theta) in ArcFace: the derivative of sin(theta) =
# sqrt(1 - cos^2) is infinite at cos = +-1. Just under one float32 step of
# 1 - cos^2 near cos = 1, so it changes nothing but exact +-1.
_SIN_SQUARED_FLOOR = 1e-7

# Floor of ||x||^2 for the feature norm: its gradient is x / ||x||, undefined
# at x = 0.
_NORM_SQUARED_FLOOR = common.EPSILON


def _check_non_negative(name: str, value: Any) -> None:
  """Raises if a concrete hyper-parameter is negative (traced ones pass)."""
  if isinstance(value, (int, float)) and value < 0:
    raise ValueError(f'{name} must be >= 0, got {value}.')


def cosine_scores(features: Array, kernel: Array, *,
                  epsilon: float = common.EPSILON) -> Array:
  """(batch, C) float32 cosines between features and the kernel's columns.

  What a normalised classifier feeds the margin losses: the L2-normalised
  features times the L2-normalised class weights (columns of the
  (D, C) kernel), clipped to [-1, 1], since rounding can leave `|cos|` a few
  ulps above 1 and arccos is NaN there. Float32 whatever the inputs' dtype:
  cosines near 1 are where the angular margins act, and bfloat16's 8-bit
  mantissa would quantise the angle there coarsely (cos 0.5 degrees =
  0.99996 rounds to 1). Each cosine reads one feature row and one kernel
  column, so a kernel split by columns (`class_sharded`) needs nothing else.

  Args:
    features: (batch, D) features.
    kernel: (D, C) class weights, one column per class.
    epsilon: norms below this are treated as `epsilon` (a zero feature gives
      cosines of 0, not NaN).

  Returns:
    The (batch, C) float32 cosines, in [-1, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import margin
    >>> features = jnp.array([[3., 4.], [0., 0.]])
    >>> kernel = jnp.array([[2., 0., 1.], [0., 2., 0.]])
    >>> scores = margin.cosine_scores(features, kernel)
    >>> print(bool(jnp.allclose(scores, jnp.array([[0.6, 0.8, 0.6],
    ...                                            [0., 0., 0.]]))))
    True
  """
  unit_features = common.l2_normalize(features.astype(jnp.float32),
                                      epsilon=epsilon)
  unit_kernel = common.l2_normalize(kernel.astype(jnp.float32), axis=0,
                                    epsilon=epsilon)
  cosines = jnp.dot(unit_features, unit_kernel,
                    precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(cosines, -1.0, 1.0)


def target_mask(labels: Array, num_classes: int) -> Array:
  """(batch, num_classes) bool, True at each valid label's column only.

  A comparison with `arange`, not `jax.nn.one_hot` of clipped labels: an
  out-of-range label must match no column.
  """
  labels = jnp.asarray(labels)
  labels = labels.astype(jnp.promote_types(labels.dtype, jnp.int32))
  valid = common.valid_label_mask(labels, num_classes)
  columns = jnp.arange(num_classes, dtype=labels.dtype)
  return valid[:, None] & (labels[:, None] == columns[None, :])


def cosface_logits(cosine: Array, labels: Array, *, scale: float = 64.0,
                   margin: float = 0.35) -> Array:
  """CosFace / AM-Softmax logits: `s (cos - m)` at the label, `s cos` else.

  Args:
    cosine: (batch, num_classes) cosines from a normalised classifier.
    labels: (batch,) integer class ids.
    scale: `s`, the fixed feature norm (64 in the paper).
    margin: `m`, the additive cosine margin (0.35 in the paper).

  Returns:
    (batch, num_classes) float32 logits.

  Raises:
    ValueError: for ill-shaped inputs or a negative scale or margin.

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import cosface_logits
    >>> cosine = jnp.array([[0.5, 0.25]])
    >>> print(cosface_logits(cosine, jnp.array([0]), scale=4.0, margin=0.25))
    [[1. 1.]]
  """
  softmax.check_class_scores(cosine, labels, 'cosine')
  _check_non_negative('scale', scale)
  _check_non_negative('margin', margin)
  cosine = cosine.astype(jnp.float32)
  target = target_mask(labels, cosine.shape[1])
  return scale * jnp.where(target, cosine - margin, cosine)


def arcface_logits(cosine: Array, labels: Array, *, scale: float = 64.0,
                   margin: float = 0.5) -> Array:
  """ArcFace logits: `s cos(theta + m)` at the label, `s cos(theta)` else.

  `cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)` with
  `sin(theta) = sqrt(max(1 - cos^2, 1e-7))`, which is arccos-free and has
  finite gradients at `cos = +-1`.

  Past `theta = pi - m`, `cos(theta + m)` would turn back up and reward a
  larger angle. There the target logit is `s (cos(theta) - m sin(m))`
  instead, the convention of the insightface reference code: a CosFace-like
  margin that keeps the target logit decreasing in theta (it steps down from
  `-s` to `-s (cos(m) + m sin(m))` at the switch, and is continuous but for
  that step).

  Args:
    cosine: (batch, num_classes) cosines from a normalised classifier.
    labels: (batch,) integer class ids.
    scale: `s`, the fixed feature norm (64 in the paper).
    margin: `m`, the additive angular margin in radians (0.5 in the paper).

  Returns:
    (batch, num_classes) float32 logits.

  Raises:
    ValueError: for ill-shaped inputs, a negative scale, or a margin outside
      `[0, pi)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import arcface_logits
    >>> cosine = jnp.array([[0.6, 0.8]])  # sin(theta) = 0.8 at the label.
    >>> logits = arcface_logits(cosine, jnp.array([0]), scale=1.0, margin=0.5)
    >>> expected = 0.6 * jnp.cos(0.5) - 0.8 * jnp.sin(0.5)  # cos(theta + m)
    >>> print(bool(jnp.allclose(logits, jnp.array([[expected, 0.8]]))))
    True
  """
  softmax.check_class_scores(cosine, labels, 'cosine')
  _check_non_negative('scale', scale)
  if isinstance(margin, (int, float)) and not 0 <= margin < math.pi:
    raise ValueError(f'margin must be in [0, pi) radians, got {margin}.')
  cosine = cosine.astype(jnp.float32)
  cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
  sine = jnp.sqrt(jnp.maximum(1.0 - cosine * cosine, _SIN_SQUARED_FLOOR))
  cos_theta_plus_m = cosine * cos_m - sine * sin_m
  # theta + m <= pi  <=>  cos(theta) >= cos(pi - m) = -cos(m).
  target_value = jnp.where(cosine >= -cos_m, cos_theta_plus_m,
                           cosine - margin * sin_m)
  target = target_mask(labels, cosine.shape[1])
  return scale * jnp.where(target, target_value, cosine)


def chebyshev_cos_multiple(cosine: Array, multiple: int) -> Array:
  """`cos(multiple * theta)` from `cos(theta)` by a Chebyshev polynomial.

  `T_1 = c`, `T_2 = 2c^2 - 1`, `T_3 = 4c^3 - 3c`, `T_4 = 8c^4 - 8c^2 + 1`:
  polynomials, so unlike `cos(m * arccos(c))` the gradient is finite at
  `c = +-1`.

  Args:
    cosine: cosines, any shape.
    multiple: the integer `m`, one of 1, 2, 3, 4.

  Returns:
    `T_m(cosine)`, same shape and dtype.

  Raises:
    ValueError: for another `multiple`.
  """
  c = cosine
  if multiple == 1:
    return c
  if multiple == 2:
    return 2 * c * c - 1
  if multiple == 3:
    return (4 * c * c - 3) * c
  if multiple == 4:
    c2 = c * c
    return (8 * c2 - 8) * c2 + 1
  raise ValueError(
      f'the SphereFace margin must be an integer in {{1, 2, 3, 4}}, got '
      f'{multiple!r}.')


def sphereface_psi(cosine: Array, margin: int = 4) -> Array:
  """A-Softmax's target function `psi(theta) = (-1)^k cos(m theta) - 2k`.

  `k` is the integer with `theta` in `[k pi / m, (k + 1) pi / m]`. `psi`
  equals `cos(m theta)` on `[0, pi / m]` and continues it so that it is
  monotonically decreasing on all of `[0, pi]` (from 1 to `1 - 2m`). `k` is
  integer and piecewise constant, so it is computed (without gradient) from
  `theta = arccos(clip(cos, -1, 1))` and clamped to `m - 1` at `theta = pi`;
  `psi` is continuous at the joins, so rounding in `k` there does not matter.

  Args:
    cosine: `cos(theta)`, any shape, float32.
    margin: the integer angular margin `m` in {1, 2, 3, 4}.

  Returns:
    `psi(theta)`, same shape.

  Examples:
    At theta = 0, pi / 3 and pi with m = 4:

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import sphereface_psi
    >>> print(sphereface_psi(jnp.array([1.0, 0.5, -1.0]), margin=4))
    [ 1.  -1.5 -7. ]
  """
  cos_m_theta = chebyshev_cos_multiple(cosine, margin)
  theta = jnp.arccos(jnp.clip(jax.lax.stop_gradient(cosine), -1.0, 1.0))
  k = jnp.clip(jnp.floor(margin * theta / jnp.pi), 0, margin - 1)
  sign = 1.0 - 2.0 * jnp.mod(k, 2)
  return sign * cos_m_theta - 2.0 * k


def sphereface_logits(cosine: Array, labels: Array, feature_norm: Array, *,
                      margin: int = 4, blend: float = 5.0) -> Array:
  """SphereFace / A-Softmax logits (Liu et al., CVPR 2017).

  Target logit `||x|| (blend cos(theta) + psi(theta)) / (1 + blend)`, other
  logits `||x|| cos(theta)`, with `psi` from `sphereface_psi`. `blend` is the
  paper's annealing `lambda`: pure A-Softmax at 0, plain (weight-normalised)
  softmax as it grows; the reference training starts it large and decays it
  to about 5, the default here. Unlike CosFace and ArcFace the feature norm
  is kept, and it gets a gradient.

  Args:
    cosine: (batch, num_classes) cosines from a normalised classifier.
    labels: (batch,) integer class ids.
    feature_norm: (batch,) `||x_i||` of the raw features.
    margin: the integer angular margin `m` in {1, 2, 3, 4} (4 in the paper).
    blend: the annealing `lambda` >= 0.

  Returns:
    (batch, num_classes) float32 logits.

  Raises:
    ValueError: for ill-shaped inputs, a margin not in {1, 2, 3, 4} or a
      negative blend.

  Examples:
    Pure A-Softmax (`blend=0`): at the label, `cos(theta) = 0.5` becomes
    `psi = -1.5`, scaled by the feature norm 2:

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import sphereface_logits
    >>> cosine = jnp.array([[0.5, 0.5]])
    >>> print(sphereface_logits(cosine, jnp.array([0]), jnp.array([2.0]),
    ...                         margin=4, blend=0.0))
    [[-3.  1.]]
  """
  softmax.check_class_scores(cosine, labels, 'cosine')
  batch = jnp.shape(cosine)[0]
  if jnp.shape(feature_norm) != (batch,):
    raise ValueError(
        f'feature_norm must have shape (batch,) = ({batch},) to match cosine '
        f'of shape {jnp.shape(cosine)}, got shape {jnp.shape(feature_norm)}.')
  if isinstance(margin, bool) or margin not in (1, 2, 3, 4):
    raise ValueError(
        f'margin must be an integer in {{1, 2, 3, 4}}, got {margin!r}.')
  _check_non_negative('blend', blend)
  cosine = cosine.astype(jnp.float32)
  psi = sphereface_psi(cosine, int(margin))
  target_value = (blend * cosine + psi) / (1.0 + blend)
  target = target_mask(labels, cosine.shape[1])
  norm = jnp.asarray(feature_norm, jnp.float32)[:, None]
  return norm * jnp.where(target, target_value, cosine)


def safe_feature_norm(features: Array) -> Array:
  """(batch,) float32 L2 norms of (batch, dim) features; gradient 0 at x = 0."""
  features = features.astype(jnp.float32)
  squared = jnp.sum(features * features, axis=-1)
  return jnp.sqrt(jnp.maximum(squared, _NORM_SQUARED_FLOOR))


def margin_logits(kind: str, cosine: Array, labels: Array,
                  features: Optional[Array] = None, **hparams: Any) -> Array:
  """Training logits of the margin loss `kind`, for a config to choose.

  Plain softmax is not a kind: its logits come from a linear classifier, not
  from cosines.

  Args:
    kind: 'sphereface', 'cosface' or 'arcface'.
    cosine: (batch, num_classes) cosines from a normalised classifier.
    labels: (batch,) integer class ids.
    features: (batch, dim) raw features; SphereFace uses their norm, the
      others ignore them (may be None).
    **hparams: keyword arguments of `sphereface_logits` (margin, blend),
      `cosface_logits` or `arcface_logits` (scale, margin).

  Returns:
    (batch, num_classes) float32 logits.

  Raises:
    ValueError: for an unknown kind, or SphereFace without features.

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax import losses
    >>> cosine, labels = jnp.array([[0.5, 0.25]]), jnp.array([0])
    >>> logits = losses.margin_logits('cosface', cosine, labels, scale=4.0,
    ...                               margin=0.25)
    >>> print(bool(jnp.array_equal(logits, losses.cosface_logits(
    ...     cosine, labels, scale=4.0, margin=0.25))))
    True
  """
  if kind == 'sphereface':
    if features is None:
      raise ValueError('sphereface needs the raw features for their norm, '
                       'got features=None.')
    return sphereface_logits(cosine, labels, safe_feature_norm(features),
                             **hparams)
  if kind == 'cosface':
    return cosface_logits(cosine, labels, **hparams)
  if kind == 'arcface':
    return arcface_logits(cosine, labels, **hparams)
  raise ValueError(
      f'unknown margin loss kind {kind!r}; expected one of {MARGIN_KINDS}.')
