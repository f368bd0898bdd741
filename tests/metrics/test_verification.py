"""Tests of metrics.verification (pair features, PCA, cosine scores, the
best threshold, the k-fold protocol, ROC, TAR@FAR and the report) against
hand-computed cases."""

import numpy as np
import pytest

from centerloss_jax.metrics import verification


def pairs_with_scores(scores):
  """(left, right) 2-D features whose row-wise cosines are `scores`."""
  angles = np.arccos(np.asarray(scores, np.float64))
  left = np.tile([1.0, 0.0], (len(angles), 1))
  right = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return left, right


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


# ---------------------------------------------------------------------------
# Features: mirror_concat, fit_pca, cosine_scores.
# ---------------------------------------------------------------------------


def test_mirror_concat_puts_mirror_after_image():
  features = np.array([[1.0, 2.0], [3.0, 4.0]])
  mirrored = np.array([[5.0, 6.0], [7.0, 8.0]])
  np.testing.assert_array_equal(
      verification.mirror_concat(features, mirrored),
      [[1, 2, 5, 6], [3, 4, 7, 8]])


def test_mirror_concat_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r'\(2, 2\) and \(2, 3\)'):
    verification.mirror_concat(np.zeros((2, 2)), np.zeros((2, 3)))


@pytest.fixture(scope='module')
def pca_fit():
  """(features, their 3-D PCA, the singular values and right singular
  vectors of the centered features)."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(20, 5)) * [5.0, 3.0, 2.0, 1.0, 0.5] + 7.0
  pca = verification.fit_pca(features, 3)
  centered = features - features.mean(axis=0)
  _, singular_values, vt = np.linalg.svd(centered, full_matrices=False)
  return features, pca, singular_values, vt


def test_fit_pca_mean_is_the_feature_mean(pca_fit):
  features, pca, _, _ = pca_fit
  np.testing.assert_allclose(pca.mean, features.mean(axis=0))


def test_fit_pca_components_are_the_svd_directions(pca_fit):
  # Up to each component's sign.
  _, pca, _, vt = pca_fit
  np.testing.assert_allclose(np.abs(pca.components.T @ vt[:3].T), np.eye(3),
                             atol=1e-10)


def test_fit_pca_components_are_orthonormal(pca_fit):
  _, pca, _, _ = pca_fit
  np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(3),
                             atol=1e-12)


def test_pca_transform_keeps_dim_columns(pca_fit):
  features, pca, _, _ = pca_fit
  assert pca.transform(features).shape == (20, 3)


def test_pca_projection_variance_is_the_squared_singular_values(pca_fit):
  # Variance along each kept component is the squared singular value / N.
  features, pca, singular_values, _ = pca_fit
  np.testing.assert_allclose(np.sum(pca.transform(features)**2, axis=0),
                             singular_values[:3]**2)


def test_fit_pca_signs_make_each_components_largest_entry_positive(pca_fit):
  _, pca, _, _ = pca_fit
  largest = np.argmax(np.abs(pca.components), axis=0)
  assert np.all(pca.components[largest, np.arange(3)] > 0)


@pytest.mark.parametrize('features, dim, message', [
    (np.zeros((10, 3)), 5, r'dim=5 exceeds the feature dim.*D=3'),
    (np.zeros((2, 6)), 3, r'dim=3 exceeds the number of samp.*N=2'),
    (np.zeros((4, 3)), 0, r'dim must be >= 1, got dim=0'),
], ids=['above_feature_dim', 'above_samples', 'zero'])
def test_fit_pca_rejects_a_bad_dim(features, dim, message):
  with pytest.raises(ValueError, match=message):
    verification.fit_pca(features, dim)


def test_pca_transform_rejects_another_feature_dim():
  pca = verification.fit_pca(np.eye(3), 2)
  with pytest.raises(ValueError, match=r'3 columns.*\(1, 4\)'):
    pca.transform(np.zeros((1, 4)))


COSINE_A = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0],
                     [2.0, 0.0]])
COSINE_B = np.array([[0.0, 1.0], [6.0, 8.0], [1.0, 1.0], [0.0, 0.0],
                     [-1.0, 0.0]])


def test_cosine_scores_of_nonzero_vectors_by_hand():
  scores = verification.cosine_scores(COSINE_A, COSINE_B)
  np.testing.assert_allclose(scores[[0, 1, 4]], [0.0, 1.0, -1.0])


def test_cosine_scores_with_a_zero_vector_are_zero():
  scores = verification.cosine_scores(COSINE_A, COSINE_B)
  np.testing.assert_allclose(scores[[2, 3]], [0.0, 0.0])
  assert np.all(np.isfinite(scores))


def test_cosine_scores_reject_mismatched_shapes():
  with pytest.raises(ValueError, match=r'same shape.*\(5, 2\) and \(4, 2\)'):
    verification.cosine_scores(COSINE_A, COSINE_B[:4])


# ---------------------------------------------------------------------------
# best_threshold and verification_accuracy.
# ---------------------------------------------------------------------------

# Accepting all but 0.4 gets 5/6 (only the 0.7 different pair wrong); every
# other split gets at most 4/6.
UNIQUE_OPTIMUM = ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                  [True, True, False, True, True, False])


def test_best_threshold_finds_the_unique_optimum():
  assert verification.best_threshold(*UNIQUE_OPTIMUM) == pytest.approx(0.45)


def test_verification_accuracy_is_the_fraction_decided_right():
  assert verification.verification_accuracy(
      *UNIQUE_OPTIMUM, verification.best_threshold(*UNIQUE_OPTIMUM)
  ) == pytest.approx(5 / 6)


def test_best_threshold_tie_takes_smallest():
  scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
  is_same = [True, True, False, True, False, False]
  # 0.75 and 0.55 both get 5/6; the smaller one is returned.
  assert verification.best_threshold(scores, is_same) == pytest.approx(0.55)


EXTREME_SCORES = np.array([0.3, -0.2, 0.9])


def test_best_threshold_of_only_same_pairs_is_the_lowest_score():
  # Accept everything.
  assert verification.best_threshold(EXTREME_SCORES, [True] * 3) == -0.2


def test_best_threshold_of_only_different_pairs_is_above_the_highest():
  # Reject everything: just above the highest score.
  threshold = verification.best_threshold(EXTREME_SCORES, [False] * 3)
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


@pytest.mark.parametrize('scores, is_same, message', [
    ([0.1, 0.2, 0.3], [True, False], r'shape \(P,\).*\(3,\) and \(2,\)'),
    ([], [], 'at least one pair'),
    ([0.1, np.nan], [True, False], 'finite.*1 NaN'),
], ids=['mismatched', 'empty', 'nan'])
def test_best_threshold_rejects_bad_input(scores, is_same, message):
  with pytest.raises(ValueError, match=message):
    verification.best_threshold(scores, is_same)


# ---------------------------------------------------------------------------
# kfold_verification.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def two_folds():
  # Fold 0: 0.9 S, 0.7 S, 0.3 D. Fold 1: 0.8 S, 0.55 D, 0.2 D.
  # Threshold for fold 0, from fold 1: 0.675 (3/3) -> fold 0 all right.
  # Threshold for fold 1, from fold 0: 0.5 (3/3) -> 0.55 D accepted, 2/3.
  left, right = pairs_with_scores([0.9, 0.7, 0.3, 0.8, 0.55, 0.2])
  is_same = [True, True, False, True, False, False]
  fold = [0, 0, 0, 1, 1, 1]
  return verification.kfold_verification(left, right, is_same, fold)


def test_kfold_thresholds_come_from_the_other_folds(two_folds):
  np.testing.assert_allclose(two_folds['thresholds'], [0.675, 0.5])


def test_kfold_fold_accuracies_by_hand(two_folds):
  np.testing.assert_allclose(two_folds['fold_accuracies'], [1.0, 2 / 3])


def test_kfold_accuracy_is_the_mean_over_folds(two_folds):
  assert two_folds['accuracy'] == pytest.approx(5 / 6)


def test_kfold_accuracy_std_is_over_folds_with_ddof_0(two_folds):
  assert two_folds['accuracy_std'] == pytest.approx(1 / 6)


def test_kfold_scores_are_the_pairs_cosines(two_folds):
  np.testing.assert_allclose(two_folds['scores'],
                             [0.9, 0.7, 0.3, 0.8, 0.55, 0.2])


@pytest.fixture(scope='module')
def offset_pca_kfold():
  left, right, is_same, fold = _offset_line_pairs()
  return verification.kfold_verification(left, right, is_same, fold,
                                         pca_dim=1)


def test_kfold_raw_cosines_of_offset_pairs_are_not_perfect():
  raw = verification.kfold_verification(*_offset_line_pairs())
  assert raw['accuracy'] < 1.0


def test_kfold_pca_scores_are_the_products_of_signs(offset_pca_kfold):
  is_same = _offset_line_pairs()[2]
  np.testing.assert_allclose(offset_pca_kfold['scores'],
                             np.where(is_same, 1.0, -1.0))


def test_kfold_pca_thresholds_are_zero(offset_pca_kfold):
  np.testing.assert_allclose(offset_pca_kfold['thresholds'], [0.0, 0.0],
                             atol=1e-12)


def test_kfold_pca_removes_the_shared_offset_in_every_fold(offset_pca_kfold):
  np.testing.assert_array_equal(offset_pca_kfold['fold_accuracies'],
                                [1.0, 1.0])
  assert offset_pca_kfold['accuracy_std'] == 0.0


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


_KFOLD_LEFT, _KFOLD_RIGHT = pairs_with_scores([0.9, 0.1, 0.5, 0.2])
_KFOLD_SAME = [True, False, True, False]


@pytest.mark.parametrize('left, right, is_same, fold, pca_dim, message', [
    (_KFOLD_LEFT, _KFOLD_RIGHT, _KFOLD_SAME, [0, 0, 0, 0], None,
     'at least 2 folds, got 1'),
    (_KFOLD_LEFT, _KFOLD_RIGHT, _KFOLD_SAME, [0, 0, 2, 2], None,
     'fold 1 has none'),
    (_KFOLD_LEFT, _KFOLD_RIGHT[:3], _KFOLD_SAME, [0, 0, 1, 1], None,
     r'same shape.*\(4, 2\) and \(3, 2\)'),
    (_KFOLD_LEFT, _KFOLD_RIGHT, _KFOLD_SAME[:3], [0, 0, 1, 1], None,
     r'is_same must have shape.*\(4,\)'),
    (_KFOLD_LEFT, _KFOLD_RIGHT, _KFOLD_SAME, [0, 1], None,
     r'fold must have shape.*\(4,\)'),
    (_KFOLD_LEFT, _KFOLD_RIGHT, _KFOLD_SAME, [0., 0., 1., 1.], None,
     'integer fold ids'),
    # One training pair per fold: 2 feature rows, fewer than pca_dim=3.
    (np.zeros((2, 4)), np.ones((2, 4)), [True, False], [0, 1], 3,
     r'dim=3 exceeds the number.*N=2'),
], ids=['one_fold', 'empty_fold', 'right_shape', 'is_same_shape',
        'fold_shape', 'float_folds', 'pca_dim_above_samples'])
def test_kfold_rejects_bad_input(left, right, is_same, fold, pca_dim,
                                 message):
  kwargs = {} if pca_dim is None else dict(pca_dim=pca_dim)
  with pytest.raises(ValueError, match=message):
    verification.kfold_verification(left, right, is_same, fold, **kwargs)


# ---------------------------------------------------------------------------
# roc_curve and roc_auc.
# ---------------------------------------------------------------------------

ROC_SCORES = [0.9, 0.8, 0.8, 0.5, 0.3]
ROC_SAME = [True, False, True, True, False]


def test_roc_curve_rates_by_hand():
  far, tar, _ = verification.roc_curve(ROC_SCORES, ROC_SAME)
  # The tied 0.8 pair (one same, one different) is a single diagonal step.
  np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 1, 1])


def test_roc_curve_thresholds_are_the_distinct_scores_after_inf():
  _, _, thresholds = verification.roc_curve(ROC_SCORES, ROC_SAME)
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.5, 0.3])


def test_roc_auc_by_hand():
  # Trapezoids: 0.5 * (1/3 + 2/3) / 2 + 0.5 * 1 = 0.75; Mann-Whitney: of the
  # 6 (same, different) score pairs 4 are ordered right and 1 tied -> 4.5/6.
  far, tar, _ = verification.roc_curve(ROC_SCORES, ROC_SAME)
  assert verification.roc_auc(far, tar) == pytest.approx(0.75)


def test_roc_auc_is_the_mann_whitney_statistic():
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


def test_roc_curve_needs_same_and_different_pairs():
  with pytest.raises(ValueError, match='got 2 same and 0 different'):
    verification.roc_curve([0.1, 0.2], [True, True])


@pytest.mark.parametrize('far, tar, message', [
    ([0.0, 1.0, 0.5], [0.0, 1.0, 1.0], 'non-decreasing'),
    ([0.0, 1.0], [0.0, 1.0, 1.0], r'shapes \(2,\) and \(3,\)'),
], ids=['decreasing_far', 'mismatched'])
def test_roc_auc_rejects_a_bad_curve(far, tar, message):
  with pytest.raises(ValueError, match=message):
    verification.roc_auc(far, tar)


# ---------------------------------------------------------------------------
# tar_at_far.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tied_tar_at_far():
  # 3 same pairs; 10 different pairs, two of them tied at 0.8 with a same one.
  positives = [0.9, 0.8, 0.7]
  negatives = [0.8, 0.8, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]
  return verification.tar_at_far(positives + negatives,
                                 [True] * 3 + [False] * 10,
                                 fars=(0.1, 0.2, 0.3, 0.05, 1.0))


def test_tar_at_far_accepts_tied_scores_together(tied_tar_at_far):
  # FAR 0.1 allows one false accept, but accepting the 0.8 same pair accepts
  # both 0.8 different pairs: only 0.9 passes.
  assert tied_tar_at_far[0.1] == pytest.approx(1 / 3)


def test_tar_at_far_admits_tied_negatives_within_the_budget(
    tied_tar_at_far):
  # FAR 0.2 admits both tied negatives, so 0.8 and then 0.7 pass.
  assert tied_tar_at_far[0.2] == pytest.approx(1.0)
  assert tied_tar_at_far[0.3] == pytest.approx(1.0)
  assert tied_tar_at_far[1.0] == pytest.approx(1.0)


def test_tar_at_far_below_one_negative_is_unmeasurable(tied_tar_at_far):
  # 0.05 < 1 / 10 negatives.
  assert tied_tar_at_far[0.05] is None


@pytest.fixture(scope='module')
def default_tar_at_far():
  """TAR at the default FARs with 1000 negatives (the highest 0.5)."""
  negatives = np.linspace(-1, 0.5, 1000)
  positives = np.array([0.9, 0.6, 0.55])
  scores = np.concatenate([positives, negatives])
  is_same = np.arange(1003) < 3
  return verification.tar_at_far(scores, is_same)


def test_tar_at_far_defaults_to_1e_3_down_to_1e_6(default_tar_at_far):
  assert list(default_tar_at_far) == [1e-3, 1e-4, 1e-5, 1e-6]


def test_tar_at_far_1e_3_of_1000_negatives_allows_one_false_accept(
    default_tar_at_far):
  # Exactly one, despite float rounding of 1e-3 * 1000: the 0.5 negative.
  assert default_tar_at_far[1e-3] == pytest.approx(1.0)


def test_tar_at_far_below_1e_3_of_1000_negatives_is_unmeasurable(
    default_tar_at_far):
  assert default_tar_at_far[1e-4] is None and default_tar_at_far[1e-6] is None


# 100 negatives 0, 0.01, ... 0.99 and same pairs at 0.995 and 0.705.
BUDGET_SCORES = np.concatenate([[0.995, 0.705], np.arange(100) / 100])
BUDGET_SAME = np.arange(102) < 2


def test_tar_at_far_budget_survives_float_rounding_of_far_times_n():
  # 0.29 * 100 is 28.999999999999996 in floats; the budget is still 29
  # false accepts, which admits the 0.705 same pair (29 negatives >= 0.71).
  assert verification.tar_at_far(BUDGET_SCORES, BUDGET_SAME,
                                 (0.29,))[0.29] == 1.0
  assert verification.tar_at_far(BUDGET_SCORES, BUDGET_SAME,
                                 (0.28,))[0.28] == 0.5


def test_tar_at_far_rejects_a_far_of_zero():
  with pytest.raises(ValueError, match=r'\(0, 1\], got 0'):
    verification.tar_at_far(BUDGET_SCORES, BUDGET_SAME, fars=(0,))


# ---------------------------------------------------------------------------
# verification_report.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def report_inputs():
  """(left, right, is_same, fold, report) of 40 random pairs in 4 folds."""
  rng = np.random.default_rng(3)
  left = rng.normal(size=(40, 6))
  is_same = np.arange(40) % 2 == 0
  right = np.where(is_same[:, None], left + 0.8 * rng.normal(size=(40, 6)),
                   rng.normal(size=(40, 6)))
  fold = np.arange(40) % 4
  report = verification.verification_report(left, right, is_same, fold,
                                            fars=(0.1, 0.05, 0.01))
  return left, right, is_same, fold, report


def test_verification_report_keys_omit_unmeasurable_fars(report_inputs):
  # 20 different pairs: 0.1 and 0.05 are measurable, 0.01 is not.
  report = report_inputs[-1]
  assert list(report) == ['accuracy', 'accuracy_std', 'auc',
                          'tar_at_far_1e-01', 'tar_at_far_5e-02', 'num_pairs']


def test_verification_report_values_are_plain_floats(report_inputs):
  report = report_inputs[-1]
  assert all(type(value) is float for value in report.values())
  assert report['num_pairs'] == 40.0


def test_verification_report_auc_is_the_roc_auc(report_inputs):
  left, right, is_same, _, report = report_inputs
  scores = verification.cosine_scores(left, right)
  far, tar, _ = verification.roc_curve(scores, is_same)
  assert report['auc'] == pytest.approx(verification.roc_auc(far, tar))


def test_verification_report_tar_is_tar_at_far(report_inputs):
  left, right, is_same, _, report = report_inputs
  scores = verification.cosine_scores(left, right)
  assert report['tar_at_far_1e-01'] == pytest.approx(
      verification.tar_at_far(scores, is_same, (0.1,))[0.1])


def test_verification_report_accuracy_is_the_kfold_accuracy(report_inputs):
  left, right, is_same, fold, report = report_inputs
  kfold = verification.kfold_verification(left, right, is_same, fold)
  assert report['accuracy'] == kfold['accuracy']


def test_verification_report_with_pca_uses_out_of_fold_scores():
  # Out-of-fold PCA scores separate the offset pairs perfectly.
  left, right, is_same, fold = _offset_line_pairs()
  report = verification.verification_report(left, right, is_same, fold,
                                            pca_dim=1, fars=(0.25,))
  assert report['auc'] == 1.0 and report['tar_at_far_2.5e-01'] == 1.0


def test_raw_cosines_of_the_offset_pairs_do_not_separate_them():
  left, right, is_same, _ = _offset_line_pairs()
  raw_far, raw_tar, _ = verification.roc_curve(
      verification.cosine_scores(left, right), is_same)
  assert verification.roc_auc(raw_far, raw_tar) < 1.0
