"""The train step: the same in each parallel mode, with the center loss and
the compared losses; invalid labels ignored; the center loss compacts.

The compared losses themselves are tested in tests/losses/; here they run
inside `training.steps.train_step`, where the pair losses see the
all-gathered global batch and the margin losses a cosine head. The model is
a tiny MLP: the step's logic at a fraction of a CNN's compile time.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import losses
from centerloss_jax import models
from centerloss_jax.metrics import compactness
from centerloss_jax import training
from centerloss_jax.training import parallel


class _TinyEmbedder(nn.Module):
  """Features from an MLP; a plain Dense head, or `classifier`'s head
  (linear or cosine) from `models.heads`."""
  num_classes: int = 4
  feature_dim: int = 2
  classifier: Optional[str] = None

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Dense(32)(x))
    features = nn.Dense(self.feature_dim)(x)
    if self.classifier is None:
      return features, nn.Dense(self.num_classes)(features)
    head = models.heads.classifier_head(self.classifier, self.num_classes,
                                        name='classifier', dtype=jnp.float32)
    return features, head(features)


def _state(feature_dim=2, classifier=None):
  model = _TinyEmbedder(feature_dim=feature_dim, classifier=classifier)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optax.sgd(1e-2, momentum=0.9),
      centers=jnp.zeros((4, feature_dim)), batch_stats={},
      rng=jax.random.key(1))


def _batches(num_batches, batch_size=16, seed=0, *, lone_class=False,
             invalid_label=False):
  """Batches of 4 classes, the first example padding.

  lone_class: class 3 only in the last replica's slice (a per-replica center
    update would count it wrongly, a global one does not).
  invalid_label: the second example's label is -1 (no pair, no triplet).
  """
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    labels = rng.integers(0, 4, size=batch_size).astype(np.int32)
    if lone_class:
      labels[:-2][labels[:-2] == 3] = 1
      labels[-2:] = 3
    if invalid_label:
      labels[1] = -1
    weights = np.ones(batch_size, np.float32)
    weights[0] = 0.0  # Padding.
    batches.append({
        'image': rng.normal(size=(batch_size, 8)).astype(np.float32),
        'label': labels, 'weight': weights})
  return batches


def _train(mode, state, objective, batches):
  """(host state, last step's metrics, state as placed) after the batches."""
  dp = parallel.DataParallel.create(mode)
  placed = dp.put_state(state)
  step = dp.compile_train_step(functools.partial(
      training.steps.train_step, objective=objective))
  for batch in batches:
    placed, metrics = step(placed, dp.put_batch(batch))
  return dp.host_state(placed), training.trainer.summarize(metrics), placed


# --- the center loss in each parallel mode ------------------------------------

_CENTER_LOSS = training.Objective(center_loss_weight=0.1, center_alpha=0.5)


@pytest.fixture(scope='module')
def mode_runs():
  batches = _batches(3, lone_class=True)
  return {mode: _train(mode, _state(), _CENTER_LOSS, batches)
          for mode in ('jit', 'pmap', 'shard_map')}


@pytest.mark.slow
def test_the_steps_move_the_centers(mode_runs):
  reference, _, _ = mode_runs['jit']
  assert np.abs(np.asarray(reference.centers)).max() > 0, 'centers never moved'


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_parallel_modes_give_the_params_and_centers_of_jit(mode_runs, mode):
  reference, _, _ = mode_runs['jit']
  host, _, _ = mode_runs[mode]
  assert int(host.step) == 3
  np.testing.assert_allclose(host.centers, reference.centers, rtol=1e-5,
                             atol=1e-6, err_msg=f'{mode} centers differ')
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6,
                        err_msg=f'{mode} params differ'),
      host.params, reference.params)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_parallel_modes_give_the_metrics_of_jit(mode_runs, mode):
  _, reference_metrics, _ = mode_runs['jit']
  _, metrics, _ = mode_runs[mode]
  for key in ('cross_entropy', 'center_loss', 'accuracy', 'num_examples'):
    np.testing.assert_allclose(metrics[key], reference_metrics[key],
                               rtol=1e-5, err_msg=f'{mode} metric {key}')


@pytest.mark.slow
def test_pmap_replicas_hold_identical_centers(mode_runs):
  _, _, replicated = mode_runs['pmap']
  centers = np.asarray(replicated.centers)
  assert centers.shape[0] == jax.local_device_count()
  for replica in range(1, centers.shape[0]):
    np.testing.assert_array_equal(centers[replica], centers[0])


# --- invalid labels -----------------------------------------------------------


