"""Tests for centerloss_jax.losses.common: what every loss shares.

The one reduction scheme (`reduction='mean' | 'sum' | 'none'`) as each loss
of the package applies it, the count of out-of-range labels, and the strict
label check.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import losses

NUM_CLASSES = 4
DIM = 3
BATCH = 12
PADDING_ROW = 1


def _batch(seed=0):
  """Every class three times, one weight-0 row, random centers and kernel."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(NUM_CLASSES), BATCH // NUM_CLASSES)
  rng.shuffle(labels)
  features = (labels[:, None] + rng.normal(size=(BATCH, DIM))).astype(
      np.float32)
  weights = rng.uniform(0.5, 2.0, BATCH).astype(np.float32)
  weights[PADDING_ROW] = 0.0
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  kernel = rng.normal(size=(DIM, NUM_CLASSES)).astype(np.float32)
  return features, labels.astype(np.int32), weights, centers, kernel


def _loss_and_normaliser(name):
  """(loss(reduction=...), the normaliser of its 'mean')."""
  features, labels, weights, centers, kernel = _batch()
  if name == 'center':
    return (functools.partial(losses.center_loss, features, labels, centers,
                              weights), np.sum(weights))
  if name == 'softmax':
    return (functools.partial(losses.softmax_cross_entropy_loss,
                              features @ kernel, labels, weights),
            np.sum(weights))
  if name == 'contrastive':
    pair_weights = weights[:, None] * weights[None, :] * ~np.eye(
        BATCH, dtype=bool)
    return (functools.partial(losses.contrastive_loss, features, labels,
                              weights, margin=2.0), np.sum(pair_weights))
  # Every anchor with weight > 0 has a positive and a negative here.
  return (functools.partial(losses.batch_hard_triplet_loss, features, labels,
                            weights, margin=0.5), np.sum(weights))


@pytest.fixture(scope='module',
                params=['center', 'softmax', 'contrastive', 'triplet'])
def reductions(request):
  """One loss's {reduction: value}, its default, normaliser and function."""
  loss, normaliser = _loss_and_normaliser(request.param)
  values = {reduction: np.asarray(loss(reduction=reduction))
            for reduction in losses.REDUCTIONS}
  return dict(values, default=np.asarray(loss()), normaliser=normaliser,
              loss=loss)


def test_none_reduction_gives_one_term_per_example(reductions):
  assert reductions['none'].shape == (BATCH,)


def test_none_reduction_gives_a_padding_row_zero(reductions):
  assert float(reductions['none'][PADDING_ROW]) == 0.0


def test_sum_reduction_is_the_sum_of_the_terms(reductions):
  np.testing.assert_allclose(reductions['sum'], jnp.sum(reductions['none']),
                             rtol=1e-6)


def test_mean_reduction_divides_the_sum_by_the_normaliser(reductions):
  np.testing.assert_allclose(
      reductions['mean'],
      jnp.sum(reductions['none']) / reductions['normaliser'], rtol=1e-6)


def test_default_reduction_is_the_mean(reductions):
  np.testing.assert_array_equal(reductions['default'], reductions['mean'])


def test_unknown_reduction_is_rejected(reductions):
  with pytest.raises(ValueError, match=r"reduction must be one of .*'avg'"):
    reductions['loss'](reduction='avg')


# -1, NUM_CLASSES and NUM_CLASSES + 5 with weight 1; NUM_CLASSES + 1 with 0.
MIXED_LABELS = np.array([2, 3, 2, 1, 3, 2, -1, NUM_CLASSES, NUM_CLASSES + 5,
                         NUM_CLASSES + 1], np.int32)
MIXED_WEIGHTS = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
                         np.float32)


def test_invalid_label_count_counts_every_out_of_range_label():
  assert int(losses.invalid_label_count(MIXED_LABELS, NUM_CLASSES)) == 4, (
      'Without weights every out-of-range label counts.')


def test_invalid_label_count_skips_labels_of_weight_zero():
  assert int(losses.invalid_label_count(MIXED_LABELS, NUM_CLASSES,
                                        MIXED_WEIGHTS)) == 3, (
      'An out-of-range label of weight 0 (padding) must not be counted.')


def test_strict_label_check_catches_one_indexed_labels():
  one_indexed = np.arange(NUM_CLASSES) + 1  # Class NUM_CLASSES does not exist.
  with pytest.raises(ValueError, match=rf'outside \[0, {NUM_CLASSES}\)'):
    losses.common.check_labels_in_range(one_indexed, NUM_CLASSES)
