"""Face verification and identification metrics against hand-computed cases."""

from __future__ import annotations

import os

import numpy as np
import pytest

from centerloss_jax.metrics import identification
from centerloss_jax.metrics import verification
from centerloss_jax.reporting import plots


def pairs_with_scores(scores):
  """(left, right) 2-D features whose row-wise cosines are `scores`."""
  angles = np.arccos(np.asarray(scores, np.float64))
  left = np.tile([1.0, 0.0], (len(angles), 1))
  right = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return left, right


def unit_at_degrees(degrees):
  radians = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# ----------------------------------------------------------------- features


def test_mirror_concat_puts_mirror_after_image():
  features = np.array([[1.0, 2.0], [3.0, 4.0]])
  mirrored = np.array([[5.0, 6.0], [7.0, 8.0]])
  np.testing.assert_array_equal(
      verification.mirror_concat(features, mirrored),
      [[1, 2, 5, 6], [3, 4, 7, 8]])
  with pytest.raises(ValueError, match=r'\(2, 2\) and \(2, 3\)'):
    verification.mirror_concat(features, np.zeros((2, 3)))


def test_fit_pca_matches_svd_and_reproduces_projection():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(20, 5)) * [5.0, 3.0, 2.0, 1.0, 0.5] + 7.0
  pca = verification.fit_pca(features, 3)
  centered = features - features.mean(axis=0)
  _, singular_values, vt = np.linalg.svd(centered, full_matrices=False)
  np.testing.assert_allclose(pca.mean, features.mean(axis=0))
  # Same directions as the SVD, up to each component's sign.
  np.testing.assert_allclose(np.abs(pca.components.T @ vt[:3].T), np.eye(3),
                             atol=1e-10)
  np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(3),
                             atol=1e-12)
  projected = pca.transform(features)
  assert projected.shape == (20, 3)
  # Variance along each kept component is the squared singular value / N.
  np.testing.assert_allclose(np.sum(projected**2, axis=0),
                             singular_values[:3]**2)
  # Deterministic signs: each component's largest entry is positive.
  largest = np.argmax(np.abs(pca.components), axis=0)
  assert np.all(pca.components[largest, np.arange(3)] > 0)


def test_fit_pca_rejects_bad_dims():
  features = np.zeros((4, 3))
  with pytest.raises(ValueError, match=r'dim=5 exceeds the feature dim.*D=3'):
    verification.fit_pca(np.zeros((10, 3)), 5)
  with pytest.raises(ValueError, match=r'dim=3 exceeds the number of samp.*'
                     r'N=2'):
    verification.fit_pca(np.zeros((2, 6)), 3)
  with pytest.raises(ValueError, match=r'dim must be >= 1, got dim=0'):
    verification.fit_pca(features, 0)
  pca = verification.fit_pca(np.eye(3), 2)
  with pytest.raises(ValueError, match=r'3 columns.*\(1, 4\)'):
    pca.transform(np.zeros((1, 4)))


