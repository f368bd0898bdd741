"""A few data-parallel train steps, as one process of a multi-process run.

Imported by tests/training/test_multihost.py for the single-process
reference, and run by it as a script, once per process:

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MODE WORKDIR
      ACTION [MODE WORKDIR ACTION ...]

ACTION 'train' runs the steps, checkpoints the result into WORKDIR, extracts
the open-set evaluation's features of EVAL_IMAGES and (on process 0) writes
WORKDIR/result.npz and WORKDIR/features.npy; 'restore' only restores
WORKDIR's latest checkpoint and writes it to WORKDIR/restored.npz. Further
MODE WORKDIR ACTION triples run in turn in the same distributed session (one
start of the processes for several checks).
"""

import os
import sys

NUM_STEPS = 3
GLOBAL_BATCH = 32
NUM_CLASSES = 4
# Not a multiple of the batch: the last batch is padded.
NUM_EVAL_IMAGES = 37


def _state():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from centerloss_jax import training  # pylint: disable=g-import-not-at-top

  class Mlp(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      del train
      x = x.reshape((x.shape[0], -1))  # Eval images are (2, 2, 2).
      features = nn.Dense(2)(nn.relu(nn.Dense(16)(x)))
      return features, nn.Dense(NUM_CLASSES)(features)

  model = Mlp()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.sgd(0.1, momentum=0.9),
      centers=jnp.zeros((NUM_CLASSES, 2)), batch_stats={},
      rng=jax.random.key(1))


def _global_batch(step):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(step)
  labels = rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32)
  labels[-4:] = 3  # Class 3 on the last device only.
  labels[:-4][labels[:-4] == 3] = 0
  return {'image': rng.normal(size=(GLOBAL_BATCH, 8)).astype(np.float32),
          'label': labels, 'weight': np.ones(GLOBAL_BATCH, np.float32)}


def train_steps(mode, *, placed=False):
  """Runs NUM_STEPS steps; returns (DataParallel, host or placed state)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import parallel  # pylint: disable=g-import-not-at-top
  from centerloss_jax import training  # pylint: disable=g-import-not-at-top

  dp = parallel.DataParallel.create(mode)
  state = dp.put_state(_state())
  step_fn = dp.compile_train_step(functools.partial(
      training.steps.train_step,
      objective=training.Objective(center_loss_weight=0.5, center_alpha=0.5)))
  share = GLOBAL_BATCH // jax.process_count()
  begin = jax.process_index() * share
  for step in range(NUM_STEPS):
    batch = {k: v[begin:begin + share]
             for k, v in _global_batch(step).items()}
    state, _ = step_fn(state, dp.put_batch(batch))
  return dp, state if placed else dp.host_state(state)


def eval_features(dp, placed_state):
  """The open-set evaluation's features (image + mirror) of fixed images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from centerloss_jax import training  # pylint: disable=g-import-not-at-top

  images = np.random.default_rng(7).integers(
      0, 256, (NUM_EVAL_IMAGES, 2, 2, 2)).astype(np.uint8)
  feature_fn = training.features.compile_feature_step(dp, mirror=True)
  return training.features.extract_features(feature_fn, dp, placed_state,
                                            images, batch_size=GLOBAL_BATCH)


def to_numpy(state):
  """{'params/...': array, 'centers': array} of a (host) TrainState."""
  import jax  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import parallel  # pylint: disable=g-import-not-at-top
  flat = {'centers': state.centers, 'step': state.step}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    flat['params' + jax.tree_util.keystr(path)] = leaf
  return parallel.fetch_replicated(flat)


def main(process_id, num_processes, port, mode, workdir, action, *more):
  """Runs the (mode, workdir, action) triples in turn, in one session."""
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count=4'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(ml_collections.ConfigDict({
      'initialize': True, 'coordinator_address': f'127.0.0.1:{port}',
      'num_processes': num_processes, 'process_id': process_id}))
  assert jax.device_count() == 4 * num_processes
  assert len(more) % 3 == 0, more
  tasks = [(mode, workdir, action)] + [more[i:i + 3]
                                       for i in range(0, len(more), 3)]
  for task in tasks:
    _run_action(process_id, *task)
  jax.distributed.shutdown()


def _run_action(process_id, mode, workdir, action):
  """One ACTION of the module docstring, in an initialised session."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  manager = checkpointing.create_manager(workdir, max_to_keep=1)
  if action == 'train':
    dp, placed = train_steps(mode, placed=True)
    features = eval_features(dp, placed)
    if process_id == 0:
      np.save(os.path.join(workdir, 'features.npy'), features)
    state = dp.host_state(placed)
    checkpointing.save(manager, state, step=NUM_STEPS)
    name = 'result.npz'
  else:
    state = checkpointing.restore_latest(manager, _state())
    name = 'restored.npz'
  arrays = to_numpy(state)
  manager.close()
  if process_id == 0:
    np.savez(os.path.join(workdir, name), **arrays)


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
