"""Tests for centerloss_jax.losses.softmax: `softmax_cross_entropy_loss`.

Checked against the cross-entropy written out in numpy, and for the rows it
must ignore: out-of-range labels and weight-0 padding, even when NaN.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import losses


@pytest.fixture(scope='module')
def logits_and_numpy_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5)).astype(np.float32) * 3
  labels = np.array([0, 4, 2, 2], np.int32)
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  return logits, labels, -log_probs[np.arange(4), labels]


def test_per_example_cross_entropy_is_float32_per_row(
    logits_and_numpy_cross_entropy):
  logits, labels, _ = logits_and_numpy_cross_entropy
  out = losses.softmax_cross_entropy_loss(logits, labels, reduction='none')
  assert out.dtype == jnp.float32 and out.shape == (4,)


def test_per_example_cross_entropy_matches_numpy(
    logits_and_numpy_cross_entropy):
  logits, labels, expected = logits_and_numpy_cross_entropy
  np.testing.assert_allclose(
      losses.softmax_cross_entropy_loss(logits, labels, reduction='none'),
      expected, rtol=1e-5)


def test_weighted_mean_cross_entropy_matches_numpy(
    logits_and_numpy_cross_entropy):
  logits, labels, expected = logits_and_numpy_cross_entropy
  weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
  np.testing.assert_allclose(
      losses.softmax_cross_entropy_loss(logits, labels, weights),
      np.sum(weights * expected) / np.sum(weights), rtol=1e-5)


# Row 1: label -1, row 2: label 3 (invalid), row 3: NaN padding of weight 0.
MASKED_ROWS = slice(1, 4)
KEPT_ROWS = [0, 4]


@pytest.fixture(scope='module')
def masked_rows():
  """(logits, labels, weights, per-example CE, its gradient)."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  logits[3] = np.nan  # A padding row.
  labels = np.array([0, -1, 3, 2, 1], np.int32)  # -1 and 3 are invalid.
  weights = np.array([1.0, 1.0, 1.0, 0.0, 1.0], np.float32)
  out = losses.softmax_cross_entropy_loss(logits, labels, weights,
                                          reduction='none')
  grad = jax.jit(jax.grad(lambda z: jnp.sum(
      losses.softmax_cross_entropy_loss(z, labels, weights,
                                        reduction='none'))))(logits)
  return logits, labels, weights, np.asarray(out), np.asarray(grad)


def test_invalid_and_padding_rows_have_zero_cross_entropy(masked_rows):
  *_, out, _ = masked_rows
  np.testing.assert_array_equal(out[MASKED_ROWS], 0.0)


def test_invalid_and_padding_rows_leave_the_other_rows_alone(masked_rows):
  logits, labels, _, out, _ = masked_rows
  np.testing.assert_allclose(
      out[KEPT_ROWS],
      losses.softmax_cross_entropy_loss(logits[KEPT_ROWS], labels[KEPT_ROWS],
                                        reduction='none'),
      rtol=1e-6)


def test_gradient_is_finite_with_a_nan_padding_row(masked_rows):
  *_, grad = masked_rows
  assert np.all(np.isfinite(grad)), grad


def test_invalid_and_padding_rows_get_zero_gradient(masked_rows):
  *_, grad = masked_rows
  np.testing.assert_array_equal(grad[MASKED_ROWS], 0.0)


def test_mean_is_over_the_valid_unpadded_rows(masked_rows):
  logits, labels, weights, out, _ = masked_rows
  np.testing.assert_allclose(
      losses.softmax_cross_entropy_loss(logits, labels, weights),
      np.mean(out[KEPT_ROWS]), rtol=1e-6)