def test_cosine_scores_by_hand_and_zero_vectors():
  a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
  b = np.array([[0.0, 1.0], [6.0, 8.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])
  scores = verification.cosine_scores(a, b)
  np.testing.assert_allclose(scores, [0.0, 1.0, 0.0, 0.0, -1.0])
  assert np.all(np.isfinite(scores))
  with pytest.raises(ValueError, match=r'same shape.*\(5, 2\) and \(4, 2\)'):
    verification.cosine_scores(a, b[:4])


# ---------------------------------------------------------- best threshold


def test_best_threshold_unique_optimum():
  scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
  is_same = [True, True, False, True, True, False]
  # Accepting all but 0.4 gets 5/6 (only the 0.7 different pair wrong); every
  # other split gets at most 4/6.
  threshold = verification.best_threshold(scores, is_same)
  assert threshold == pytest.approx(0.45)
  assert verification.verification_accuracy(scores, is_same,
                                            threshold) == pytest.approx(5 / 6)


def test_best_threshold_tie_takes_smallest():
  scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
  is_same = [True, True, False, True, False, False]
  # 0.75 and 0.55 both get 5/6; the smaller one is returned.
  assert verification.best_threshold(scores, is_same) == pytest.approx(0.55)


def test_best_threshold_extremes():
  scores = np.array([0.3, -0.2, 0.9])
  # All same: accept everything, so the lowest score itself.
  assert verification.best_threshold(scores, [True] * 3) == -0.2
  # All different: reject everything, just above the highest score.
  threshold = verification.best_threshold(scores, [False] * 3)
  assert threshold > 0.9 and threshold == np.nextafter(0.9, 1.0)


def test_best_threshold_matches_brute_force():
  rng = np.random.default_rng(1)
  scores = np.round(rng.normal(size=60), 1)  # Many ties.
  is_same = rng.random(60) < 0.5
  threshold = verification.best_threshold(scores, is_same)
  grid = np.concatenate([np.unique(scores), [np.inf]])
  best = max(np.mean((scores >= t) == is_same) for t in grid)
  assert verification.verification_accuracy(scores, is_same,
                                            threshold) == best


def test_best_threshold_rejects_bad_input():
  with pytest.raises(ValueError, match=r'shape \(P,\).*\(3,\) and \(2,\)'):
    verification.best_threshold([0.1, 0.2, 0.3], [True, False])
  with pytest.raises(ValueError, match='at least one pair'):
    verification.best_threshold([], [])
  with pytest.raises(ValueError, match='finite.*1 NaN'):
    verification.best_threshold([0.1, np.nan], [True, False])


# -------------------------------------------------------- k-fold protocol


def test_kfold_two_folds_by_hand():
  # Fold 0: 0.9 S, 0.7 S, 0.3 D. Fold 1: 0.8 S, 0.55 D, 0.2 D.
  # Threshold for fold 0, from fold 1: 0.675 (3/3) -> fold 0 all right.
  # Threshold for fold 1, from fold 0: 0.5 (3/3) -> 0.55 D accepted, 2/3.
  left, right = pairs_with_scores([0.9, 0.7, 0.3, 0.8, 0.55, 0.2])
  is_same = [True, True, False, True, False, False]
  fold = [0, 0, 0, 1, 1, 1]
  result = verification.kfold_verification(left, right, is_same, fold)
  np.testing.assert_allclose(result['thresholds'], [0.675, 0.5])
  np.testing.assert_allclose(result['fold_accuracies'], [1.0, 2 / 3])
  assert result['accuracy'] == pytest.approx(5 / 6)
  assert result['accuracy_std'] == pytest.approx(1 / 6)  # ddof = 0.
  np.testing.assert_allclose(result['scores'],
                             [0.9, 0.7, 0.3, 0.8, 0.55, 0.2])


def _offset_line_pairs():
  """Pairs whose identity is the sign of x, all sharing a y offset of 100.

  Raw cosines are dominated by the offset (the angle is about x / 100), so
  the different pair (1, -1) looks more alike than the same pair (1, 4).
  PCA to 1-D centers away the offset and keeps x; the cosine of 1-D features
  is the product of their signs: +1 for same pairs, -1 for different.
  """
  xs = [(1, 4), (-1, -4), (1, -1), (-2, 2),  # Fold 0: S, S, D, D.
        (2, 3), (-3, -2), (3, -3), (-1, 1)]  # Fold 1: S, S, D, D.
  left = np.array([[a, 100.0] for a, _ in xs])
  right = np.array([[b, 100.0] for _, b in xs])
  is_same = np.array([True, True, False, False] * 2)
  fold = np.repeat([0, 1], 4)
  return left, right, is_same, fold


def test_kfold_pca_removes_shared_offset():
  left, right, is_same, fold = _offset_line_pairs()
  raw = verification.kfold_verification(left, right, is_same, fold)
  assert raw['accuracy'] < 1.0
  result = verification.kfold_verification(left, right, is_same, fold,
                                           pca_dim=1)
  np.testing.assert_allclose(result['scores'], np.where(is_same, 1.0, -1.0))
  np.testing.assert_allclose(result['thresholds'], [0.0, 0.0], atol=1e-12)
  np.testing.assert_array_equal(result['fold_accuracies'], [1.0, 1.0])
  assert result['accuracy_std'] == 0.0


def test_kfold_fits_pca_on_training_folds_only(monkeypatch):
  left, right, is_same, fold = _offset_line_pairs()
  fitted_on = []
  original_fit_pca = verification.fit_pca

  def recording_fit_pca(features, dim):
    fitted_on.append(np.array(features))
    return original_fit_pca(features, dim)

  monkeypatch.setattr(verification, 'fit_pca', recording_fit_pca)
  verification.kfold_verification(left, right, is_same, fold, pca_dim=1)
  assert len(fitted_on) == 2
  for k, features in enumerate(fitted_on):
    train = fold != k
    np.testing.assert_array_equal(
        features, np.concatenate([left[train], right[train]]))


def test_kfold_rejects_bad_input():
  left, right = pairs_with_scores([0.9, 0.1, 0.5, 0.2])
  is_same = [True, False, True, False]
  with pytest.raises(ValueError, match='at least 2 folds, got 1'):
    verification.kfold_verification(left, right, is_same, [0, 0, 0, 0])
  with pytest.raises(ValueError, match='fold 1 has none'):
    verification.kfold_verification(left, right, is_same, [0, 0, 2, 2])
  with pytest.raises(ValueError, match=r'same shape.*\(4, 2\) and \(3, 2\)'):
    verification.kfold_verification(left, right[:3], is_same, [0, 0, 1, 1])
  with pytest.raises(ValueError, match=r'is_same must have shape.*\(4,\)'):
    verification.kfold_verification(left, right, is_same[:3], [0, 0, 1, 1])
  with pytest.raises(ValueError, match=r'fold must have shape.*\(4,\)'):
    verification.kfold_verification(left, right, is_same, [0, 1])
  with pytest.raises(ValueError, match='integer fold ids'):
    verification.kfold_verification(left, right, is_same, [0., 0., 1., 1.])
  with pytest.raises(ValueError, match=r'dim=3 exceeds the number.*N=2'):
    # One training pair per fold: 2 feature rows, fewer than pca_dim=3.
    verification.kfold_verification(
        np.zeros((2, 4)), np.ones((2, 4)), [True, False], [0, 1], pca_dim=3)


# ----------------------------------------------------------------- ROC


ROC_SCORES = [0.9, 0.8, 0.8, 0.5, 0.3]
ROC_SAME = [True, False, True, True, False]


def test_roc_curve_by_hand():
  far, tar, thresholds = verification.roc_curve(ROC_SCORES, ROC_SAME)
  # The tied 0.8 pair (one same, one different) is a single diagonal step.
  np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 1, 1])
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.5, 0.3])