@pytest.fixture(scope='module')
def invalid_label_steps():
  """One step on a batch with two labels out of range, and on the same
  batch with those two examples weighted 0: ((state, metrics), (state,
  metrics))."""
  batch = _batches(1, lone_class=True)[0]
  step = jax.jit(functools.partial(training.steps.train_step,
                                   objective=_CENTER_LOSS))
  clean = dict(batch, weight=batch['weight'].copy())
  clean['weight'][[1, 2]] = 0.0
  bad = dict(batch, label=batch['label'].copy())
  bad['label'][[1, 2]] = [-1, 4]
  return step(_state(), bad), step(_state(), clean)


@pytest.mark.slow
def test_invalid_labels_are_counted(invalid_label_steps):
  (_, metrics_bad), (_, metrics_clean) = invalid_label_steps
  assert int(metrics_bad['invalid_labels']) == 2
  assert int(metrics_clean['invalid_labels']) == 0


@pytest.mark.slow
def test_invalid_labels_are_ignored(invalid_label_steps):
  (state_bad, metrics_bad), (state_clean, metrics_clean) = invalid_label_steps
  # Equal up to float reassociation (the sort puts the masked rows elsewhere);
  # a label clipped or wrapped into range would move a center by a whole step.
  np.testing.assert_allclose(state_bad.centers, state_clean.centers,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics_bad['cross_entropy'],
                             metrics_clean['cross_entropy'], rtol=1e-6)


# --- the center-loss variants -------------------------------------------------


@pytest.fixture(scope='module', params=[('ema', False), ('paper', True)],
                ids=['ema', 'paper-normalized'])
def variant_step(request):
  """One step from nonzero centers with a configured variant, and what
  `losses` computes from the features that step saw."""
  rule, normalize = request.param
  state = _state().replace(centers=jnp.asarray(
      np.random.default_rng(3).normal(size=(4, 2)), jnp.float32))
  batch = _batches(1, lone_class=True)[0]
  objective = training.Objective(center_loss_weight=0.1, center_alpha=0.5,
                                 center_rule=rule, center_normalize=normalize)
  new_state, metrics = jax.jit(functools.partial(
      training.steps.train_step, objective=objective))(state, batch)
  features, _ = state.apply_fn({'params': state.params}, batch['image'])
  expected = losses.update_centers(
      state.centers, features, batch['label'], alpha=0.5,
      weights=batch['weight'], rule=rule, normalize=normalize)
  return {'state': state, 'batch': batch, 'features': features,
          'normalize': normalize, 'new_state': new_state,
          'summary': training.trainer.summarize(metrics),
          'expected_centers': expected}


@pytest.mark.slow
def test_the_step_updates_the_centers_by_the_configured_variant(
    variant_step):
  np.testing.assert_allclose(variant_step['new_state'].centers,
                             variant_step['expected_centers'], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
def test_the_step_logs_the_diagnostics_of_its_center_update(variant_step):
  batch, state = variant_step['batch'], variant_step['state']
  diagnostics = losses.center_diagnostics(
      variant_step['features'], batch['label'], state.centers,
      variant_step['expected_centers'], batch['weight'])
  for name in losses.DIAGNOSTICS:
    np.testing.assert_allclose(variant_step['summary'][name],
                               diagnostics[name], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_the_step_reports_the_configured_center_loss(variant_step):
  batch, state = variant_step['batch'], variant_step['state']
  np.testing.assert_allclose(
      variant_step['summary']['center_loss'],
      losses.center_loss(variant_step['features'], batch['label'],
                         state.centers, batch['weight'],
                         normalize=variant_step['normalize']), rtol=1e-5)


# --- the center loss compacts the classes -------------------------------------


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
  state = _state()
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


@pytest.fixture(scope='module')
def compactness_by_lambda():
  """Test-set compactness after 300 steps: (lambda=1, lambda=0, message)."""
  softmax_only = _train_mlp(0.0)
  with_center = _train_mlp(1.0)
  return (with_center, softmax_only,
          f'lambda=1: {with_center}, lambda=0: {softmax_only}')


@pytest.mark.slow
def test_center_loss_shrinks_intra_class_spread(compactness_by_lambda):
  with_center, softmax_only, message = compactness_by_lambda
  assert (with_center['intra_class_spread']
          < 0.5 * softmax_only['intra_class_spread']), message


@pytest.mark.slow
def test_center_loss_tightens_the_classes_relative_to_their_separation(
    compactness_by_lambda):
  # Not by merely shrinking every feature: relative to the distance between
  # centers the classes are tighter too.
  with_center, softmax_only, message = compactness_by_lambda
  assert (with_center['spread_to_separation']
          < 0.85 * softmax_only['spread_to_separation']), message


# --- the compared losses in each parallel mode --------------------------------

COMPARED = {
    'contrastive': dict(
        classifier='linear',
        pair_loss=training.PairLoss('contrastive', weight=0.5, margin=2.0)),
    'triplet+center': dict(
        classifier='linear', center_loss_weight=0.1,
        pair_loss=training.PairLoss('triplet', weight=1.0, margin=0.5,
                                    normalize=True)),
    'arcface': dict(classifier='cosine',
                    classifier_loss=training.ClassifierLoss(
                        'arcface', (('margin', 0.5), ('scale', 16.0)))),
    'sphereface+center': dict(
        classifier='cosine', center_loss_weight=0.1,
        classifier_loss=training.ClassifierLoss('sphereface',
                                                (('margin', 4),))),
}
# pmap for one objective only: it runs the same collectives (all_gather and
# its transpose) as shard_map, and each mode costs a compilation.
COMPARED_MODES = [(objective, 'shard_map') for objective in sorted(COMPARED)
                  ] + [('contrastive', 'pmap')]


@pytest.fixture(scope='module')
def compared_run():
  """`run(objective, mode)`: 3 steps of a compared objective, each made once:
  (host state, last metrics, placed state)."""
  batches = _batches(3, invalid_label=True)
  runs = {}

  def run(objective, mode):
    if (objective, mode) not in runs:
      kwargs = dict(COMPARED[objective])
      classifier = kwargs.pop('classifier')
      kwargs.setdefault('center_loss_weight', 0.0)
      runs[objective, mode] = _train(
          mode, _state(feature_dim=3, classifier=classifier),
          training.Objective(center_alpha=0.5, **kwargs), batches)
    return runs[objective, mode]
  return run


@pytest.mark.slow
@pytest.mark.parametrize('objective', sorted(COMPARED))
def test_the_compared_losses_move_the_params(compared_run, objective):
  reference, _, _ = compared_run(objective, 'jit')
  initial = _state(3, COMPARED[objective]['classifier']).params
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       reference.params, initial)
  assert max(jax.tree.leaves(moved)) > 1e-4, 'params never moved'


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['contrastive', 'triplet+center'])
def test_the_pair_losses_find_positive_pairs_in_the_batch(compared_run,
                                                          objective):
  _, reference_metrics, _ = compared_run(objective, 'jit')
  assert reference_metrics['pair_loss'] > 0
  # 14 valid examples of 4 classes: some share a class.
  assert reference_metrics['pair_positives'] > 0


