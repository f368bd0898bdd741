"""The trainer with the compared losses: parallel modes agree, configs check.

The losses themselves are tested in test_compared_losses.py; here they run
inside `training.steps.train_step`, where the pair losses see the all-gathered global
batch and the margin losses a cosine head.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import models
from centerloss_jax import training
from centerloss_jax.training import parallel
from configs import default


class _TinyEmbedder(nn.Module):
  """An MLP with a linear or cosine head: the step's logic, compiled fast."""
  num_classes: int = 4
  classifier: str = 'linear'

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Dense(32)(x))
    features = nn.Dense(3)(x)
    head = models.heads.classifier_head(self.classifier, self.num_classes,
                                        name='classifier', dtype=jnp.float32)
    return features, head(features)


def _state(classifier):
  model = _TinyEmbedder(classifier=classifier)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optax.sgd(1e-2, momentum=0.9), centers=jnp.zeros((4, 3)),
      batch_stats={}, rng=jax.random.key(1))


def _batches(num_batches, batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    labels = rng.integers(0, 4, size=batch_size).astype(np.int32)
    weights = np.ones(batch_size, np.float32)
    weights[0] = 0.0  # Padding.
    labels[1] = -1    # An invalid label: no pair, no triplet.
    batches.append({
        'image': rng.normal(size=(batch_size, 8)).astype(np.float32),
        'label': labels, 'weight': weights})
  return batches


OBJECTIVES = {
    'contrastive': dict(
        classifier='linear',
        pair_loss=training.PairLoss('contrastive', weight=0.5, margin=2.0)),
    'triplet+center': dict(
        classifier='linear', center_loss_weight=0.1,
        pair_loss=training.PairLoss('triplet', weight=1.0, margin=0.5,
                                 normalize=True)),
    'arcface': dict(classifier='cosine', classifier_loss=training.ClassifierLoss(
        'arcface', (('margin', 0.5), ('scale', 16.0)))),
    'sphereface+center': dict(
        classifier='cosine', center_loss_weight=0.1,
        classifier_loss=training.ClassifierLoss('sphereface', (('margin', 4),))),
}


def _run(mode, objective, batches):
  kwargs = dict(OBJECTIVES[objective])
  classifier = kwargs.pop('classifier')
  kwargs.setdefault('center_loss_weight', 0.0)
  dp = parallel.DataParallel.create(mode)
  state = dp.put_state(_state(classifier))
  step = dp.compile_train_step(functools.partial(
      training.steps.train_step,
      objective=training.Objective(center_alpha=0.5, **kwargs)))
  for batch in batches:
    state, metrics = step(state, dp.put_batch(batch))
  return dp.host_state(state), training.trainer.summarize(metrics)


@pytest.mark.parametrize('objective', sorted(OBJECTIVES))
def test_parallel_modes_agree_with_compared_losses(objective):
  """Pairs span replicas: sharded training equals one-device training."""
  batches = _batches(3)
  reference, reference_metrics = _run('jit', objective, batches)
  initial = _state(OBJECTIVES[objective]['classifier']).params
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       reference.params, initial)
  assert max(jax.tree.leaves(moved)) > 1e-4, 'params never moved'
  if 'pair_loss' in OBJECTIVES[objective]:
    assert reference_metrics['pair_loss'] > 0
    # 14 valid examples of 4 classes: some share a class.
    assert reference_metrics['pair_positives'] > 0
  # pmap for one objective only: it runs the same collectives (all_gather
  # and its transpose) as shard_map, and each mode costs a compilation.
  modes = ('shard_map', 'pmap') if objective == 'contrastive' else (
      'shard_map',)
  for mode in modes:
    host, metrics = _run(mode, objective, batches)
    jax.tree.map(functools.partial(
        np.testing.assert_allclose, rtol=2e-5, atol=2e-6,
        err_msg=f'{objective}: {mode} params differ'),
                 host.params, reference.params)
    np.testing.assert_allclose(host.centers, reference.centers, rtol=2e-5,
                               atol=2e-6)
    for key, value in reference_metrics.items():
      np.testing.assert_allclose(metrics[key], value, rtol=2e-5,
                                 err_msg=f'{objective}: {mode} {key}')


