"""Tests for centerloss_jax.losses.diagnostics: `center_diagnostics`.

Each diagnostic is checked against its definition, a weighted batch mean
written in numpy: the distance of each feature to its center before the
update, the norm of its center after it, and how far that center moved.
"""

import functools

import jax
import numpy as np
import pytest

from centerloss_jax import losses

NUM_CLASSES = 4
LABELS = np.array([3, 0, 1, 2, 0, 3, 1, 1, 2, 0, 3, 2], np.int32)


@pytest.fixture(scope='module')
def diagnosed_update():
  """The batch, its centers before and after Eq. 4, and the diagnostics."""
  rng = np.random.default_rng(0)
  features = (LABELS[:, None] + rng.normal(size=(len(LABELS), 3))).astype(
      np.float32)
  weights = rng.uniform(0.5, 2.0, len(LABELS)).astype(np.float32)
  weights[1] = 0.0
  centers = rng.normal(size=(NUM_CLASSES, 3)).astype(np.float32)
  # Compiled: eager dispatch of the update's scan is slow.
  new = np.asarray(jax.jit(functools.partial(losses.update_centers, alpha=0.5))(
      centers, features, LABELS, weights=weights))
  got = losses.center_diagnostics(features, LABELS, centers, new, weights)
  return dict(x=features, w=weights, c=centers, c_new=new, got=got)


def _weighted_mean(run, values):
  return np.sum(run['w'] * values) / np.sum(run['w'])


def test_feature_center_distance_is_the_mean_distance_to_the_old_center(
    diagnosed_update):
  run = diagnosed_update
  distances = np.linalg.norm(run['x'] - run['c'][LABELS], axis=-1)
  np.testing.assert_allclose(run['got']['feature_center_distance'],
                             _weighted_mean(run, distances), rtol=1e-5)


def test_center_norm_is_the_mean_norm_of_the_new_center(diagnosed_update):
  run = diagnosed_update
  norms = np.linalg.norm(run['c_new'][LABELS], axis=-1)
  np.testing.assert_allclose(run['got']['center_norm'],
                             _weighted_mean(run, norms), rtol=1e-5)


def test_center_movement_is_the_mean_distance_moved(diagnosed_update):
  run = diagnosed_update
  moved = np.linalg.norm(run['c_new'][LABELS] - run['c'][LABELS], axis=-1)
  np.testing.assert_allclose(run['got']['center_movement'],
                             _weighted_mean(run, moved), rtol=1e-5)


def test_center_movement_is_positive_after_an_update(diagnosed_update):
  assert float(diagnosed_update['got']['center_movement']) > 0


def test_center_movement_is_zero_without_new_centers(diagnosed_update):
  run = diagnosed_update
  unmoved = losses.center_diagnostics(run['x'], LABELS, run['c'])
  assert float(unmoved['center_movement']) == 0.0


def test_center_loss_bounds_the_squared_mean_distance(diagnosed_update):
  # The center loss is half the mean squared distance, the diagnostic the
  # mean distance: by Jensen, 2 * loss >= distance ** 2.
  run = diagnosed_update
  loss = losses.center_loss(run['x'], LABELS, run['c'], run['w'])
  assert (2 * float(loss)
          >= float(run['got']['feature_center_distance'])**2)
