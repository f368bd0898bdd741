"""The trainer's step gives the same numbers in every execution mode.

Three train steps of `configs/default.py:runlocal` (LeNet++, 2-D features,
softmax + center loss, SGD with momentum) on the tiny IDX data of
`conftest.py`, through `trainer.step_functions` and `DataParallel`, in each
mode: one device (`jit`), 8 replicas (`pmap`, `shard_map`), the classes split
over 2 shards, and with a margin softmax and a pair loss. The modes add the
same terms in other orders, so they agree to the reassociation bound of
`numerics.py`, not bit for bit; on any CPU, GPU or TPU.
"""

import jax
import pytest

from centerloss_jax import data
from centerloss_jax import models
from centerloss_jax import training
from centerloss_jax.training import parallel
import config_util
import numerics

pytestmark = pytest.mark.slow

STEPS = 3

# The largest sum a mode reassociates in a step is over the global batch
# (the gradient's and Eq. 4's sums; the runlocal batch is 32), and it feeds
# every later step: the bound of STEPS such sums, with a factor 4 for the
# products of the backward pass that carry each sum's error forward.
BATCH = 32
RTOL = 4 * numerics.reassociation_rtol(BATCH, STEPS)

# CosFace's scale (64) on 2-D features diverges within 3 steps at the default
# learning rate (0.01); at 1e-3 the steps stay finite, so they compare.
COSFACE_CONTRASTIVE = {'loss.classifier': 'cosface', 'loss.pair': 'contrastive',
                       'batch_images_per_identity': 4, 'learning_rate': 1e-3}

SCENARIOS = {
    'jit': {'parallel': 'jit'},
    'pmap': {'parallel': 'pmap'},
    'shard_map': {'parallel': 'shard_map'},
    'shard_map_class_shards_2': {'parallel': 'shard_map', 'class_shards': 2},
    'jit_cosface_contrastive': dict(COSFACE_CONTRASTIVE, parallel='jit'),
    'shard_map_cosface_contrastive': dict(COSFACE_CONTRASTIVE,
                                          parallel='shard_map'),
}


def _three_steps(data_dir, overrides):
  """(params, centers, opt_state) after STEPS steps, in the replicated layout."""
  config = config_util.runlocal_config(data_dir, **overrides)
  assert config.batch_size == BATCH
  dataset = training.trainer.load_dataset(config.input)
  state = training.create_train_state(
      config, jax.random.key(config.seed), image_shape=dataset.image_shape,
      num_classes=dataset.num_classes,
      learning_rate_fn=training.state.create_learning_rate_fn(
          config, steps_per_epoch=8, total_steps=16))
  dp = parallel.DataParallel.create(config.parallel,
                                    class_shards=config.class_shards)
  state = dp.put_state(state)
  step = dp.compile_train_step(training.trainer.step_functions(config)[0])
  batches = data.epoch_batches(
      dataset.train, global_batch_size=config.batch_size, epoch=0,
      seed=config.seed, shuffle=True, drop_remainder=True,
      images_per_identity=config.batch_images_per_identity)
  for _, batch in zip(range(STEPS), batches):
    state, _ = step(state, dp.put_batch(batch))
  state = jax.device_get(dp.host_state(state))
  if config.class_shards > 1:  # The kernel back into the model's scope.
    state = training.state.move_classifier(
        state, class_sharded=False,
        scope=models.classifier_scope(config.model.name))
  assert int(state.step) == STEPS
  return {'params': state.params, 'centers': state.centers,
          'opt_state': state.opt_state}


@pytest.fixture(scope='module')
def states(tiny_idx_dir):
  return {name: _three_steps(tiny_idx_dir, overrides)
          for name, overrides in SCENARIOS.items()}


def test_the_steps_move_the_params_and_the_centers(states, tiny_idx_dir):
  initial = _three_steps(tiny_idx_dir, {'parallel': 'jit',
                                        'learning_rate': 0.0,
                                        'center_loss.alpha': 0.0})
  for part in ('params', 'centers'):
    with pytest.raises(AssertionError):
      numerics.assert_trees_close(states['jit'][part], initial[part],
                                  rtol=RTOL, what=part)


@pytest.mark.parametrize('mode,reference', [
    ('pmap', 'jit'),
    ('shard_map', 'jit'),
    ('pmap', 'shard_map'),
    ('shard_map_class_shards_2', 'shard_map'),
    ('shard_map_cosface_contrastive', 'jit_cosface_contrastive'),
])
def test_mode_matches_its_reference(states, mode, reference):
  numerics.assert_trees_close(states[mode], states[reference], rtol=RTOL,
                              what=f'{mode} against {reference} after '
                                   f'{STEPS} steps')