def test_roc_auc_by_hand_and_mann_whitney():
  far, tar, _ = verification.roc_curve(ROC_SCORES, ROC_SAME)
  # Trapezoids: 0.5 * (1/3 + 2/3) / 2 + 0.5 * 1 = 0.75; Mann-Whitney: of the
  # 6 (same, different) score pairs 4 are ordered right and 1 tied -> 4.5/6.
  assert verification.roc_auc(far, tar) == pytest.approx(0.75)
  rng = np.random.default_rng(2)
  scores = np.round(rng.normal(size=50), 1)
  is_same = rng.random(50) < 0.4
  positives, negatives = scores[is_same], scores[~is_same]
  wins = (positives[:, None] > negatives[None]).mean()
  ties = (positives[:, None] == negatives[None]).mean()
  assert verification.roc_auc(*verification.roc_curve(scores, is_same)[:2]
                              ) == pytest.approx(wins + ties / 2)


@pytest.mark.parametrize('order, expected_auc', [('perfect', 1.0),
                                                  ('random', 0.5),
                                                  ('inverted', 0.0)])
def test_roc_auc_reference_classifiers(order, expected_auc):
  is_same = np.array([True, False] * 4)
  if order == 'perfect':
    scores = np.where(is_same, 1.0, 0.0) + np.arange(8) * 0.01
  elif order == 'inverted':
    scores = np.where(is_same, 0.0, 1.0) + np.arange(8) * 0.01
  else:  # Every score equal: a coin flip.
    scores = np.zeros(8)
  far, tar, _ = verification.roc_curve(scores, is_same)
  assert verification.roc_auc(far, tar) == pytest.approx(expected_auc)


