"""The contrastive loss the paper compares with (DeepID2; Hadsell et al. 2006).

On every ordered pair `(i, j)`, `i != j`, of examples in the batch, with
Euclidean distance `d = ||x_i - x_j||`::

  same identity:       0.5 * d^2
  different identity:  0.5 * max(0, margin - d)^2

Data parallelism. The pairs of a global batch span replicas, so the functions
take two sets of rows: *anchors*, this replica's own examples, and
*candidates*, the all-gathered global batch, of which the anchors are the
contiguous slice starting at row `anchor_offset`. Each replica sums the pairs
whose first element is one of its anchors; the `psum` of those sums over
replicas is the full-batch sum, and, because the all-gather's transpose is a
reduce-scatter, so is the gradient. Divide the summed loss by the summed
`num_pairs` for the mean. On one device pass the batch as both. Inside
`jax.shard_map` or `jax.pmap` over axis 'batch'::

  gather = functools.partial(jax.lax.all_gather, axis_name='batch', tiled=True)
  sums = contrastive_loss_sums(
      x, y, w, gather(x), gather(y), gather(w), margin=margin,
      anchor_offset=jax.lax.axis_index('batch') * x.shape[0])
  sums = jax.lax.psum(sums, 'batch')
  loss = sums['loss'] / jnp.maximum(sums['num_pairs'], 1e-12)

Under plain `jit` with the batch sharded over an explicit-sharding mesh (the
default of `jax.make_mesh`), pass the whole batch as both: the candidates are
replicated (the same all-gather, inserted by JAX), the anchors stay sharded.

Cost: a (num_anchors, num_candidates) distance matrix from one matmul
(`||a||^2 + ||c||^2 - 2 a.c`, in float32 at full matmul precision), never a
(b, B, dim) difference tensor. The matmul form loses precision when two
features nearly coincide far from the origin (relative to ||x||^2, not to
d^2); with `normalize=True` the error is bounded, about 1e-7 in d^2.

The helpers here (`pairwise_squared_distances`, `safe_sqrt`, ...) are shared
with `centerloss_jax.losses.triplet`.
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

from centerloss_jax.losses import common

Array = jax.Array
Offset = Union[int, Array, None]

# Squared distances at or below this are treated as 0 by `safe_sqrt`: the
# derivative of sqrt is infinite at 0.
_SQUARED_DISTANCE_FLOOR = common.EPSILON



def check_rows(features, labels, weights, name: str) -> None:
  """Raises for ill-shaped pair-loss rows ('anchor' or 'candidate' `name`).

  See `common.check_rows`.
  """
  common.check_rows(features, labels, weights,
                    rows_name=f'{name}_features', columns='dim',
                    weights_name=f'{name}_weights')


def check_anchor_candidate_split(anchor_features, candidate_features,
                                 anchor_offset: Offset) -> None:
  """Raises ValueError unless the anchors can be a slice of the candidates."""
  if jnp.shape(anchor_features)[1] != jnp.shape(candidate_features)[1]:
    raise ValueError(
        'anchor_features and candidate_features must have the same feature '
        f'dim, got shapes {jnp.shape(anchor_features)} and '
        f'{jnp.shape(candidate_features)}.')
  num_anchors = jnp.shape(anchor_features)[0]
  num_candidates = jnp.shape(candidate_features)[0]
  if anchor_offset is None:
    if num_anchors != num_candidates:
      raise ValueError(
          'with anchor_offset=None the anchors are the candidates, but got '
          f'{num_anchors} anchors and {num_candidates} candidates; pass the '
          "anchors' first row in the candidates as anchor_offset.")
  elif isinstance(anchor_offset, int) and not (
      0 <= anchor_offset <= num_candidates - num_anchors):
    raise ValueError(
        f'anchor_offset must be in [0, {num_candidates - num_anchors}] for '
        f'{num_anchors} anchors among {num_candidates} candidates, got '
        f'{anchor_offset}.')


def prepare_rows(features: Array, labels: Array, weights: Optional[Array],
                 normalize: bool) -> tuple[Array, Array, Array]:
  """float32 features, int32 labels and float32 weights of pair-loss rows.

  A row takes part iff its weight is > 0 and its label is >= 0; the weights
  of the others become 0 and their features 0, so that NaN or inf in a
  padding row reaches neither the loss nor, through the distance matmul's
  backward pass, any gradient.

  Args:
    features: (batch, dim) features, any float dtype.
    labels: (batch,) integer identity labels; negative means invalid.
    weights: (batch,) non-negative weights, or None for all ones.
    normalize: whether to L2-normalise the features.

  Returns:
    (features, labels, weights).
  """
  labels = jnp.asarray(labels)
  labels = labels.astype(jnp.promote_types(labels.dtype, jnp.int32))
  valid = labels >= 0
  if weights is None:
    weights = valid.astype(jnp.float32)
  else:
    weights = jnp.where(valid, jnp.asarray(weights, jnp.float32), 0.0)
  features = jnp.where((weights > 0)[:, None], features.astype(jnp.float32),
                       0.0)
  if normalize:
    # A floor of 1e-12 on the squared norm: zero rows stay zero.
    features = common.l2_normalize(features, epsilon=1e-6)
  return features, labels, weights


def pairwise_squared_distances(anchors: Array, candidates: Array) -> Array:
  """(b, B) float32 `||a_i - c_j||^2` from one matmul, clamped at 0."""
  dot = jnp.matmul(anchors, candidates.T,
                   precision=jax.lax.Precision.HIGHEST)
  squared = (jnp.sum(anchors * anchors, axis=-1)[:, None]
             + jnp.sum(candidates * candidates, axis=-1)[None, :] - 2.0 * dot)
  return jnp.maximum(squared, 0.0)


def safe_sqrt(squared: Array) -> Array:
  """sqrt with gradient 0 (not inf or NaN) where `squared` is about 0.

  The inner select keeps sqrt's infinite derivative out of the backward pass
  (an outer select alone would give 0 * inf = NaN).
  """
  positive = squared > _SQUARED_DISTANCE_FLOOR
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def not_self_mask(num_anchors: int, num_candidates: int,
                  anchor_offset: Offset) -> Array:
  """(b, B) bool, False where candidate j is anchor i itself.

  Anchor i is candidate `anchor_offset + i`; `anchor_offset` may be traced
  (say, `axis_index * b` inside `shard_map`).
  """
  offset = 0 if anchor_offset is None else anchor_offset
  anchor_rows = offset + jnp.arange(num_anchors, dtype=jnp.int32)
  candidate_rows = jnp.arange(num_candidates, dtype=jnp.int32)
  return anchor_rows[:, None] != candidate_rows[None, :]


def contrastive_loss_sums(anchor_features: Array, anchor_labels: Array,
                          anchor_weights: Optional[Array],
                          candidate_features: Array, candidate_labels: Array,
                          candidate_weights: Optional[Array], *,
                          margin: float, anchor_offset: Offset = None,
                          normalize: bool = False) -> dict[str, Array]:
  """Sums of the contrastive loss over the pairs (anchor, other candidate).

  Pair `(i, j)` has weight `w_i w_j` (so with 0/1 weights, a padding row makes
  no pair), or 0 if either label is negative or `j` is anchor `i` itself.
  Ordered pairs: on the full batch, `{i, j}` counts twice, as in a loop over
  all `i != j`.

  `normalize=True` L2-normalises the features first. DeepID2 does not, but on
  raw features the loss can be lowered by shrinking every feature (the
  positive term) or pushing all of them apart (the negative term) instead of
  by separating identities, and the margin's meaning drifts with the feature
  scale that the softmax branch keeps growing; on the unit sphere distances
  are in [0, 2] and the margin is scale-free, and the features are then
  compared by cosine at test time anyway.

  Args:
    anchor_features: (b, dim) features of this replica's examples.
    anchor_labels: (b,) their integer identities; negative means invalid.
    anchor_weights: (b,) their weights (0 for padding), or None for ones.
    candidate_features: (B, dim) features of the global batch, whose rows
      `anchor_offset ... anchor_offset + b - 1` are the anchors.
    candidate_labels: (B,) their identities.
    candidate_weights: (B,) their weights, or None.
    margin: the distance beyond which different identities cost nothing.
    anchor_offset: the anchors' first row in the candidates, an int or a
      traced integer scalar; None when the anchors are the candidates.
    normalize: whether to L2-normalise the features first (see above).

  Returns:
    A dict of float32 scalars: 'loss', the weighted sum of the pair terms;
    'num_pairs', the sum of the pair weights (the number of valid ordered
    pairs with 0/1 weights); 'num_positive_pairs', the part of it with the
    same identity (a batch sampled without identity balancing has almost
    none).

  Raises:
    ValueError: for ill-shaped inputs, a negative margin or an anchor_offset
      that does not fit.

  Examples:
    On one device the batch is both the anchors and the candidates:

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import contrastive_loss_sums
    >>> features = jnp.array([[0., 0.], [2., 0.], [0., 2.]])
    >>> labels = jnp.array([0, 0, 1])
    >>> sums = contrastive_loss_sums(features, labels, None, features, labels,
    ...                              None, margin=3.0)
    >>> print(float(sums['num_pairs']), float(sums['num_positive_pairs']))
    6.0 2.0
  """
  terms, pair_weights, same = _weighted_pair_terms(
      anchor_features, anchor_labels, anchor_weights, candidate_features,
      candidate_labels, candidate_weights, margin=margin,
      anchor_offset=anchor_offset, normalize=normalize)
  return {
      'loss': jnp.sum(terms),
      'num_pairs': jnp.sum(pair_weights),
      'num_positive_pairs': jnp.sum(jnp.where(same, pair_weights, 0.0)),
  }


def _weighted_pair_terms(anchor_features, anchor_labels, anchor_weights,
                         candidate_features, candidate_labels,
                         candidate_weights, *, margin, anchor_offset,
                         normalize) -> tuple[Array, Array, Array]:
  """(b, B) weighted pair terms, pair weights and same-identity mask."""
  check_rows(anchor_features, anchor_labels, anchor_weights, 'anchor')
  check_rows(candidate_features, candidate_labels, candidate_weights,
             'candidate')
  check_anchor_candidate_split(anchor_features, candidate_features,
                               anchor_offset)
  if isinstance(margin, (int, float)) and margin < 0:
    raise ValueError(f'margin must be >= 0, got {margin}.')
  anchors, anchor_labels, anchor_weights = prepare_rows(
      anchor_features, anchor_labels, anchor_weights, normalize)
  candidates, candidate_labels, candidate_weights = (
      common.replicate_explicit(x) for x in prepare_rows(
          candidate_features, candidate_labels, candidate_weights, normalize))

  squared = pairwise_squared_distances(anchors, candidates)
  same = anchor_labels[:, None] == candidate_labels[None, :]
  pair_weights = (anchor_weights[:, None] * candidate_weights[None, :]
                  * not_self_mask(anchors.shape[0], candidates.shape[0],
                                  anchor_offset))
  # Positive pairs use the squared distance directly: no sqrt, so a smooth
  # gradient at d = 0. Negative pairs need d, whose gradient at d = 0 (two
  # coinciding features, no direction to push them apart) is taken as 0.
  hinge = jnp.maximum(margin - safe_sqrt(squared), 0.0)
  terms = pair_weights * (0.5 * jnp.where(same, squared, hinge * hinge))
  return terms, pair_weights, same


def contrastive_loss(features: Array, labels: Array,
                     weights: Optional[Array] = None, *, margin: float,
                     normalize: bool = False,
                     reduction: str = 'mean') -> Array:
  """The contrastive loss over all valid ordered pairs of a batch.

  `contrastive_loss_sums` with the batch as both anchors and candidates, for
  one device (data-parallel trainers psum the sums instead).

  Args:
    features: (batch, dim) features.
    labels: (batch,) integer identities; negative means invalid.
    weights: optional (batch,) weights; 0 marks padding.
    margin: the distance beyond which different identities cost nothing.
    normalize: whether to L2-normalise the features first.
    reduction: `'mean'` over the valid pairs (weighted), `'sum'`, or
      `'none'` for each example's sum over the pairs it anchors, (batch,).

  Returns:
    A float32 scalar (0 when there is no pair), or (batch,) for `'none'`.

  Examples:
    Two features at distance 2 cost `0.5 * 2^2` as the same identity and
    `0.5 * (3 - 2)^2` as different ones, with margin 3:

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import contrastive_loss
    >>> features = jnp.array([[0., 0.], [2., 0.]])
    >>> print(contrastive_loss(features, jnp.array([0, 0]), margin=3.0))
    2.0
    >>> print(contrastive_loss(features, jnp.array([0, 1]), margin=3.0))
    0.5
  """
  common.check_reduction(reduction)
  terms, pair_weights, _ = _weighted_pair_terms(
      features, labels, weights, features, labels, weights, margin=margin,
      anchor_offset=None, normalize=normalize)
  return common.reduce_loss(jnp.sum(terms, axis=1), jnp.sum(pair_weights),
                            reduction)
