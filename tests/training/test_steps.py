"""Tests of the train step: parallel modes agree, center loss compacts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import losses
from centerloss_jax.metrics import compactness
from centerloss_jax import training
from centerloss_jax.training import parallel


class _TinyMLP(nn.Module):
  """2-D features from an MLP: the train step's logic at a fraction of the
  compile time of a CNN."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Dense(32)(x))
    features = nn.Dense(2)(x)
    return features, nn.Dense(self.num_classes)(features)


def _mlp_state(num_classes=4, learning_rate=1e-2):
  model = _TinyMLP(num_classes)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optax.sgd(learning_rate, momentum=0.9),
      centers=jnp.zeros((num_classes, 2)), batch_stats={},
      rng=jax.random.key(1))


def _batches(num_batches, batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    labels = rng.integers(0, 4, size=batch_size).astype(np.int32)
    # Class 3 only in the last replica's slice: a per-replica center update
    # would count it wrongly, a global one does not.
    labels[:-2][labels[:-2] == 3] = 1
    labels[-2:] = 3
    weights = np.ones(batch_size, np.float32)
    weights[0] = 0.0  # Padding.
    batches.append({
        'image': rng.normal(size=(batch_size, 8)).astype(np.float32),
        'label': labels, 'weight': weights})
  return batches


def _run_mode(mode, batches):
  dp = parallel.DataParallel.create(mode)
  state = dp.put_state(_mlp_state())
  step = dp.compile_train_step(functools.partial(
      training.steps.train_step,
      objective=training.Objective(center_loss_weight=0.1, center_alpha=0.5)))
  for batch in batches:
    state, metrics = step(state, dp.put_batch(batch))
  return dp.host_state(state), training.trainer.summarize(metrics), state


def test_parallel_modes_give_same_params_and_centers():
  batches = _batches(3)
  reference, reference_metrics, _ = _run_mode('jit', batches)
  assert np.abs(np.asarray(reference.centers)).max() > 0, 'centers never moved'
  for mode in ('pmap', 'shard_map'):
    host, metrics, _ = _run_mode(mode, batches)
    assert int(host.step) == 3
    np.testing.assert_allclose(host.centers, reference.centers, rtol=1e-5,
                               atol=1e-6, err_msg=f'{mode} centers differ')
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6,
                          err_msg=f'{mode} params differ'),
        host.params, reference.params)
    for key in ('cross_entropy', 'center_loss', 'accuracy', 'num_examples'):
      np.testing.assert_allclose(metrics[key], reference_metrics[key],
                                 rtol=1e-5, err_msg=f'{mode} metric {key}')


def test_pmap_replicas_hold_identical_centers():
  _, _, replicated = _run_mode('pmap', _batches(2))
  centers = np.asarray(replicated.centers)
  assert centers.shape[0] == jax.local_device_count()
  for replica in range(1, centers.shape[0]):
    np.testing.assert_array_equal(centers[replica], centers[0])


def test_train_step_counts_and_ignores_invalid_labels():
  state = _mlp_state()
  batch = _batches(1)[0]
  step = jax.jit(functools.partial(
      training.steps.train_step,
      objective=training.Objective(center_loss_weight=0.1, center_alpha=0.5)))
  clean = dict(batch, weight=batch['weight'].copy())
  clean['weight'][[1, 2]] = 0.0
  bad = dict(batch, label=batch['label'].copy())
  bad['label'][[1, 2]] = [-1, 4]
  state_clean, metrics_clean = step(state, clean)
  state = _mlp_state()
  state_bad, metrics_bad = step(state, bad)
  assert int(metrics_bad['invalid_labels']) == 2
  assert int(metrics_clean['invalid_labels']) == 0
  # Equal up to float reassociation (the sort puts the masked rows elsewhere);
  # a label clipped or wrapped into range would move a center by a whole step.
  np.testing.assert_allclose(state_bad.centers, state_clean.centers,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics_bad['cross_entropy'],
                             metrics_clean['cross_entropy'], rtol=1e-6)