def test_roc_rejects_bad_input():
  with pytest.raises(ValueError, match='got 2 same and 0 different'):
    verification.roc_curve([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match='non-decreasing'):
    verification.roc_auc([0.0, 1.0, 0.5], [0.0, 1.0, 1.0])
  with pytest.raises(ValueError, match=r'shapes \(2,\) and \(3,\)'):
    verification.roc_auc([0.0, 1.0], [0.0, 1.0, 1.0])


# ---------------------------------------------------------------- TAR@FAR


def test_tar_at_far_ties_and_unmeasurable_targets():
  # 3 same pairs; 10 different pairs, two of them tied at 0.8 with a same one.
  positives = [0.9, 0.8, 0.7]
  negatives = [0.8, 0.8, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]
  scores = positives + negatives
  is_same = [True] * 3 + [False] * 10
  result = verification.tar_at_far(scores, is_same,
                                   fars=(0.1, 0.2, 0.3, 0.05, 1.0))
  # FAR 0.1 allows one false accept, but accepting the 0.8 same pair accepts
  # both 0.8 different pairs (ties are accepted together): only 0.9 passes.
  assert result[0.1] == pytest.approx(1 / 3)
  # FAR 0.2 admits both tied negatives, so 0.8 and then 0.7 pass.
  assert result[0.2] == pytest.approx(1.0)
  assert result[0.3] == pytest.approx(1.0)
  assert result[1.0] == pytest.approx(1.0)
  # 0.05 < 1 / 10 negatives: not measurable.
  assert result[0.05] is None


def test_tar_at_far_exact_budget_and_defaults():
  # 1000 negatives: FAR 1e-3 allows exactly one false accept (despite float
  # rounding of 1e-3 * 1000); 1e-4 and below are not measurable.
  negatives = np.linspace(-1, 0.5, 1000)
  positives = np.array([0.9, 0.6, 0.55])
  scores = np.concatenate([positives, negatives])
  is_same = np.arange(1003) < 3
  result = verification.tar_at_far(scores, is_same)
  assert list(result) == [1e-3, 1e-4, 1e-5, 1e-6]
  assert result[1e-3] == pytest.approx(1.0)  # The 0.5 negative is the one.
  assert result[1e-4] is None and result[1e-6] is None
  # 0.29 * 100 is 28.999999999999996 in floats; the budget is still 29
  # false accepts, which admits the 0.705 same pair (29 negatives >= 0.71).
  scores = np.concatenate([[0.995, 0.705], np.arange(100) / 100])
  is_same = np.arange(102) < 2
  assert verification.tar_at_far(scores, is_same, (0.29,))[0.29] == 1.0
  assert verification.tar_at_far(scores, is_same, (0.28,))[0.28] == 0.5
  with pytest.raises(ValueError, match=r'\(0, 1\], got 0'):
    verification.tar_at_far(scores, is_same, fars=(0,))


# ----------------------------------------------------------------- report


def test_verification_report_is_flat_floats_and_consistent():
  rng = np.random.default_rng(3)
  left = rng.normal(size=(40, 6))
  is_same = np.arange(40) % 2 == 0
  right = np.where(is_same[:, None], left + 0.8 * rng.normal(size=(40, 6)),
                   rng.normal(size=(40, 6)))
  fold = np.arange(40) % 4
  report = verification.verification_report(left, right, is_same, fold,
                                            fars=(0.1, 0.05, 0.01))
  # 20 different pairs: 0.1 and 0.05 are measurable, 0.01 is not.
  assert list(report) == ['accuracy', 'accuracy_std', 'auc',
                          'tar_at_far_1e-01', 'tar_at_far_5e-02', 'num_pairs']
  assert all(type(value) is float for value in report.values())
  assert report['num_pairs'] == 40.0
  scores = verification.cosine_scores(left, right)
  far, tar, _ = verification.roc_curve(scores, is_same)
  assert report['auc'] == pytest.approx(verification.roc_auc(far, tar))
  assert report['tar_at_far_1e-01'] == pytest.approx(
      verification.tar_at_far(scores, is_same, (0.1,))[0.1])
  kfold = verification.kfold_verification(left, right, is_same, fold)
  assert report['accuracy'] == kfold['accuracy']


def test_verification_report_with_pca_uses_out_of_fold_scores():
  left, right, is_same, fold = _offset_line_pairs()
  report = verification.verification_report(left, right, is_same, fold,
                                            pca_dim=1, fars=(0.25,))
  # Out-of-fold PCA scores separate perfectly; raw cosines would not.
  assert report['auc'] == 1.0 and report['tar_at_far_2.5e-01'] == 1.0
  raw_far, raw_tar, _ = verification.roc_curve(
      verification.cosine_scores(left, right), is_same)
  assert verification.roc_auc(raw_far, raw_tar) < 1.0


def test_plot_roc_writes_png_atomically(tmp_path):
  far, tar, _ = verification.roc_curve(ROC_SCORES, ROC_SAME)
  path = str(tmp_path / 'roc.png')
  fig = plots.plot_roc({'a': (far, tar), 'b': (far, tar ** 2)},
                              path=path, title='LFW')
  (ax,) = fig.axes
  assert ax.get_xscale() == 'log'
  assert len(ax.get_lines()) == 2
  assert ax.get_title() == 'LFW'
  assert os.listdir(tmp_path) == ['roc.png']  # No temporary file left.
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='at least one curve'):
    plots.plot_roc({})


# ---------------------------------------------------------- identification


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


