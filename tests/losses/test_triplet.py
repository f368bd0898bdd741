"""Tests for centerloss_jax.losses.triplet: the batch-hard triplet loss.

Checked against a case small enough to compute by hand and against a
float64 numpy reference written from the loss's definition with explicit
loops over anchors (sharing no code with the library):

  sum over anchors with a positive and a negative of
      w_a max(0, m + max_p d(a, p) - min_n d(a, n))

(`soft=True`: log(1 + exp(gap)) for the hinge). The rules it shares with the
contrastive loss (padding, zero distances, the anchor/candidate split over
replicas) run from `pair_loss_rules`.
"""

import functools

import jax
import numpy as np
import pytest

from centerloss_jax import losses
import pair_loss_rules


# Compiled: eager dispatch of the pairwise terms is slow on a new shape.
loss_sums = jax.jit(losses.batch_hard_triplet_loss_sums,
                    static_argnames=('margin', 'soft'))


def reference_batch_hard(features, labels, weights, margin, soft=False):
  """(loss sum, anchor-weight sum) of batch-hard triplets, float64."""
  x = np.asarray(features, np.float64)
  usable = [k for k in range(len(x)) if weights[k] > 0 and labels[k] >= 0]
  total, count = 0.0, 0.0
  for a in usable:
    positives = [np.linalg.norm(x[a] - x[p]) for p in usable
                 if p != a and labels[p] == labels[a]]
    negatives = [np.linalg.norm(x[a] - x[n]) for n in usable
                 if labels[n] != labels[a]]
    if not positives or not negatives:
      continue
    gap = max(positives) - min(negatives)
    term = np.log1p(np.exp(gap)) if soft else max(0.0, margin + gap)
    total += weights[a] * term
    count += weights[a]
  return total, count


# Identity 0 on the y axis, identity 1 at x = 4, identity 2 alone and far.
TRIPLET_POINTS = np.array([[0, 0], [0, 3], [4, 0], [4, 3], [0, 6],
                           [100, 100]], np.float32)
TRIPLET_LABELS = np.array([0, 0, 1, 1, 0, 2], np.int32)
# Anchor: (hardest positive, hardest negative) = 0: (6, 4), 1: (3, 4),
# 2: (3, 4), 3: (3, 4), 4: (6, 5); anchor 5 has no positive.
HAND_GAPS = np.array([2.0, -1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope='module')
def hand_sums():
  return loss_sums(TRIPLET_POINTS, TRIPLET_LABELS, None, TRIPLET_POINTS,
                   TRIPLET_LABELS, None, margin=2.0)


def test_loss_sum_by_hand(hand_sums):
  np.testing.assert_allclose(hand_sums['loss'], 4 + 1 + 1 + 1 + 3, rtol=1e-6)


def test_anchor_without_a_positive_is_not_counted(hand_sums):
  assert float(hand_sums['num_anchors']) == 5.0


def test_soft_margin_mean_by_hand():
  soft = jax.jit(functools.partial(losses.batch_hard_triplet_loss,
                                   soft=True))(TRIPLET_POINTS, TRIPLET_LABELS)
  np.testing.assert_allclose(soft, np.mean(np.log1p(np.exp(HAND_GAPS))),
                             rtol=1e-6)


@pytest.fixture(scope='module', params=[False, True], ids=['hard', 'soft'])
def sums_and_reference(request):
  """The library's sums and the numpy reference's (loss, anchor weight), on
  a batch with an invalid label and a weight-0 row."""
  soft = request.param
  features, labels, weights = pair_loss_rules.random_batch(4, batch=9,
                                                           num_ids=4)
  labels[1] = -1
  weights[5] = 0.0
  sums = loss_sums(features, labels, weights, features, labels, weights,
                   margin=0.7, soft=soft)
  total, count = reference_batch_hard(features, labels, weights, 0.7, soft)
  assert count > 0
  return sums, (total, count)


def test_margin_is_required():
  with pytest.raises(ValueError, match='margin is required'):
    losses.batch_hard_triplet_loss(TRIPLET_POINTS, TRIPLET_LABELS)


class TestPairLossRules(pair_loss_rules.PairLossRules):
  sums = functools.partial(losses.batch_hard_triplet_loss_sums, margin=0.5)
  loss = functools.partial(losses.batch_hard_triplet_loss, margin=0.5)
  normaliser = 'num_anchors'