@pytest.mark.parametrize('rule,normalize', [('ema', False),
                                             ('paper', True)])
def test_train_step_applies_the_configured_center_variant(rule, normalize):
  # One step from nonzero centers: the step's centers are the variant's
  # update of the features it computed, and its diagnostics their values.
  state = _mlp_state().replace(centers=jnp.asarray(
      np.random.default_rng(3).normal(size=(4, 2)), jnp.float32))
  batch = _batches(1)[0]
  objective = training.Objective(center_loss_weight=0.1, center_alpha=0.5,
                                 center_rule=rule, center_normalize=normalize)
  new_state, metrics = jax.jit(functools.partial(
      training.steps.train_step, objective=objective))(state, batch)
  features, _ = state.apply_fn({'params': state.params}, batch['image'])
  expected = losses.update_centers(
      state.centers, features, batch['label'], alpha=0.5,
      weights=batch['weight'], rule=rule, normalize=normalize)
  np.testing.assert_allclose(new_state.centers, expected, rtol=1e-5,
                             atol=1e-6)
  summary = training.trainer.summarize(metrics)
  diagnostics = losses.center_diagnostics(
      features, batch['label'], state.centers, expected, batch['weight'])
  for name in losses.DIAGNOSTICS:
    np.testing.assert_allclose(summary[name], diagnostics[name], rtol=1e-5,
                               err_msg=name)
  np.testing.assert_allclose(
      summary['center_loss'],
      losses.center_loss(features, batch['label'], state.centers,
                         batch['weight'], normalize=normalize), rtol=1e-5)


def test_unknown_center_rule_is_rejected_when_the_objective_is_built():
  with pytest.raises(ValueError, match=r"rule .*got 'adam'"):
    training.Objective(center_loss_weight=0.1, center_alpha=0.5,
                       center_rule='adam')


def _clustered_data(n, seed):
  """4 classes separable in 2 input dims; 6 more dims of class-independent
  nuisance that a classifier may ignore but center loss must squeeze out."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=n).astype(np.int32)
  corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32) * 2.0
  signal = corners[labels] + 0.3 * rng.normal(size=(n, 2))
  nuisance = 2.0 * rng.normal(size=(n, 6))
  return np.concatenate([signal, nuisance], 1).astype(np.float32), labels


def _train_mlp(center_loss_weight, steps=300):
  state = _mlp_state()
  step = jax.jit(functools.partial(
      training.steps.train_step, objective=training.Objective(
          center_loss_weight=center_loss_weight, center_alpha=0.5)))
  x, y = _clustered_data(steps * 32, seed=1)
  for i in range(steps):
    batch = {'image': x[i * 32:(i + 1) * 32], 'label': y[i * 32:(i + 1) * 32],
             'weight': np.ones(32, np.float32)}
    state, _ = step(state, batch)
  x_test, y_test = _clustered_data(1000, seed=2)
  features, _ = state.apply_fn({'params': state.params}, x_test)
  return compactness.compactness_metrics(np.asarray(features), y_test,
                                        np.asarray(state.centers))


def test_center_loss_shrinks_intra_class_spread():
  softmax_only = _train_mlp(0.0)
  with_center = _train_mlp(1.0)
  message = f'lambda=1: {with_center}, lambda=0: {softmax_only}'
  assert (with_center['intra_class_spread']
          < 0.5 * softmax_only['intra_class_spread']), message
  # Not by merely shrinking every feature: relative to the distance between
  # centers the classes are tighter too.
  assert (with_center['spread_to_separation']
          < 0.85 * softmax_only['spread_to_separation']), message


@pytest.mark.parametrize('mode', ['bogus'])
def test_unknown_parallel_mode_is_rejected(mode):
  with pytest.raises(ValueError, match="'bogus'.*'jit', 'pmap', 'shard_map'"):
    parallel.DataParallel.create(mode)


def test_batch_not_divisible_by_devices_is_rejected():
  dp = parallel.DataParallel.create('pmap')
  with pytest.raises(ValueError, match='12 is not divisible by the 8'):
    dp.check_batch_size(12)
