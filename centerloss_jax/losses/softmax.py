"""Softmax cross-entropy, the baseline every compared loss is added to.

A thin wrapper over `optax.softmax_cross_entropy_with_integer_labels` that
follows the conventions of `common`: float32 arithmetic whatever
the logits' dtype, example weights with 0 for padding, and labels outside
`[0, num_classes)` masked out instead of gathered (optax would read a NaN fill
value for them, or another class's logit after a `clip`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from centerloss_jax.losses import common

Array = jax.Array



def check_class_scores(scores, labels, name: str, weights=None) -> None:
  """Raises for ill-shaped class scores (logits or cosines), at trace time.

  Shared by the softmax and the margin losses; see `common.check_rows`.
  """
  common.check_rows(scores, labels, weights, rows_name=name,
                      columns='num_classes')


@jax.custom_vjp
def _zero_cotangent_where_masked(rows: Array, keep: Array) -> Array:
  """`rows`, whose gradient is zeroed in the rows where `keep` is False."""
  del keep
  return rows


def _zero_cotangent_fwd(rows, keep):
  return rows, keep


def _zero_cotangent_bwd(keep, cotangent):
  return jnp.where(keep[:, None], cotangent, 0.0), None


_zero_cotangent_where_masked.defvjp(_zero_cotangent_fwd, _zero_cotangent_bwd)


def softmax_cross_entropy_loss(logits: Array, labels: Array,
                               weights: Optional[Array] = None, *,
                               reduction: str = 'mean') -> Array:
  """Softmax cross-entropy, per example `w_i (logsumexp(z_i) - z_{i, y_i})`.

  The default `'mean'` divides the sum by `sum_i w_i` over the examples with
  a valid label, the normalisation of `center.center_loss`, so the two add
  up with the paper's `lambda` unchanged by padding. Rows with a label
  outside `[0, num_classes)` or with weight 0 are exactly 0, and so is their
  gradient, even when their logits are NaN or inf (a select, not a product,
  masks them).

  Args:
    logits: (batch, num_classes) floating point logits, any float dtype.
    labels: (batch,) integer class ids; out-of-range ids are masked out.
    weights: optional (batch,) non-negative example weights; 0 marks padding.
      Without them every row with a valid label has weight 1.
    reduction: `'mean'`, `'sum'`, or `'none'` for the (batch,) weighted
      terms (what `optax.softmax_cross_entropy_with_integer_labels` returns,
      masked), for trainers that normalise over a global batch.

  Returns:
    A float32 scalar (0 when every weight is 0), or (batch,) for `'none'`.

  Examples:
    Uniform logits over 4 classes cost `log 4` per example; the label 7 is
    out of range and masked out:

    >>> import jax.numpy as jnp
    >>> from centerloss_jax.losses import softmax_cross_entropy_loss
    >>> logits = jnp.zeros((2, 4))
    >>> labels = jnp.array([0, 7])
    >>> print(round(float(softmax_cross_entropy_loss(logits, labels)), 4))
    1.3863
    >>> terms = softmax_cross_entropy_loss(logits, labels, reduction='none')
    >>> print(float(terms[1]))
    0.0
  """
  common.check_reduction(reduction)
  check_class_scores(logits, labels, 'logits', weights)
  valid = common.valid_label_mask(labels, jnp.shape(logits)[1])
  weights = common.effective_weights(labels, jnp.shape(logits)[1], weights)
  keep = weights > 0
  # Selecting only the output would leave 0 * NaN in the backward pass of a
  # NaN row, so the masked rows' logits get a zero cotangent too. (Not a
  # select on the logits themselves: the forward pass then stays the plain
  # optax computation, which XLA compiles exactly as a trainer's own.)
  logits = _zero_cotangent_where_masked(logits.astype(jnp.float32), keep)
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, safe_labels)
  return common.reduce_loss(jnp.where(keep, weights * per_example, 0.0),
                            jnp.sum(weights), reduction)
