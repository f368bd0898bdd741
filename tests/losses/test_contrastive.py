"""Tests for centerloss_jax.losses.contrastive: the DeepID2 contrastive loss.

Checked against a case small enough to compute by hand and against a
float64 numpy reference written from the loss's definition with explicit
loops over pairs (sharing no code with the library):

  sum over ordered pairs i != j of w_i w_j *
      (0.5 d^2 if same identity else 0.5 max(0, m - d)^2)

The rules it shares with the triplet loss (padding, zero distances, the
anchor/candidate split over replicas) run from `pair_loss_rules`.
"""

import functools
import math

import jax
import numpy as np
import pytest

from centerloss_jax import losses
import pair_loss_rules


# Compiled: eager dispatch of the pairwise terms is slow on a new shape.
loss_sums = jax.jit(losses.contrastive_loss_sums,
                    static_argnames=('margin', 'normalize'))


def reference_contrastive(features, labels, weights, margin):
  """(loss sum, pair-weight sum) over ordered pairs, float64."""
  x = np.asarray(features, np.float64)
  total, count = 0.0, 0.0
  for i in range(len(x)):
    for j in range(len(x)):
      if i == j or labels[i] < 0 or labels[j] < 0:
        continue
      pair_weight = weights[i] * weights[j]
      if pair_weight == 0:
        continue
      d = np.linalg.norm(x[i] - x[j])
      if labels[i] == labels[j]:
        term = 0.5 * d ** 2
      else:
        term = 0.5 * max(0.0, margin - d) ** 2
      total += pair_weight * term
      count += pair_weight
  return total, count


# Four points in 2-D; distances 0-1: 5, 0-2: 1, 0-3: sqrt(2), 1-2: sqrt(18),
# 1-3: sqrt(13), 2-3: 1.
HAND_POINTS = np.array([[0, 0], [3, 4], [0, 1], [1, 1]], np.float32)
HAND_LABELS = np.array([0, 0, 1, 1], np.int32)
# Unordered: positives 0-1: 0.5 * 25, 2-3: 0.5 * 1; negatives within the
# margin 0-2: 0.5 * (2 - 1)^2, 0-3: 0.5 * (2 - sqrt 2)^2; the rest 0.
HAND_UNORDERED_SUM = 12.5 + 0.5 + 0.5 + 0.5 * (2 - math.sqrt(2)) ** 2


@pytest.fixture(scope='module')
def hand_sums():
  return loss_sums(HAND_POINTS, HAND_LABELS, None, HAND_POINTS, HAND_LABELS,
                   None, margin=2.0)


def test_loss_sum_by_hand_counts_each_pair_twice(hand_sums):
  np.testing.assert_allclose(hand_sums['loss'], 2 * HAND_UNORDERED_SUM,
                             rtol=1e-6)


def test_ordered_pairs_by_hand(hand_sums):
  assert float(hand_sums['num_pairs']) == 12.0


def test_ordered_positive_pairs_by_hand(hand_sums):
  assert float(hand_sums['num_positive_pairs']) == 4.0


def test_mean_loss_by_hand_is_over_the_ordered_pairs():
  np.testing.assert_allclose(
      jax.jit(functools.partial(losses.contrastive_loss, margin=2.0))(
          HAND_POINTS, HAND_LABELS),
      2 * HAND_UNORDERED_SUM / 12, rtol=1e-6)


@pytest.fixture(scope='module', params=[False, True],
                ids=['euclidean', 'normalized'])
def sums_and_reference(request):
  """The library's sums and the numpy reference's (loss, pair weight), on
  a batch with an invalid label and a weight-0 row."""
  normalize = request.param
  features, labels, weights = pair_loss_rules.random_batch(2, batch=7)
  labels[2] = -1
  weights[4] = 0.0
  sums = loss_sums(features, labels, weights, features, labels, weights,
                   margin=1.5, normalize=normalize)
  if normalize:
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
  return sums, reference_contrastive(features, labels, weights, 1.5)


def test_anchors_that_are_not_the_candidates_need_an_offset():
  x, y = HAND_POINTS, HAND_LABELS
  with pytest.raises(ValueError, match='anchor_offset'):
    losses.contrastive_loss_sums(x[:2], y[:2], None, x, y, None, margin=1.0)


def test_anchor_offset_past_the_candidates_is_rejected():
  x, y = HAND_POINTS, HAND_LABELS
  with pytest.raises(ValueError, match=r'anchor_offset must be in \[0, 2\]'):
    losses.contrastive_loss_sums(x[:2], y[:2], None, x, y, None, margin=1.0,
                                 anchor_offset=3)


def test_candidate_weights_of_the_wrong_shape_are_rejected():
  x, y = HAND_POINTS, HAND_LABELS
  with pytest.raises(ValueError, match='candidate_weights'):
    losses.contrastive_loss_sums(x, y, None, x, y, np.ones(3), margin=1.0)


class TestPairLossRules(pair_loss_rules.PairLossRules):
  sums = functools.partial(losses.contrastive_loss_sums, margin=1.5)
  loss = functools.partial(losses.contrastive_loss, margin=1.5)
  normaliser = 'num_pairs'
