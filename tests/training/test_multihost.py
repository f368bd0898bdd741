"""2 processes x 4 CPU devices train and checkpoint like 1 process x 8.

The processes talk through JAX's own multi-controller runtime (gloo over
127.0.0.1); the test starts them on a free port and kills them after a
bounded time.
"""

import os
import sys

import numpy as np
import pytest

import multihost_worker
import multiprocess_util
from centerloss_jax.training import checkpointing
import repo_paths

WORKER = os.path.join(repo_paths.TESTS_DIR, 'multihost_worker.py')
REPO_ROOT = repo_paths.REPO_ROOT
TIMEOUT_SECONDS = 240


def _run_two_processes(mode, workdir, action):
  port = multiprocess_util.free_port()
  multiprocess_util.run_processes(
      [[sys.executable, WORKER, str(i), '2', str(port), mode, str(workdir),
        action] for i in range(2)],
      pythonpath=[REPO_ROOT], timeout=TIMEOUT_SECONDS)


def _assert_same(actual, expected, what):
  assert sorted(actual) == sorted(expected), what
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5,
                               atol=1e-6, err_msg=f'{what}: {key}')


@pytest.fixture(scope='module')
def single_process_result():
  """1 process x 8 devices (tests/conftest.py), shard_map."""
  _, state = multihost_worker.train_steps('shard_map')
  return multihost_worker.to_numpy(state)


@pytest.fixture(scope='module')
def single_process_features():
  """The evaluation features after training, 1 process x 8 devices."""
  dp, placed = multihost_worker.train_steps('shard_map', placed=True)
  return multihost_worker.eval_features(dp, placed)


@pytest.mark.parametrize('mode', ['shard_map', 'pmap'])
def test_two_processes_match_one_process(mode, single_process_result,
                                         single_process_features, tmp_path):
  _run_two_processes(mode, tmp_path, 'train')
  result = dict(np.load(tmp_path / 'result.npz'))
  assert result['step'] == multihost_worker.NUM_STEPS
  assert np.abs(result['centers']).max() > 0, 'centers never moved'
  _assert_same(result, single_process_result, f'2x4 {mode} vs 1x8')
  # Open-set evaluation: every example's features, in order, on each process.
  features = np.load(tmp_path / 'features.npy')
  assert features.shape == (multihost_worker.NUM_EVAL_IMAGES, 4)
  np.testing.assert_allclose(features, single_process_features, rtol=1e-5,
                             atol=1e-6)


def test_checkpoint_moves_between_process_layouts(single_process_result,
                                                  tmp_path):
  # Saved by 2 processes, restored by 1.
  two = tmp_path / 'saved_by_two'
  _run_two_processes('shard_map', two, 'train')
  manager = checkpointing.create_manager(str(two), max_to_keep=1)
  state = checkpointing.restore_latest(manager, multihost_worker._state())  # pylint: disable=protected-access
  _assert_same(multihost_worker.to_numpy(state), single_process_result,
               'restored by 1 process')
  # Saved by 1 process, restored by 2.
  one = tmp_path / 'saved_by_one'
  _, state = multihost_worker.train_steps('shard_map')
  manager = checkpointing.create_manager(str(one), max_to_keep=1)
  checkpointing.save(manager, state, step=multihost_worker.NUM_STEPS)
  manager.close()
  _run_two_processes('shard_map', one, 'restore')
  _assert_same(dict(np.load(one / 'restored.npz')), single_process_result,
               'restored by 2 processes')
