"""Tests of metrics.identification (MegaFace-style distractor scores, the
CMC curve and the identification report) against hand-computed cases and
the full score matrices."""

import numpy as np
import pytest

from centerloss_jax.metrics import identification
from centerloss_jax.metrics import verification


def unit_at_degrees(degrees):
  radians = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def brute_force_ranks(probes, labels, distractors):
  """Reference MegaFace ranks from the full score matrices."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  probe_scores = unit(probes) @ unit(probes).T
  distractor_scores = unit(probes) @ unit(distractors).T
  ranks = []
  for p in range(len(probes)):
    for m in range(len(probes)):
      if p != m and labels[p] == labels[m]:
        ranks.append(
            1 + np.sum(distractor_scores[p] > probe_scores[p, m]))
  return np.array(ranks)


# ---------------------------------------------------------------------------
# top_distractor_scores.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('block_size', [1, 5, 23, 100])
def test_top_distractor_scores_matches_full_matrix(block_size):
  rng = np.random.default_rng(4)
  probes = rng.normal(size=(5, 3))
  distractors = rng.normal(size=(23, 3)) * rng.uniform(0.5, 2, size=(23, 1))
  top = identification.top_distractor_scores(probes, distractors, k=4,
                                             block_size=block_size)
  full = verification.cosine_scores(
      np.repeat(probes, 23, axis=0), np.tile(distractors, (5, 1)))
  expected = -np.sort(-full.reshape(5, 23), axis=1)[:, :4]
  np.testing.assert_allclose(top, expected, rtol=1e-12)


PROBE = np.array([[1.0, 0.0]])
TWO_DISTRACTORS = np.array([[0.0, 1.0], [1.0, 1.0]])


def test_top_distractor_scores_pad_fewer_than_k_with_minus_inf():
  top = identification.top_distractor_scores(PROBE, TWO_DISTRACTORS, k=3,
                                             block_size=1)
  np.testing.assert_allclose(top, [[np.sqrt(0.5), 0.0, -np.inf]])


def test_top_distractor_scores_without_distractors_are_minus_inf():
  no_distractors = identification.top_distractor_scores(
      PROBE, np.zeros((0, 2)), k=2)
  np.testing.assert_array_equal(no_distractors, [[-np.inf, -np.inf]])


@pytest.mark.parametrize('distractors, kwargs, message', [
    (TWO_DISTRACTORS, dict(k=0), 'k must be >= 1, got 0'),
    (TWO_DISTRACTORS, dict(k=1, block_size=0),
     'block_size must be >= 1, got 0'),
    (np.zeros((2, 3)), dict(k=1), r'D = 2 columns.*\(2, 3\)'),
    ([[np.nan, 1.0]], dict(k=1), 'distractor_features must be finite'),
], ids=['k_zero', 'block_size_zero', 'feature_dim', 'nan'])
def test_top_distractor_scores_reject_bad_input(distractors, kwargs,
                                                message):
  with pytest.raises(ValueError, match=message):
    identification.top_distractor_scores(PROBE, distractors, **kwargs)


# ---------------------------------------------------------------------------
# cmc and identification_report.
# ---------------------------------------------------------------------------

# Unit vectors on a circle: cosine order is angular-distance order.
# Probes of one identity at 0, 10 and 40 degrees; distractors at -8, 25,
# -30 and 180. Distractors closer to p than its mate m (by angle):
#   p=0:  m=10 (10): -8        -> rank 2;  m=40 (40): -8, 25, -30 -> 4
#   p=10: m=0  (10): none      -> rank 1;  m=40 (30): -8, 25      -> 3
#   p=40: m=0  (40): 25        -> rank 2;  m=10 (30): 25          -> 2
CIRCLE_PROBES = unit_at_degrees([0, 10, 40]) * [[1.0], [2.0], [0.5]]
CIRCLE_DISTRACTORS = unit_at_degrees([-8, 25, -30, 180])


@pytest.fixture(scope='module')
def circle_cmc():
  return identification.cmc(CIRCLE_PROBES, ['a', 'a', 'a'],
                            CIRCLE_DISTRACTORS, max_rank=3, block_size=3)


def test_cmc_counts_each_ordered_pair_of_one_identity(circle_cmc):
  assert circle_cmc['num_pairs'] == 6


def test_cmc_rank1_by_hand(circle_cmc):
  assert circle_cmc['rank1'] == pytest.approx(1 / 6)


def test_cmc_curve_by_hand(circle_cmc):
  np.testing.assert_allclose(circle_cmc['cmc'], [1 / 6, 4 / 6, 5 / 6])


@pytest.fixture(scope='module')
def circle_report():
  return identification.identification_report(
      CIRCLE_PROBES, ['a', 'a', 'a'], CIRCLE_DISTRACTORS, max_rank=5)


def test_identification_report_by_hand(circle_report):
  assert circle_report == pytest.approx({'rank1': 1 / 6, 'rank5': 1.0,
                                         'num_pairs': 6.0,
                                         'num_distractors': 4.0})


def test_identification_report_has_no_rank_beyond_max_rank(circle_report):
  assert 'rank10' not in circle_report


def test_cmc_tied_distractor_does_not_count():
  # Pair (p0 -> p1): score 0; distractor (0, 1) ties at 0, (-1, 0) is at -1:
  # rank 1. Pair (p1 -> p0): score 0; (0, 1) scores 1 > 0, (-1, 0) ties at
  # 0: rank 2.
  probes = np.array([[1.0, 0.0], [0.0, 1.0]])
  distractors = np.array([[0.0, 1.0], [-1.0, 0.0]])
  result = identification.cmc(probes, [7, 7], distractors, max_rank=2)
  np.testing.assert_array_equal(result['cmc'], [0.5, 1.0])


@pytest.fixture(scope='module')
def with_singleton():
  """(probes, labels, distractors, cmc) where identity 2 is a singleton."""
  rng = np.random.default_rng(5)
  probes = rng.normal(size=(9, 4))
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3])
  distractors = rng.normal(size=(30, 4))
  result = identification.cmc(probes, labels, distractors, max_rank=10,
                              block_size=7)
  return probes, labels, distractors, result


def test_cmc_singletons_add_no_pairs(with_singleton):
  probes, labels, distractors, result = with_singleton
  ranks = brute_force_ranks(probes, labels, distractors)
  assert result['num_pairs'] == len(ranks) == 3 * 2 + 2 * 1 + 3 * 2


def test_cmc_matches_brute_force_ranks(with_singleton):
  probes, labels, distractors, result = with_singleton
  ranks = brute_force_ranks(probes, labels, distractors)
  np.testing.assert_allclose(
      result['cmc'], [np.mean(ranks <= k) for k in range(1, 11)])


def test_cmc_without_the_singleton_is_unchanged(with_singleton):
  probes, labels, distractors, result = with_singleton
  keep = labels != 2
  without = identification.cmc(probes[keep], labels[keep], distractors)
  np.testing.assert_array_equal(without['cmc'], result['cmc'])


@pytest.mark.parametrize('labels, kwargs, message', [
    ([0, 1, 2], {}, 'at least 2 probe images.*all 3'),
    ([0, 0], {}, r'probe_labels must have shape.*\(3,\).*\(2,\)'),
    ([0, 0, 1], dict(max_rank=0), 'max_rank must be >= 1, got 0'),
], ids=['all_singletons', 'label_count', 'max_rank_zero'])
def test_cmc_rejects_bad_input(labels, kwargs, message):
  with pytest.raises(ValueError, match=message):
    identification.cmc(np.eye(3), labels, np.eye(3), **kwargs)
