"""Triplet loss with batch-hard mining (Hermans, Beyer and Leibe, 2017).

For each anchor, the hardest positive (the farthest example of the same
identity) and the hardest negative (the closest example of another identity)
in the batch form one triplet:

  hard margin:  max(0, margin + d(a, p) - d(a, n))
  soft margin:  softplus(d(a, p) - d(a, n))

with Euclidean (not squared) distances, as in the paper. Anchors without a
positive other than themselves, or without a negative, contribute nothing;
sample batches of P identities times K images (K >= 2) so that every anchor
has both.

Data parallelism works as for `centerloss_jax.losses.contrastive` (see there):
this replica's rows are the anchors, the all-gathered global batch the
candidates, so mining is over the global batch; psum the sums, divide the
loss by `num_anchors`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from centerloss_jax.losses import common
from centerloss_jax.losses import contrastive

Array = jax.Array

def batch_hard_triplet_loss_sums(anchor_features: Array, anchor_labels: Array,
                                 anchor_weights: Optional[Array],
                                 candidate_features: Array,
                                 candidate_labels: Array,
                                 candidate_weights: Optional[Array], *,
                                 margin: Optional[float] = None,
                                 anchor_offset: contrastive.Offset = None,
                                 soft: bool = False,
                                 normalize: bool = False) -> dict[str, Array]:
  """Sums of the batch-hard triplet loss over this replica's anchors.

  An anchor takes part if its weight is > 0, its label >= 0, and the
  candidates (weight > 0, label >= 0) hold at least one other example of its
  identity and one of another. Its term is multiplied by its weight; the
  candidates' weights only say which rows may be mined (a triplet has no
  natural way to weight its positive or negative).

  Gradients are finite where distances are 0 (duplicate features): the
  distance's gradient there is taken as 0.

  Args:
    anchor_features: (b, dim) features of this replica's examples.
    anchor_labels: (b,) their integer identities; negative means invalid.
    anchor_weights: (b,) their weights (0 for padding), or None for ones.
    candidate_features: (B, dim) features of the global batch, whose rows
      `anchor_offset ... anchor_offset + b - 1` are the anchors.
    candidate_labels: (B,) their identities.
    candidate_weights: (B,) their weights, or None.
    margin: the hard margin (Hermans et al. use 0.2 to 1 depending on the
      feature scale); required unless `soft`, ignored with `soft`.
    anchor_offset: the anchors' first row in the candidates, an int or a
      traced integer scalar; None when the anchors are the candidates.
    soft: use the soft margin `softplus(d_ap - d_an)` instead of the hinge.
    normalize: whether to L2-normalise the features first, which bounds
      distances to [0, 2] and makes the margin independent of feature scale.

  Returns:
    A dict of float32 scalars: 'loss', the weighted sum of the anchors'
    terms; 'num_anchors', the sum of the weights of the anchors that took
    part (their number with 0/1 weights).

  Raises:
    ValueError: for ill-shaped inputs, a missing or negative margin, or an
      anchor_offset that does not fit.

  Examples:
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import batch_hard_triplet_loss_sums
    >>> features = jnp.array([[0., 0.], [1., 0.], [3., 0.], [4., 0.]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> sums = batch_hard_triplet_loss_sums(
    ...     features, labels, None, features, labels, None, margin=3.0)
    >>> print(float(sums['loss']), float(sums['num_anchors']))
    6.0 4.0
  """
  terms, weights = _weighted_anchor_terms(
      anchor_features, anchor_labels, anchor_weights, candidate_features,
      candidate_labels, candidate_weights, margin=margin,
      anchor_offset=anchor_offset, soft=soft, normalize=normalize)
  return {'loss': jnp.sum(terms), 'num_anchors': jnp.sum(weights)}


def _weighted_anchor_terms(anchor_features, anchor_labels, anchor_weights,
                           candidate_features, candidate_labels,
                           candidate_weights, *, margin, anchor_offset, soft,
                           normalize) -> tuple[Array, Array]:
  """(b,) weighted anchor terms and the weights of the anchors that count."""
  contrastive.check_rows(anchor_features, anchor_labels, anchor_weights,
                         'anchor')
  contrastive.check_rows(candidate_features, candidate_labels,
                         candidate_weights, 'candidate')
  contrastive.check_anchor_candidate_split(anchor_features,
                                           candidate_features, anchor_offset)
  if not soft:
    if margin is None:
      raise ValueError('margin is required for the hard-margin triplet loss '
                       '(soft=False), got margin=None.')
    if isinstance(margin, (int, float)) and margin < 0:
      raise ValueError(f'margin must be >= 0, got {margin}.')
  anchors, anchor_labels, anchor_weights = contrastive.prepare_rows(
      anchor_features, anchor_labels, anchor_weights, normalize)
  candidates, candidate_labels, candidate_weights = (
      common.replicate_explicit(x) for x in contrastive.prepare_rows(
          candidate_features, candidate_labels, candidate_weights, normalize))

  distances = contrastive.safe_sqrt(
      contrastive.pairwise_squared_distances(anchors, candidates))
  minable = (candidate_weights > 0)[None, :]
  same = anchor_labels[:, None] == candidate_labels[None, :]
  positives = same & minable & contrastive.not_self_mask(
      anchors.shape[0], candidates.shape[0], anchor_offset)
  negatives = ~same & minable
  # Fill values that can never win the max or min; finite, so that no
  # inf - inf appears before the mask below.
  hardest_positive = jnp.max(jnp.where(positives, distances, 0.0), axis=1)
  hardest_negative = jnp.min(
      jnp.where(negatives, distances, jnp.finfo(jnp.float32).max), axis=1)
  takes_part = ((anchor_weights > 0) & jnp.any(positives, axis=1)
                & jnp.any(negatives, axis=1))
  gap = jnp.where(takes_part, hardest_positive - hardest_negative, 0.0)
  if soft:
    terms = jax.nn.softplus(gap)
  else:
    terms = jnp.maximum(margin + gap, 0.0)
  weights = jnp.where(takes_part, anchor_weights, 0.0)
  return weights * terms, weights


def batch_hard_triplet_loss(features: Array, labels: Array,
                            weights: Optional[Array] = None, *,
                            margin: Optional[float] = None, soft: bool = False,
                            normalize: bool = False,
                            reduction: str = 'mean') -> Array:
  """The batch-hard triplet loss of a batch.

  `batch_hard_triplet_loss_sums` with the batch as both anchors and
  candidates, for one device (data-parallel trainers psum the sums instead).

  Args:
    features: (batch, dim) features.
    labels: (batch,) integer identities; negative means invalid.
    weights: optional (batch,) weights; 0 marks padding.
    margin: the hard margin; required unless `soft`.
    soft: use the soft margin `softplus(d_ap - d_an)`.
    normalize: whether to L2-normalise the features first.
    reduction: `'mean'` over the anchors that take part (weighted), `'sum'`,
      or `'none'` for the (batch,) weighted anchor terms.

  Returns:
    A float32 scalar (0 when no anchor has both a positive and a negative),
    or (batch,) for `'none'`.

  Examples:
    Points on a line, two identities: each anchor's hardest positive is 1
    away, its hardest negative 3, 2, 2 and 3 away.

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import batch_hard_triplet_loss
    >>> features = jnp.array([[0., 0.], [1., 0.], [3., 0.], [4., 0.]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> print(batch_hard_triplet_loss(features, labels, margin=3.0,
    ...                               reduction='none'))
    [1. 2. 2. 1.]
    >>> print(batch_hard_triplet_loss(features, labels, margin=3.0))
    1.5
  """
  common.check_reduction(reduction)
  terms, anchor_weights = _weighted_anchor_terms(
      features, labels, weights, features, labels, weights, margin=margin,
      anchor_offset=None, soft=soft, normalize=normalize)
  return common.reduce_loss(terms, jnp.sum(anchor_weights), reduction)
