"""Face verification metrics (LFW protocol) on extracted features, in numpy.

The paper's test pipeline (Wen et al. 2016, Sec. 4.3): the feature of a face
is that of the image concatenated with that of its horizontal mirror
(`mirror_concat`), optionally reduced by PCA, and two faces are compared by
the cosine of their features (`cosine_scores`). A pair is declared "same
identity" when `score >= threshold`.

On top of that:

* `kfold_verification` is the LFW 10-fold protocol: per fold, PCA and the
  threshold are fitted on the other folds only, accuracy is measured on the
  fold itself; mean and std over folds.
* `roc_curve`, `roc_auc` and `tar_at_far` describe the whole trade-off between
  false accepts and true accepts (`tar_on_far_grid` reads a curve at fixed
  FARs, to average runs), `verification_report` flattens everything
  into a dict of floats for metric writers (`reporting.plots.plot_roc`
  draws the curves).

Everything runs on the host: features are (pairs, dim) arrays, small next to
the network that produced them, and float64 keeps ties and thresholds exact
enough to test by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

DEFAULT_FARS = (1e-3, 1e-4, 1e-5, 1e-6)


def as_features(features, name: str, dtype=np.float64) -> np.ndarray:
  """(N, D) array of at least `dtype`'s precision, or ValueError naming it.

  Shared with `identification`, which keeps float32 (its matmuls against a
  million distractors are the cost); verification computes in float64.
  """
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f'{name} must have shape (N, D), got shape '
                     f'{features.shape}.')
  return features.astype(np.result_type(features.dtype, dtype), copy=False)


def _as_pairs(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
  """Checked float64 scores and boolean labels, both (P,), P >= 1."""
  scores = np.asarray(scores, np.float64)
  is_same = np.asarray(is_same)
  if scores.ndim != 1 or is_same.shape != scores.shape:
    raise ValueError(f'scores and is_same must both have shape (P,), got '
                     f'shapes {scores.shape} and {is_same.shape}.')
  if scores.size == 0:
    raise ValueError('scores must hold at least one pair, got 0.')
  if not np.all(np.isfinite(scores)):
    raise ValueError(f'scores must be finite, got '
                     f'{np.count_nonzero(~np.isfinite(scores))} NaN/inf.')
  return scores, is_same.astype(bool)


def mirror_concat(features, mirrored_features) -> np.ndarray:
  """The paper's test feature: an image's feature next to its mirror's.

  Concatenating the features of the image and of its horizontal flip makes
  the representation (nearly) invariant to the pose's left/right asymmetry,
  at the cost of twice the dimension (which PCA can then reduce).

  Args:
    features: (N, D) features of the images.
    mirrored_features: (N, D) features of the same images flipped
      horizontally, in the same order.

  Returns:
    (N, 2D) array, `[features, mirrored_features]` along the last axis.

  Raises:
    ValueError: if the two arrays are not both (N, D) with equal shapes.
  """
  features = np.asarray(features)
  mirrored_features = np.asarray(mirrored_features)
  if features.ndim != 2 or mirrored_features.shape != features.shape:
    raise ValueError(
        f'features and mirrored_features must both have shape (N, D), got '
        f'shapes {features.shape} and {mirrored_features.shape}.')
  return np.concatenate([features, mirrored_features], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class Pca:
  """A fitted PCA projection (no whitening).

  Attributes:
    mean: (D,) mean of the features it was fitted on.
    components: (D, dim) orthonormal principal directions, by decreasing
      variance, as columns.
  """
  mean: np.ndarray
  components: np.ndarray

  @property
  def dim(self) -> int:
    """The output dimension."""
    return self.components.shape[1]

  def transform(self, x) -> np.ndarray:
    """Projects (N, D) features to (N, dim): `(x - mean) @ components`.

    Raises:
      ValueError: if `x` is not (N, D) with the fitted D.
    """
    x = as_features(x, 'x')
    if x.shape[1] != self.mean.shape[0]:
      raise ValueError(f'x must have {self.mean.shape[0]} columns (the '
                       f'dimension PCA was fitted on), got shape {x.shape}.')
    return (x - self.mean) @ self.components


def fit_pca(features, dim: int) -> Pca:
  """Fits PCA: the mean and the top-`dim` right singular vectors.

  Centering is part of the model, and it matters for cosine scoring: it
  removes the offset that all features share, which would otherwise make
  every pair look similar.

  Each component's sign is fixed so that its largest-magnitude entry is
  positive, so that the fit is deterministic (an SVD's signs are not).

  Args:
    features: (N, D) training features.
    dim: output dimension, 1 <= dim <= min(N, D).

  Returns:
    The fitted `Pca`.

  Raises:
    ValueError: if `features` is not 2-D or `dim` is out of range.
  """
  features = as_features(features, 'features')
  num_samples, feature_dim = features.shape
  if dim < 1:
    raise ValueError(f'PCA dim must be >= 1, got dim={dim}.')
  if dim > feature_dim:
    raise ValueError(f'PCA dim={dim} exceeds the feature dimension '
                     f'D={feature_dim}.')
  if dim > num_samples:
    raise ValueError(f'PCA dim={dim} exceeds the number of samples '
                     f'N={num_samples} it is fitted on.')
  mean = features.mean(axis=0)
  _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
  components = vt[:dim].T
  largest = np.argmax(np.abs(components), axis=0)
  signs = np.sign(components[largest, np.arange(dim)])
  signs[signs == 0] = 1.0
  return Pca(mean=mean, components=components * signs)


def cosine_scores(features_a, features_b) -> np.ndarray:
  """Row-wise cosine similarity of two (P, D) arrays.

  A zero vector has no direction; its score with anything is defined as 0
  (neither similar nor dissimilar) rather than NaN, so one dead feature does
  not poison the metrics of the whole set.

  Args:
    features_a: (P, D) first feature of each pair.
    features_b: (P, D) second feature of each pair.

  Returns:
    (P,) float64 scores in [-1, 1].

  Raises:
    ValueError: if the shapes differ or are not 2-D.
  """
  features_a = as_features(features_a, 'features_a')
  features_b = as_features(features_b, 'features_b')
  if features_a.shape != features_b.shape:
    raise ValueError(f'features_a and features_b must have the same shape, '
                     f'got {features_a.shape} and {features_b.shape}.')
  norms = (np.linalg.norm(features_a, axis=1)
           * np.linalg.norm(features_b, axis=1))
  dots = np.einsum('pd,pd->p', features_a, features_b)
  return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def _accepted_counts(sorted_scores: np.ndarray,
                     thresholds: np.ndarray) -> np.ndarray:
  """How many of the ascending `sorted_scores` are >= each threshold."""
  return sorted_scores.size - np.searchsorted(sorted_scores, thresholds,
                                              side='left')


def verification_accuracy(scores, is_same, threshold: float) -> float:
  """Fraction of pairs classified right by `score >= threshold`."""
  scores, is_same = _as_pairs(scores, is_same)
  return float(np.mean((scores >= threshold) == is_same))


def best_threshold(scores, is_same) -> float:
  """The threshold that maximises the accuracy of `score >= t` on the pairs.

  The search is exact: accuracy only changes between consecutive distinct
  scores, so the candidates are the midpoints between sorted unique scores,
  plus the two extremes: the lowest score (accept every pair) and the next
  float above the highest (reject every pair). Each candidate's accuracy comes
  from a binary search in the sorted positive and negative scores, so the
  whole search is O(P log P) with no Python loop.

  When several candidates reach the best accuracy, the smallest is returned.

  Args:
    scores: (P,) similarity scores, higher meaning more alike.
    is_same: (P,) booleans, True for pairs of the same identity.

  Returns:
    The chosen threshold.

  Raises:
    ValueError: on mismatched shapes, no pairs, or non-finite scores.
  """
  scores, is_same = _as_pairs(scores, is_same)
  unique = np.unique(scores)
  midpoints = (unique[:-1] + unique[1:]) / 2
  # Two adjacent floats can have a midpoint that rounds down onto the lower
  # one, which would accept it; the upper one splits the same way exactly.
  midpoints = np.where(midpoints > unique[:-1], midpoints, unique[1:])
  candidates = np.concatenate(
      [unique[:1], midpoints, [np.nextafter(unique[-1], np.inf)]])
  positives = np.sort(scores[is_same])
  negatives = np.sort(scores[~is_same])
  correct = (_accepted_counts(positives, candidates)
             + negatives.size - _accepted_counts(negatives, candidates))
  return float(candidates[np.argmax(correct)])


def _check_fold_ids(fold, num_pairs: int) -> tuple[np.ndarray, int]:
  """Integer fold ids 0..K-1 for each pair, K >= 2, none of them empty."""
  fold = np.asarray(fold)
  if num_pairs == 0:
    raise ValueError('k-fold verification needs at least one pair, got 0.')
  if fold.shape != (num_pairs,):
    raise ValueError(f'fold must have shape (P,) = ({num_pairs},), got '
                     f'shape {fold.shape}.')
  if not np.issubdtype(fold.dtype, np.integer):
    raise ValueError(f'fold must hold integer fold ids, got dtype '
                     f'{fold.dtype}.')
  if fold.min() < 0:
    raise ValueError(f'fold ids must be >= 0, got {fold.min()}.')
  num_folds = int(fold.max()) + 1
  if num_folds < 2:
    raise ValueError(f'k-fold verification needs at least 2 folds, got '
                     f'{num_folds}.')
  sizes = np.bincount(fold, minlength=num_folds)
  if np.any(sizes == 0):
    raise ValueError(f'every fold id in 0..{num_folds - 1} must have pairs; '
                     f'fold {int(np.argmin(sizes))} has none.')
  return fold, num_folds


def kfold_verification(left_features, right_features, is_same, fold, *,
                       pca_dim: Optional[int] = None) -> dict:
  """The LFW protocol: threshold (and PCA) from K-1 folds, accuracy on the K-th.

  For each fold k: if `pca_dim` is set, PCA is fitted on the features of
  both sides of the pairs *not* in fold k, and all features are projected;
  pairs are scored by cosine; the threshold maximising accuracy on the other
  folds (`best_threshold`) is applied to fold k. Fold k never influences its
  own PCA or threshold.

  Args:
    left_features: (P, D) features of the first image of each pair.
    right_features: (P, D) features of the second image.
    is_same: (P,) booleans, True for same-identity pairs.
    fold: (P,) integer fold id of each pair, in 0..K-1 (LFW: K = 10).
    pca_dim: output dimension of the per-fold PCA; no PCA when None.

  Returns:
    A dict with `accuracy` (mean of the fold accuracies), `accuracy_std`
    (their population std, ddof=0, as LFW results are conventionally
    reported), `fold_accuracies` (K,), `thresholds` (K,) chosen for each
    fold, and `scores` (P,): each pair's out-of-fold score (under its own
    fold's PCA; plain cosines when `pca_dim` is None).

  Raises:
    ValueError: on mismatched shapes, fewer than 2 folds, an empty fold, or
      a `pca_dim` larger than the training features allow.

  Examples:
    Four pairs in two folds; same-identity pairs have cosine 1, the others
    cosine 0, so every fold's threshold separates them:

    >>> import numpy as np
    >>> from centerloss_jax.metrics import verification
    >>> left = np.array([[1., 0.], [1., 0.], [1., 0.], [1., 0.]])
    >>> right = np.array([[2., 0.], [0., 1.], [1., 0.], [0., 3.]])
    >>> is_same = np.array([True, False, True, False])
    >>> fold = np.array([0, 0, 1, 1])
    >>> result = verification.kfold_verification(left, right, is_same, fold)
    >>> print(result['accuracy'], result['accuracy_std'])
    1.0 0.0
    >>> print(result['scores'])
    [1. 0. 1. 0.]
  """
  left_features = as_features(left_features, 'left_features')
  right_features = as_features(right_features, 'right_features')
  if right_features.shape != left_features.shape:
    raise ValueError(
        f'left_features and right_features must have the same shape, got '
        f'{left_features.shape} and {right_features.shape}.')
  num_pairs = left_features.shape[0]
  is_same = np.asarray(is_same)
  if is_same.shape != (num_pairs,):
    raise ValueError(f'is_same must have shape (P,) = ({num_pairs},), got '
                     f'shape {is_same.shape}.')
  is_same = is_same.astype(bool)
  fold, num_folds = _check_fold_ids(fold, num_pairs)

  if pca_dim is None:
    plain_scores = cosine_scores(left_features, right_features)
  fold_accuracies = np.zeros(num_folds)
  thresholds = np.zeros(num_folds)
  out_of_fold_scores = np.zeros(num_pairs)
  for k in range(num_folds):
    test = fold == k
    train = ~test
    if pca_dim is None:
      scores = plain_scores
    else:
      pca = fit_pca(np.concatenate([left_features[train],
                                    right_features[train]]), pca_dim)
      scores = cosine_scores(pca.transform(left_features),
                             pca.transform(right_features))
    thresholds[k] = best_threshold(scores[train], is_same[train])
    fold_accuracies[k] = verification_accuracy(scores[test], is_same[test],
                                               thresholds[k])
    out_of_fold_scores[test] = scores[test]
  return {
      'accuracy': float(fold_accuracies.mean()),
      'accuracy_std': float(fold_accuracies.std(ddof=0)),
      'fold_accuracies': fold_accuracies,
      'thresholds': thresholds,
      'scores': out_of_fold_scores,
  }


def roc_curve(scores, is_same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All distinct operating points of `score >= threshold`.

  Same convention as `sklearn.metrics.roc_curve(..., drop_intermediate=
  False)`: thresholds are the distinct scores in decreasing order, preceded
  by +inf (accept nothing), so the curve starts at (0, 0) and ends at (1, 1).
  Pairs with equal scores are accepted together, so a tie between a positive
  and a negative is one diagonal step, never an optimistic staircase.

  Args:
    scores: (P,) similarity scores.
    is_same: (P,) booleans; both classes must be present.

  Returns:
    `(far, tar, thresholds)`, each (T + 1,) for T distinct scores: the false
    accept rate (FP / negatives) and true accept rate (TP / positives) of
    `score >= thresholds[i]`, FAR and TAR non-decreasing.

  Raises:
    ValueError: on bad shapes, non-finite scores, or a missing class.

  Examples:
    >>> import numpy as np
    >>> from centerloss_jax.metrics import verification
    >>> scores = np.array([0.9, 0.8, 0.3, 0.1])
    >>> is_same = np.array([True, False, True, False])
    >>> far, tar, thresholds = verification.roc_curve(scores, is_same)
    >>> print(far)
    [0.  0.  0.5 0.5 1. ]
    >>> print(tar)
    [0.  0.5 0.5 1.  1. ]
    >>> print(thresholds)
    [inf 0.9 0.8 0.3 0.1]
  """
  scores, is_same = _as_pairs(scores, is_same)
  num_positives = int(np.count_nonzero(is_same))
  num_negatives = is_same.size - num_positives
  if num_positives == 0 or num_negatives == 0:
    raise ValueError(f'an ROC needs both same and different pairs, got '
                     f'{num_positives} same and {num_negatives} different.')
  thresholds = np.unique(scores)[::-1]
  true_accepts = _accepted_counts(np.sort(scores[is_same]), thresholds)
  false_accepts = _accepted_counts(np.sort(scores[~is_same]), thresholds)
  far = np.concatenate([[0.0], false_accepts / num_negatives])
  tar = np.concatenate([[0.0], true_accepts / num_positives])
  return far, tar, np.concatenate([[np.inf], thresholds])


def roc_auc(far, tar) -> float:
  """Area under an ROC curve by the trapezoid rule.

  Args:
    far: (T,) non-decreasing false accept rates, e.g. from `roc_curve`.
    tar: (T,) matching true accept rates.

  Returns:
    The area, in [0, 1] for a curve from (0, 0) to (1, 1); it equals the
    probability that a random same pair outscores a random different pair,
    ties counting one half.

  Raises:
    ValueError: on mismatched shapes, fewer than 2 points, or a decreasing FAR.

  Examples:
    >>> import numpy as np
    >>> from centerloss_jax.metrics import verification
    >>> scores = np.array([0.9, 0.8, 0.3, 0.1])
    >>> is_same = np.array([True, False, True, False])
    >>> far, tar, _ = verification.roc_curve(scores, is_same)
    >>> print(verification.roc_auc(far, tar))
    0.75
  """
  far = np.asarray(far, np.float64)
  tar = np.asarray(tar, np.float64)
  if far.ndim != 1 or tar.shape != far.shape or far.size < 2:
    raise ValueError(f'far and tar must both have shape (T,), T >= 2, got '
                     f'shapes {far.shape} and {tar.shape}.')
  if np.any(np.diff(far) < 0):
    raise ValueError('far must be non-decreasing (as roc_curve returns it).')
  return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def tar_on_far_grid(far, tar, grid) -> np.ndarray:
  """An ROC curve read off at given FARs, for averaging curves over seeds.

  At each grid FAR f, the TAR of the best operating point whose FAR is at
  most f (the step function `tar_at_far` evaluates), so curves of runs on
  the same pairs can be compared and averaged point by point.

  Args:
    far: (T,) non-decreasing false accept rates from `roc_curve`, starting
      at 0.
    tar: (T,) matching true accept rates.
    grid: (G,) FARs to read the curve at, each in [0, 1].

  Returns:
    (G,) TARs.

  Raises:
    ValueError: on mismatched shapes, a decreasing FAR, a curve not
      starting at FAR 0, or a grid value outside [0, 1].
  """
  far = np.asarray(far, np.float64)
  tar = np.asarray(tar, np.float64)
  grid = np.asarray(grid, np.float64)
  if far.ndim != 1 or tar.shape != far.shape or far.size == 0:
    raise ValueError(f'far and tar must both have shape (T,), T >= 1, got '
                     f'shapes {far.shape} and {tar.shape}.')
  if np.any(np.diff(far) < 0) or far[0] != 0:
    raise ValueError('far must be non-decreasing from 0 (as roc_curve '
                     'returns it).')
  if grid.ndim != 1 or np.any((grid < 0) | (grid > 1)):
    raise ValueError(f'grid must be FARs in [0, 1], got {grid!r}.')
  # The slack makes "exactly k false accepts" count, as `tar_at_far` does.
  last = np.searchsorted(far, grid * (1 + 1e-9), side='right') - 1
  return np.maximum.accumulate(tar)[last]


def _max_false_accepts(far: float, num_negatives: int) -> int:
  """How many false accepts a target FAR allows, robust to float rounding."""
  # 1e-3 * 1000 may come out as 0.9999999999999999; the relative slack makes
  # "exactly one false accept" count as one.
  return int(np.floor(far * num_negatives * (1 + 1e-9)))


def tar_at_far(scores, is_same,
               fars: Sequence[float] = DEFAULT_FARS
               ) -> dict[float, Optional[float]]:
  """TAR at target FARs, where the number of different pairs allows.

  For a target FAR f, the operating point is the lowest threshold (the
  highest TAR) whose false accept count is at most `floor(f * negatives)`;
  a pair is accepted when `score >= threshold`, so pairs tied at the
  threshold are accepted together: a positive tied with a negative is only
  accepted if that negative fits in the false-accept budget too.

  A target below 1 / negatives allows no false accept at all and cannot be
  distinguished from FAR = 0 with this many pairs; its entry is None (it
  would need at least 1 / f different pairs).

  Args:
    scores: (P,) similarity scores.
    is_same: (P,) booleans; both classes must be present.
    fars: target false accept rates, each in (0, 1].

  Returns:
    `{far: tar}` for each target, with None where not measurable.

  Raises:
    ValueError: on bad inputs (see `roc_curve`) or a target outside (0, 1].

  Examples:
    With 2 different pairs, FAR 0.5 allows one false accept; FAR 0.1 would
    need 10 different pairs to measure:

    >>> import numpy as np
    >>> from centerloss_jax.metrics import verification
    >>> scores = np.array([0.9, 0.8, 0.3, 0.1])
    >>> is_same = np.array([True, False, True, False])
    >>> print(verification.tar_at_far(scores, is_same, fars=(0.5, 0.1)))
    {0.5: 1.0, 0.1: None}
  """
  far_curve, tar_curve, _ = roc_curve(scores, is_same)
  num_negatives = int(np.count_nonzero(~np.asarray(is_same, bool)))
  false_accepts = np.rint(far_curve * num_negatives)
  result = {}
  for target in fars:
    if not 0 < target <= 1:
      raise ValueError(f'target FARs must be in (0, 1], got {target}.')
    budget = _max_false_accepts(target, num_negatives)
    if budget == 0:
      result[target] = None
      continue
    # The curve is sorted by FAR and TAR never decreases along it, so the
    # last point within budget has the highest TAR.
    last = np.searchsorted(false_accepts, budget, side='right') - 1
    result[target] = float(tar_curve[last])
  return result


def far_key(far: float) -> str:
  """Metric name of a TAR@FAR value, e.g. 'tar_at_far_1e-03'."""
  return 'tar_at_far_' + np.format_float_scientific(far, trim='-',
                                                    exp_digits=2)


def verification_report(left_features, right_features, is_same, fold, *,
                        pca_dim: Optional[int] = None,
                        fars: Sequence[float] = DEFAULT_FARS
                        ) -> dict[str, float]:
  """All verification metrics as a flat dict of floats, for metric writers.

  Accuracy follows `kfold_verification`. The ROC, AUC and TAR@FAR are
  computed from the pooled out-of-fold scores it returns: each pair scored
  under the PCA of the folds it was not part of. With PCA this keeps the ROC
  about the same pipeline as the accuracy, and honest (no pair is scored by a
  projection fitted on it); without PCA these are simply the cosines of the
  features as given.

  Args:
    left_features: (P, D) features of the first image of each pair.
    right_features: (P, D) features of the second image.
    is_same: (P,) booleans, True for same-identity pairs.
    fold: (P,) integer fold ids in 0..K-1.
    pca_dim: per-fold PCA dimension, or None.
    fars: target FARs; only those measurable with this many different pairs
      get an entry.

  Returns:
    `accuracy`, `accuracy_std`, `auc`, `tar_at_far_<f>` (see `far_key`) and
    `num_pairs`.

  Raises:
    ValueError: as `kfold_verification` and `tar_at_far`.
  """
  return verification_report_and_roc(left_features, right_features, is_same,
                                     fold, pca_dim=pca_dim, fars=fars)[0]


def verification_report_and_roc(
    left_features, right_features, is_same, fold, *,
    pca_dim: Optional[int] = None, fars: Sequence[float] = DEFAULT_FARS
    ) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
  """`verification_report` and the ROC `(far, tar)` it was computed from."""
  kfold = kfold_verification(left_features, right_features, is_same, fold,
                             pca_dim=pca_dim)
  far, tar, _ = roc_curve(kfold['scores'], is_same)
  report = {
      'accuracy': kfold['accuracy'],
      'accuracy_std': kfold['accuracy_std'],
      'auc': roc_auc(far, tar),
  }
  for target, value in tar_at_far(kfold['scores'], is_same, fars).items():
    if value is not None:
      report[far_key(target)] = value
  report['num_pairs'] = float(len(kfold['scores']))
  return report, (far, tar)