@pytest.mark.slow
@pytest.mark.parametrize('objective,mode', COMPARED_MODES)
def test_parallel_modes_agree_with_the_compared_losses(compared_run,
                                                       objective, mode):
  """Pairs span replicas: sharded training equals one-device training."""
  reference, reference_metrics, _ = compared_run(objective, 'jit')
  host, metrics, _ = compared_run(objective, mode)
  jax.tree.map(functools.partial(
      np.testing.assert_allclose, rtol=2e-5, atol=2e-6,
      err_msg=f'{objective}: {mode} params differ'),
               host.params, reference.params)
  np.testing.assert_allclose(host.centers, reference.centers, rtol=2e-5,
                             atol=2e-6)
  for key, value in reference_metrics.items():
    np.testing.assert_allclose(metrics[key], value, rtol=2e-5,
                               err_msg=f'{objective}: {mode} {key}')


@pytest.mark.slow
def test_pair_loss_gradient_is_that_of_the_global_mean():
  """One step's update equals SGD on the hand-written global objective."""
  batch = _batches(1, invalid_label=True)[0]
  pair = training.PairLoss('contrastive', weight=1.0, margin=2.0)
  state = _state(feature_dim=3, classifier='linear')
  lr_free = state.replace(tx=optax.sgd(1.0))
  lr_free = lr_free.replace(opt_state=lr_free.tx.init(lr_free.params))
  dp = parallel.DataParallel.create('shard_map')
  step = dp.compile_train_step(functools.partial(
      training.steps.train_step, objective=training.Objective(
          center_loss_weight=0.0, center_alpha=0.5, pair_loss=pair)))
  new_state, _ = step(dp.put_state(lr_free), dp.put_batch(batch))

  valid = (batch['weight'] > 0) & (batch['label'] >= 0)

  def objective(params):
    features, logits = state.apply_fn({'params': params}, batch['image'])
    f, y = features[valid], batch['label'][valid]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[valid], y)
    d2 = jnp.sum((f[:, None] - f[None]) ** 2, -1)
    off_diagonal = ~jnp.eye(len(y), dtype=bool)
    same = (y[:, None] == y[None]) & off_diagonal
    d = jnp.sqrt(jnp.where(off_diagonal, d2, 1.0))
    terms = jnp.where(same, 0.5 * d2, 0.5 * jnp.maximum(0.0, 2.0 - d) ** 2)
    pair_mean = jnp.sum(jnp.where(off_diagonal, terms, 0)) / off_diagonal.sum()
    return jnp.mean(ce) + pair_mean

  grads = jax.grad(objective)(state.params)
  expected = jax.tree.map(lambda p, g: p - g, state.params, grads)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5),
               dp.host_state(new_state).params, expected)
