"""Test data and float64 references shared by the center-loss tests.

The references are written straight from the paper, in float64 numpy with
explicit loops over classes, and share no code with the library:

  Eq. 2 (weighted mean): L = 0.5 * sum_i w_i ||x_i - c_{y_i}||^2 / sum_i w_i
  Eq. 4: n_j = sum_i w_i [y_i = j],
         delta_c_j = sum_i w_i [y_i = j] (c_j - x_i) / (1 + n_j),
         c_j <- c_j - alpha * delta_c_j
"""

import jax
import jax.extend
import numpy as np

from centerloss_jax import losses as loss_lib

NUM_CLASSES = 7
DIM = 3


# ---------------------------------------------------------------------------
# The paper's formulas, in numpy.
# ---------------------------------------------------------------------------


def reference_center_loss(features, labels, centers, weights=None):
  """Eq. 2 as a weighted mean; out-of-range labels are skipped."""
  features = np.asarray(features, np.float64)
  centers = np.asarray(centers, np.float64)
  if weights is None:
    weights = np.ones(len(labels))
  weights = np.asarray(weights, np.float64)
  total, normaliser = 0.0, 0.0
  for j in range(centers.shape[0]):
    for i in range(len(labels)):
      if labels[i] == j:
        total += weights[i] * np.sum((features[i] - centers[j]) ** 2)
        normaliser += weights[i]
  return 0.5 * total / normaliser if normaliser > 0 else 0.0


def reference_update_centers(centers, features, labels, alpha, weights=None):
  """Eq. 4, one class at a time; out-of-range labels belong to no class."""
  features = np.asarray(features, np.float64)
  centers = np.asarray(centers, np.float64)
  if weights is None:
    weights = np.ones(len(labels))
  weights = np.asarray(weights, np.float64)
  new_centers = centers.copy()
  for j in range(centers.shape[0]):
    numerator = np.zeros(centers.shape[1])
    count = 0.0
    for i in range(len(labels)):
      if labels[i] == j:
        numerator += weights[i] * (centers[j] - features[i])
        count += weights[i]
    delta = numerator / (1.0 + count)
    new_centers[j] = centers[j] - alpha * delta
  return new_centers


# ---------------------------------------------------------------------------
# Test data.
# ---------------------------------------------------------------------------

# Class 2 four times, 5 three times, 0 once, 6 twice but only with weight 0;
# classes 1, 3 and 4 are absent.
LABELS = np.array([2, 5, 2, 0, 6, 2, 5, 6, 2, 5], np.int32)
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 0.25, 1.0, 0.0, 1.0, 3.0],
                   np.float32)
PRESENT = (0, 2, 5, 6)        # Classes with a label in the batch (unweighted).
WEIGHTED_PRESENT = (0, 2, 5)  # Classes with non-zero weight.
ABSENT = tuple(j for j in range(NUM_CLASSES) if j not in WEIGHTED_PRESENT)


def random_batch(seed=0):
  """(features, centers) float32 for LABELS; centers non-zero, distinct."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(len(LABELS), DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return features, centers


def dyadic_batch(labels, seed=0, dim=DIM):
  """Features and centers in multiples of 1/8: their sums are exact."""
  rng = np.random.default_rng(seed)
  features = rng.integers(-16, 16, (len(labels), dim)).astype(np.float32) / 8
  centers = rng.integers(-16, 16, (NUM_CLASSES, dim)).astype(np.float32) / 8
  return features, centers


def random_labels(seed, batch):
  return np.random.default_rng(seed).integers(
      0, NUM_CLASSES, batch).astype(np.int32)


# Compiled once per input signature (eager dispatch of the scan is slow);
# alpha is traced, so the alphas share one compilation.
update = jax.jit(loss_lib.update_centers,
                 static_argnames=('rule', 'normalize', 'axis_name'))
statistics = jax.jit(loss_lib.center_statistics,
                     static_argnames=('num_classes', 'normalize'))
apply_statistics = jax.jit(loss_lib.apply_center_statistics,
                           static_argnames=('rule', 'normalize'))
