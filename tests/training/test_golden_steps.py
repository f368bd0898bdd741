"""Three train steps give the same bits as before the step scaffold was shared.

The replicated and class-sharded steps were two hand-kept copies until they
became one scaffold (`steps.train_step` with a `ClassLayout`). The digests
below are of the params, centers and optimizer state after three steps of
`configs/default.py:runlocal` on the tiny IDX data of `conftest.py`,
recorded with the two-copy code (commit db6bd59) on this project's CPU
machines (JAX 0.10.2), and on a later machine with another CPU (see
`GOLDEN`). Every mode must still give exactly the bits of one recorded set:
a refactoring of the steps changes no number.

A change that is meant to change the numbers (a new reduction order, a JAX
upgrade that compiles differently) updates the digests: the failure prints
the digests it got; paste them here, saying why in the commit.
"""

import hashlib

import jax
import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax import training
from centerloss_jax.training import parallel
import config_util

STEPS = 3

# name: config overrides.
SCENARIOS = {
    'jit': {'parallel': 'jit'},
    'pmap': {'parallel': 'pmap'},
    'shard_map': {'parallel': 'shard_map'},
    'shard_map_class_shards_2': {'parallel': 'shard_map', 'class_shards': 2},
    'shard_map_cosface_contrastive': {
        'parallel': 'shard_map', 'loss.classifier': 'cosface',
        'loss.pair': 'contrastive', 'batch_images_per_identity': 4},
}

# The sha256 of the state's leaves after STEPS steps, one set per CPU the
# project's machines have had: XLA:CPU compiles for the CPU it runs on, and
# the same code gives other (equally valid) bits on another one. A machine
# reproduces one whole set. pmap and shard_map agree with each other (8
# replicas, the same reductions); one-device jit sums in another order.

# The set of the machines of commit db6bd59, where the digests were first made.
_FIRST_SET = {
    'jit': '71e6fc79e05c728423d026dde0893c259a7abcb8a71e2cbbab5695f9a36b6b90',
    'pmap': '3079aae207c26689d9ae58c72bc0df2fe6103251430e9f036496a33a20eac273',
    'shard_map': (
        '3079aae207c26689d9ae58c72bc0df2fe6103251430e9f036496a33a20eac273'),
    'shard_map_class_shards_2': (
        'b2aac9d9c6b9fb807eb96a27f3f008ec6fed7a34d34e1b145c58bd711d5bfd30'),
    'shard_map_cosface_contrastive': (
        '8c03efe24966c20576df0005f8ca9f3303288b3fcca20a6b2e689f47f2cabb56'),
}
GOLDEN = (
    _FIRST_SET,
    {  # A 2-core "AMD EPYC" machine (2026-12-01): the code of commit
       # 733c2f6 and of the commit after it both give these.
        'jit': (
            'ba934a1e3b2c85a97c546ac54d73e38989a494b41921cba06088a4254afb53ec'),
        'pmap': (
            'f988ae900f68101d13f99415adf4b8599638ded1a026900fc9c37d112101cec8'),
        'shard_map': (
            'f988ae900f68101d13f99415adf4b8599638ded1a026900fc9c37d112101cec8'),
        'shard_map_class_shards_2': (
            '250efac4d2df26215f2a075f444f75773801cc23e3565c11d470c00db197735d'),
        'shard_map_cosface_contrastive': (
            '8be7fbb28b6d640ac521ed1c5695516aeec438ce8883d183f449016ffde65a6b'),
    },
    # A 2-core "AMD EPYC" with AVX-512 (CPU family 26; 2026-12-02), with the
    # code of commit 43e0bc4 and after: the first set but for CosFace +
    # contrastive (the README's softmax runs match the first machines' too).
    {**_FIRST_SET, 'shard_map_cosface_contrastive': (
        'bf9816603ba9ea106972c4635a6701868c6bbbb70e91388fabef25a176127b3f')},
)


def _digest(tree) -> str:
  """sha256 of every leaf's path, dtype, shape and bytes, in path order."""
  leaves = [(jax.tree_util.keystr(path), parallel.fetch_global(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda item: item[0]):
    leaf = np.asarray(leaf)
    for part in (path, str(leaf.dtype), str(leaf.shape)):
      digest.update(part.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _state_digest(data_dir, overrides) -> str:
  """The digest of (params, centers, opt_state) after STEPS train steps."""
  config = config_util.runlocal_config(data_dir, **overrides)
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
  host = dp.host_state(state)
  return _digest((host.params, host.centers, host.opt_state))


@pytest.fixture(scope='module')
def digests(tiny_idx_dir):
  """Every scenario's digest on this machine."""
  return {name: _state_digest(tiny_idx_dir, overrides)
          for name, overrides in SCENARIOS.items()}


def test_three_steps_are_bit_identical_to_one_recorded_set(digests):
  """All scenarios together reproduce the set of one machine: a change of
  the numbers in any one of them matches no set."""
  for recorded in GOLDEN:
    assert set(recorded) == set(SCENARIOS)
  assert any(digests == recorded for recorded in GOLDEN), (
      f'params, centers or optimizer state after {STEPS} steps differ from '
      'every recorded set of bits; on this machine the digests are '
      f'{digests} (see the module docstring; a new CPU adds its set, '
      'measured with the code before the change).')
