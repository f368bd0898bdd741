"""2 processes x 4 CPU devices train and checkpoint like 1 process x 8.

The processes talk through JAX's own multi-controller runtime (gloo over
127.0.0.1). One start of the two processes serves every test here: in one
session they train with shard_map, then with pmap (each time saving a
checkpoint and the open-set features), then restore a checkpoint that one
process saved. They run on a free port and are killed after a bounded time.
"""

import os
import sys

import numpy as np
import pytest

import multihost_worker
import multiprocess_util
from centerloss_jax.training import checkpointing
import repo_paths

pytestmark = pytest.mark.slow

WORKER = os.path.join(repo_paths.TESTS_DIR, 'multihost_worker.py')
REPO_ROOT = repo_paths.REPO_ROOT
TIMEOUT_SECONDS = 240
MODES = ('shard_map', 'pmap')


def _assert_same(actual, expected, what):
  assert sorted(actual) == sorted(expected), what
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5,
                               atol=1e-6, err_msg=f'{what}: {key}')


@pytest.fixture(scope='module')
def single_process(tmp_path_factory):
  """1 process x 8 devices (tests/conftest.py), shard_map: the result, the
  evaluation features after training, and a workdir with its checkpoint."""
  dp, placed = multihost_worker.train_steps('shard_map', placed=True)
  features = multihost_worker.eval_features(dp, placed)
  state = dp.host_state(placed)
  workdir = tmp_path_factory.mktemp('saved_by_one')
  manager = checkpointing.create_manager(str(workdir), max_to_keep=1)
  checkpointing.save(manager, state, step=multihost_worker.NUM_STEPS)
  manager.close()
  return {'result': multihost_worker.to_numpy(state), 'features': features,
          'workdir': workdir}


@pytest.fixture(scope='module')
def two_processes(single_process, tmp_path_factory):
  """The workdirs of the two processes' session: one per mode trained, and
  the single process's checkpoint restored."""
  root = tmp_path_factory.mktemp('two_processes')
  tasks = []
  for mode in MODES:
    os.makedirs(root / mode)
    tasks += [mode, str(root / mode), 'train']
  tasks += ['shard_map', str(single_process['workdir']), 'restore']
  port = multiprocess_util.free_port()
  multiprocess_util.run_processes(
      [[sys.executable, WORKER, str(i), '2', str(port), *tasks]
       for i in range(2)],
      pythonpath=[REPO_ROOT], timeout=TIMEOUT_SECONDS)
  return root


@pytest.mark.parametrize('mode', MODES)
def test_two_processes_run_every_step_and_move_the_centers(mode,
                                                            two_processes):
  result = dict(np.load(two_processes / mode / 'result.npz'))
  assert result['step'] == multihost_worker.NUM_STEPS
  assert np.abs(result['centers']).max() > 0, 'centers never moved'


@pytest.mark.parametrize('mode', MODES)
def test_two_processes_train_like_one_process(mode, two_processes,
                                              single_process):
  result = dict(np.load(two_processes / mode / 'result.npz'))
  _assert_same(result, single_process['result'], f'2x4 {mode} vs 1x8')


@pytest.mark.parametrize('mode', MODES)
def test_two_processes_extract_the_features_of_one_process(
    mode, two_processes, single_process):
  # Open-set evaluation: every example's features, in order, on each process.
  features = np.load(two_processes / mode / 'features.npy')
  assert features.shape == (multihost_worker.NUM_EVAL_IMAGES, 4)
  np.testing.assert_allclose(features, single_process['features'],
                             rtol=1e-5, atol=1e-6)


def test_a_checkpoint_saved_by_two_processes_restores_in_one(
    two_processes, single_process):
  manager = checkpointing.create_manager(str(two_processes / 'shard_map'),
                                         max_to_keep=1)
  state = checkpointing.restore_latest(manager, multihost_worker._state())  # pylint: disable=protected-access
  _assert_same(multihost_worker.to_numpy(state), single_process['result'],
               'restored by 1 process')


def test_a_checkpoint_saved_by_one_process_restores_in_two(two_processes,
                                                           single_process):
  del two_processes  # Its session restored the single process's checkpoint.
  restored = dict(np.load(single_process['workdir'] / 'restored.npz'))
  _assert_same(restored, single_process['result'], 'restored by 2 processes')
