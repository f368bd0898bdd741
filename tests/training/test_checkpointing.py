"""Checkpoints: fingerprinted, restored with the input state of their step;
corrupt ones detected, moved aside and replaced; other models refused.

Each test saves a tiny state at steps 4 and 8 (its input pipeline standing
at that step) and then tampers with what is on disk.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import data
from centerloss_jax import training
from centerloss_jax.training import checkpointing


def _tiny_state(value):
  return training.TrainState.create(
      apply_fn=None, params={'w': jnp.full((4, 3), value)},
      tx=optax.sgd(0.1), centers=jnp.full((5, 2), value),
      batch_stats={}, rng=jax.random.key(0))


def _input_at(step, num_steps=100):
  """An input pipeline (grain iterator) standing at `step`."""
  split = data.Split(images=np.zeros((16, 2, 2, 1), np.uint8),
                     labels=np.zeros(16, np.int32), name='train')
  batches = data.pipeline.TrainingBatches(
      data.batching.BatchReader(split, global_batch_size=4, seed=0,
                                shuffle=True), num_steps=num_steps)
  batches.set_state({'next_step': step})
  return batches


@pytest.fixture
def manager(tmp_path):
  """A manager of `tmp_path` holding steps 4 and 8 (values 4.0 and 8.0)."""
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  for step in (4, 8):
    checkpointing.save(manager, _tiny_state(float(step)), step=step,
                       input_iterator=_input_at(step))
  return manager


def _tamper_with_fingerprint(manager, step, leaf):
  """Changes the stored fingerprint of the first leaf whose path has `leaf`:
  exactly what a silent change of that leaf's data looks like to the check."""
  path = os.path.join(manager.directory, str(step), 'integrity', 'metadata')
  with open(path) as f:
    stored = json.load(f)
  key = next(k for k in stored['fingerprint'] if leaf in k)
  stored['fingerprint'][key] ^= 1
  with open(path, 'w') as f:
    json.dump(stored, f)


def test_a_step_whose_data_changed_is_moved_aside_for_the_previous(
    manager, tmp_path):
  _tamper_with_fingerprint(manager, 8, 'centers')
  batches = _input_at(0)
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  assert batches.next_step == 4
  np.testing.assert_array_equal(state.centers, 4.0)
  assert os.listdir(tmp_path / 'checkpoints_corrupt')[0].startswith('8-')


def test_a_step_moved_aside_is_saved_again_when_training_reaches_it(
    manager):
  _tamper_with_fingerprint(manager, 8, 'centers')
  batches = _input_at(0)
  checkpointing.restore_latest(manager, _tiny_state(0.0),
                               input_iterator=batches)
  assert checkpointing.save(manager, _tiny_state(8.0), step=8,
                            input_iterator=_input_at(8))
  checkpointing.restore_latest(manager, _tiny_state(0.0),
                               input_iterator=batches)
  assert batches.next_step == 8


def test_a_run_made_shorter_than_its_checkpoint_resumes_past_its_end(
    manager, tmp_path):
  batches = _input_at(0, num_steps=6)  # --allow_config_change, fewer steps.
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  np.testing.assert_array_equal(state.centers, 8.0)  # Not moved aside.
  assert batches.next_step == 8 and list(batches) == []
  assert not (tmp_path / 'checkpoints_corrupt').exists()


def test_an_input_state_of_another_process_layout_is_left_to_the_step(
    manager, caplog):
  # What a run of 2 processes leaves: one state file per process.
  input_dir = os.path.join(manager.directory, '8', 'input')
  os.rename(os.path.join(input_dir, 'process_0-of-1.json'),
            os.path.join(input_dir, 'process_0-of-2.json'))
  batches = _input_at(0)
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  np.testing.assert_array_equal(state.centers, 8.0)  # The step is kept,
  assert batches.next_step == 0  # its input left for the caller to place,
  assert 'no input state for process 0 of 1' in caplog.text  # and said.


def test_checkpoints_of_another_model_are_refused_in_one_short_line(
    manager):
  other_model = _tiny_state(0.0).replace(centers=jnp.zeros((7, 2)))
  with pytest.raises(RuntimeError, match='another model or config') as error:
    checkpointing.restore_latest(manager, other_model)
  # One short line per step, not TensorStore's spec dumps.
  assert '\n' not in str(error.value) and len(str(error.value)) < 1000


def test_checkpoints_of_another_model_are_kept(manager, tmp_path):
  other_model = _tiny_state(0.0).replace(centers=jnp.zeros((7, 2)))
  with pytest.raises(RuntimeError, match='another model or config'):
    checkpointing.restore_latest(manager, other_model)
  assert sorted(manager.all_steps()) == [4, 8]
  assert not (tmp_path / 'checkpoints_corrupt').exists()


def _inference_target(centers_shape=(5, 2)):
  # What evaluation restores into: no optimizer state, other shapes possible.
  return jax.eval_shape(lambda: training.TrainState.create(
      apply_fn=None, params={'w': jnp.zeros((4, 3))}, tx=optax.identity(),
      centers=jnp.zeros(centers_shape), batch_stats={},
      rng=jax.random.key(0)))


def test_weights_restore_without_the_optimizer(manager):
  weights = checkpointing.restore_latest_weights(manager, _inference_target())
  np.testing.assert_array_equal(weights.params['w'], 8.0)
  np.testing.assert_array_equal(weights.centers, 8.0)
  assert int(weights.step) == 0 and weights.opt_state == ()


def test_weights_whose_data_changed_give_the_previous_step_moving_nothing(
    manager):
  # A leaf whose data changed is caught; the previous step is used and
  # nothing is moved (evaluation only reads).
  _tamper_with_fingerprint(manager, 8, 'params')
  weights = checkpointing.restore_latest_weights(manager, _inference_target())
  np.testing.assert_array_equal(weights.params['w'], 4.0)
  assert sorted(manager.all_steps()) == [4, 8]


def test_weights_of_another_model_are_refused_naming_each_shape(manager):
  # Another model's shapes: named leaf by leaf, both shapes given.
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"\['centers'\]: \(5, 2\) in the checkpoint, "
                     r"\(7, 2\) in this config's model"):
    checkpointing.restore_latest_weights(manager, _inference_target((7, 2)))


def test_fingerprint_changes_with_any_single_word():
  state = {'a': jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
           'b': jnp.ones((5,), jnp.bfloat16), 'c': jnp.array(7, jnp.int32)}
  reference = checkpointing.fingerprint(state)
  for name, flipped in (
      ('a', state['a'].at[2, 3].set(jnp.float32(-11.0))),
      ('a', jax.lax.bitcast_convert_type(
          jax.lax.bitcast_convert_type(state['a'], jnp.uint32).at[0, 0].add(
              2**31), jnp.float32)),
      ('b', state['b'].at[4].set(2.0)), ('c', jnp.array(8, jnp.int32))):
    changed = checkpointing.fingerprint({**state, name: flipped})
    assert changed[f"['{name}']"] != reference[f"['{name}']"], name
