"""The train state's making: the run's length, its learning-rate schedule,
and the classes' split over class shards."""

import jax
import numpy as np
import optax
import pytest

from centerloss_jax import training
import config_util


@pytest.fixture(scope='module')
def face_schedule():
  """The face config's form: num_train_steps set, num_epochs left at 1, with
  100 steps per epoch (a small dataset); (total steps, schedule)."""
  config = config_util.runlocal_config(
      None, schedule='cosine', learning_rate=0.002, num_epochs=1.0,
      num_train_steps=28_000, warmup_epochs=0.0)
  total = training.state.total_train_steps(config, steps_per_epoch=100)
  return total, training.state.create_learning_rate_fn(
      config, steps_per_epoch=100, total_steps=total)


def test_num_train_steps_sets_the_length_over_num_epochs(face_schedule):
  total, _ = face_schedule
  assert total == 28_000


def test_cosine_schedule_decays_over_num_train_steps_not_num_epochs(
    face_schedule):
  _, lr = face_schedule
  assert float(lr(0)) == pytest.approx(0.002)
  assert float(lr(99)) == pytest.approx(0.002, rel=1e-4)
  assert float(lr(14_000)) == pytest.approx(0.001, rel=1e-4)  # Half-way.
  assert float(lr(27_000)) == pytest.approx(
      0.001 * (1 + np.cos(np.pi * 27_000 / 28_000)), rel=1e-3)
  assert float(lr(27_999)) < 1e-9 and float(lr(28_000)) == 0


def test_without_num_train_steps_the_epochs_set_the_length():
  epochs = config_util.runlocal_config(None, num_epochs=2.5)
  assert training.state.total_train_steps(epochs, steps_per_epoch=8) == 20


def test_a_warmup_as_long_as_the_run_is_refused_naming_its_steps():
  warm = config_util.runlocal_config(
      None, schedule='cosine', warmup_epochs=3.0, num_train_steps=200)
  with pytest.raises(ValueError, match=r'warmup_epochs=3\.0 is 300 steps'):
    training.state.create_learning_rate_fn(warm, steps_per_epoch=100,
                                           total_steps=200)


def test_class_shards_must_divide_num_classes():
  config = config_util.runlocal_config(None, parallel='shard_map',
                                       class_shards=4)
  with pytest.raises(ValueError, match='class_shards=4 does not divide '
                     'num_classes=10'):
    training.create_train_state(
        config, jax.random.key(0), image_shape=(8, 8, 1), num_classes=10,
        learning_rate_fn=optax.constant_schedule(0.1))