def test_pair_loss_gradient_is_that_of_the_global_mean():
  """One step's update equals SGD on the hand-written global objective."""
  batch = _batches(1)[0]
  pair = training.PairLoss('contrastive', weight=1.0, margin=2.0)
  state = _state('linear')
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


def _loss_config(**overrides):
  config = default.get_config().loss
  with config.unlocked():
    config.update(overrides)
  return config


def test_loss_configs_validate_with_clear_errors():
  assert training.ClassifierLoss.from_config(_loss_config()).kind == 'softmax'
  arc = training.ClassifierLoss.from_config(
      _loss_config(classifier='arcface', margin=0.3))
  assert arc == training.ClassifierLoss('arcface', (('margin', 0.3),))
  assert arc.model_classifier == 'cosine'
  with pytest.raises(ValueError, match="'arcfac'"):
    training.ClassifierLoss.from_config(_loss_config(classifier='arcfac'))
  with pytest.raises(ValueError, match='scale does not apply to SphereFace'):
    training.ClassifierLoss.from_config(
        _loss_config(classifier='sphereface', scale=30.0))
  assert training.PairLoss.from_config(_loss_config()) is None
  with pytest.raises(ValueError, match="'quadruplet'"):
    training.PairLoss.from_config(_loss_config(pair='quadruplet'))
  with pytest.raises(ValueError, match='-1.0'):
    training.PairLoss.from_config(_loss_config(pair='triplet', pair_margin=-1.0))


def test_class_sharding_takes_the_margins_and_rejects_the_pair_losses():
  config = default.get_config()
  config.parallel = 'shard_map'
  config.class_shards = 2
  config.loss.classifier = 'cosface'
  training.trainer.step_functions(config)  # Margins run class-sharded.
  config.loss.classifier = 'softmax'
  config.loss.pair = 'triplet'
  with pytest.raises(ValueError, match="loss.pair='triplet'.*class_shards=1"):
    training.trainer.step_functions(config)
  # The step itself refuses too, for users who build their own.
  with pytest.raises(ValueError, match="'contrastive'"):
    training.class_sharded_steps.ShardedClasses().check_losses(
        training.ClassifierLoss('arcface'),
        training.PairLoss.from_config(_loss_config(pair='contrastive')))


def test_feature_step_concatenates_image_and_mirror_features():
  state = _image_state()
  images = np.random.default_rng(0).normal(size=(4, 6, 5, 1)).astype(
      np.float32)
  batch = {'image': images, 'index': np.arange(4, dtype=np.int32),
           'weight': np.ones(4, np.float32)}
  _, outputs = jax.jit(functools.partial(training.features.feature_step,
                                         mirror=True))(state, batch)
  np.testing.assert_array_equal(outputs['index'], batch['index'])
  plain, _ = state.apply_fn({'params': state.params}, images)
  mirrored, _ = state.apply_fn({'params': state.params}, images[:, :, ::-1])
  assert not np.allclose(plain, mirrored)
  np.testing.assert_allclose(outputs['feature'],
                             np.concatenate([plain, mirrored], -1),
                             rtol=1e-5, atol=1e-6)


class _TinyConvEmbedder(nn.Module):
  """Features that depend on left/right: a conv then a flattening Dense."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.Conv(2, (3, 3))(x).reshape((x.shape[0], -1))
    features = nn.Dense(3)(x)
    return features, nn.Dense(4)(features)


def _image_state():
  model = _TinyConvEmbedder()
  params = model.init(jax.random.key(0), jnp.zeros((1, 6, 5, 1)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
      centers=jnp.zeros((4, 3)), batch_stats={}, rng=jax.random.key(1))