def test_top_distractor_scores_pads_and_validates():
  probes = np.array([[1.0, 0.0]])
  distractors = np.array([[0.0, 1.0], [1.0, 1.0]])
  top = identification.top_distractor_scores(probes, distractors, k=3,
                                             block_size=1)
  np.testing.assert_allclose(top, [[np.sqrt(0.5), 0.0, -np.inf]])
  no_distractors = identification.top_distractor_scores(
      probes, np.zeros((0, 2)), k=2)
  np.testing.assert_array_equal(no_distractors, [[-np.inf, -np.inf]])
  with pytest.raises(ValueError, match='k must be >= 1, got 0'):
    identification.top_distractor_scores(probes, distractors, k=0)
  with pytest.raises(ValueError, match='block_size must be >= 1, got 0'):
    identification.top_distractor_scores(probes, distractors, k=1,
                                         block_size=0)
  with pytest.raises(ValueError, match=r'D = 2 columns.*\(2, 3\)'):
    identification.top_distractor_scores(probes, np.zeros((2, 3)), k=1)
  with pytest.raises(ValueError, match='distractor_features must be finite'):
    identification.top_distractor_scores(probes, [[np.nan, 1.0]], k=1)


def test_cmc_three_probes_four_distractors_by_hand():
  # Unit vectors on a circle: cosine order is angular-distance order.
  # Probes of one identity at 0, 10 and 40 degrees; distractors at -8, 25,
  # -30 and 180. Distractors closer to p than its mate m (by angle):
  #   p=0:  m=10 (10): -8        -> rank 2;  m=40 (40): -8, 25, -30 -> 4
  #   p=10: m=0  (10): none      -> rank 1;  m=40 (30): -8, 25      -> 3
  #   p=40: m=0  (40): 25        -> rank 2;  m=10 (30): 25          -> 2
  probes = unit_at_degrees([0, 10, 40]) * [[1.0], [2.0], [0.5]]
  distractors = unit_at_degrees([-8, 25, -30, 180])
  result = identification.cmc(probes, ['a', 'a', 'a'], distractors,
                              max_rank=3, block_size=3)
  assert result['num_pairs'] == 6
  assert result['rank1'] == pytest.approx(1 / 6)
  np.testing.assert_allclose(result['cmc'], [1 / 6, 4 / 6, 5 / 6])
  report = identification.identification_report(
      probes, ['a', 'a', 'a'], distractors, max_rank=5)
  assert report == pytest.approx({'rank1': 1 / 6, 'rank5': 1.0,
                                  'num_pairs': 6.0, 'num_distractors': 4.0})
  assert 'rank10' not in report


def test_cmc_tied_distractor_does_not_count():
  # Pair (p0 -> p1): score 0; distractor (0, 1) ties at 0, (-1, 0) is at -1:
  # rank 1. Pair (p1 -> p0): score 0; (0, 1) scores 1 > 0, (-1, 0) ties at
  # 0: rank 2.
  probes = np.array([[1.0, 0.0], [0.0, 1.0]])
  distractors = np.array([[0.0, 1.0], [-1.0, 0.0]])
  result = identification.cmc(probes, [7, 7], distractors, max_rank=2)
  np.testing.assert_array_equal(result['cmc'], [0.5, 1.0])


def test_cmc_singletons_add_no_pairs_and_match_brute_force():
  rng = np.random.default_rng(5)
  probes = rng.normal(size=(9, 4))
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3])  # Identity 2 is a singleton.
  distractors = rng.normal(size=(30, 4))
  result = identification.cmc(probes, labels, distractors, max_rank=10,
                              block_size=7)
  ranks = brute_force_ranks(probes, labels, distractors)
  assert result['num_pairs'] == len(ranks) == 3 * 2 + 2 * 1 + 3 * 2
  np.testing.assert_allclose(
      result['cmc'], [np.mean(ranks <= k) for k in range(1, 11)])
  # Dropping the singleton changes nothing.
  keep = labels != 2
  without = identification.cmc(probes[keep], labels[keep], distractors)
  np.testing.assert_array_equal(without['cmc'], result['cmc'])


def test_cmc_rejects_bad_input():
  probes = np.eye(3)
  with pytest.raises(ValueError, match='at least 2 probe images.*all 3'):
    identification.cmc(probes, [0, 1, 2], np.eye(3))
  with pytest.raises(ValueError, match=r'probe_labels must have shape.*\(3,\)'
                     r'.*\(2,\)'):
    identification.cmc(probes, [0, 0], np.eye(3))
  with pytest.raises(ValueError, match='max_rank must be >= 1, got 0'):
    identification.cmc(probes, [0, 0, 1], np.eye(3), max_rank=0)
