"""`train_and_evaluate` end to end on tiny IDX data, in this process.

One finished runlocal run (`finished_run`: 2 epochs of 8 steps) serves the
checks of what a run writes; the runs that fail on purpose (a crashing or
non-finite evaluation, a diverging loss) are made once each by their own
fixtures. The CLI around the trainer (signals, locks, exit codes) is tested
in test_lifecycle.py.
"""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax import training
from centerloss_jax.training import checkpointing
import config_util


def _config(data_dir, **overrides):
  return config_util.runlocal_config(data_dir, **overrides)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _checkpoint_steps(workdir):
  return sorted(int(name) for name in os.listdir(
      os.path.join(workdir, 'checkpoints')) if name.isdigit())


def _training_batches(data_dir):
  """A fresh input pipeline of `_config`'s run (at step 0)."""
  config = _config(data_dir)
  reader = data.batching.BatchReader(
      training.trainer.load_dataset(config.input).train,
      global_batch_size=config.batch_size, seed=config.seed, shuffle=True,
      drop_remainder=True)
  return data.pipeline.TrainingBatches(reader, num_steps=16)


def _abstract_state(data_dir):
  config = _config(data_dir)
  return training.create_train_state(
      config, jax.random.key(0), image_shape=(28, 28, 1), num_classes=10,
      learning_rate_fn=training.state.create_learning_rate_fn(
          config, steps_per_epoch=8, total_steps=16))


# --- what a finished run writes -----------------------------------------------


@pytest.fixture(scope='module')
def finished_run(tiny_idx_dir, tmp_path_factory):
  """(workdir, final metrics, metrics.jsonl's records) of the runlocal run:
  256 examples / batch 32 = 8 steps per epoch, 2 epochs."""
  workdir = str(tmp_path_factory.mktemp('run'))
  metrics = training.train_and_evaluate(_config(tiny_idx_dir), workdir)
  return workdir, metrics, _records(workdir)


@pytest.mark.slow
def test_the_final_metrics_count_each_test_example_once(finished_run):
  _, metrics, _ = finished_run
  assert metrics['num_examples'] == 100, 'each test example exactly once'
  assert 0.0 <= metrics['accuracy'] <= 1.0
  for key in ('intra_class_spread', 'inter_class_min_distance',
              'spread_to_separation', 'center_loss'):
    assert np.isfinite(metrics[key]), key


@pytest.mark.slow
def test_the_training_records_hold_the_cross_entropy(finished_run):
  _, _, records = finished_run
  assert any('train/cross_entropy' in r for r in records)


@pytest.mark.slow
def test_the_centers_diagnostics_are_logged_with_the_training_metrics(
    finished_run):
  # They move (from zero) and the features sit at a finite distance from
  # them.
  _, _, records = finished_run
  train_records = [r for r in records if 'train/center_movement' in r]
  assert train_records
  for key in ('center_movement', 'center_norm', 'feature_center_distance'):
    assert all(np.isfinite(r[f'train/{key}']) for r in train_records), key
  assert train_records[0]['train/center_movement'] > 0


@pytest.mark.slow
def test_each_epoch_is_evaluated_and_plotted(finished_run):
  workdir, metrics, records = finished_run
  test_records = [r for r in records if 'test/accuracy' in r]
  assert [r['step'] for r in test_records] == [8, 16]
  assert test_records[-1]['test/accuracy'] == pytest.approx(
      metrics['accuracy'])
  for step in (8, 16):
    assert os.path.getsize(
        os.path.join(workdir, f'features_step_{step}.png')) > 1000


@pytest.mark.slow
def test_the_last_plots_data_is_the_whole_test_split(finished_run):
  # For figures across runs.
  workdir, metrics, _ = finished_run
  with np.load(os.path.join(workdir, 'features.npz')) as plotted:
    assert int(plotted['step']) == 16
    assert plotted['features'].shape == (metrics['num_examples'], 2)
    assert plotted['labels'].shape == (metrics['num_examples'],)
    assert plotted['centers'].shape == (10, 2)
    assert list(plotted['class_names'])[:2] == ['T-shirt/top', 'Trouser']


@pytest.mark.slow
def test_the_learning_rate_is_logged_with_the_training_metrics(finished_run):
  # runlocal's piecewise schedule: 0.01 throughout 16 steps.
  _, _, records = finished_run
  rates = [r['train/learning_rate'] for r in records
           if 'train/learning_rate' in r]
  assert rates and all(rate == pytest.approx(0.01) for rate in rates)


@pytest.mark.slow
def test_the_wait_for_input_is_logged_with_each_training_record(
    finished_run):
  # How long each step waited for its input: the bottleneck, visible.
  _, _, records = finished_run
  rates = [r for r in records if 'train/learning_rate' in r]
  waits = [r for r in records if 'train/input_wait_ms' in r]
  assert len(waits) == len(rates)
  assert all(r['train/input_wait_ms'] >= 0 for r in waits)
  assert all(0 <= r['train/input_wait_fraction'] <= 1 for r in waits)


@pytest.mark.slow
def test_tensorboard_events_are_written(finished_run):
  workdir, _, _ = finished_run
  assert any(name.startswith('events.out.tfevents')
             for name in os.listdir(workdir))


@pytest.mark.slow
def test_the_last_three_checkpoints_are_kept(finished_run):
  workdir, _, _ = finished_run
  assert _checkpoint_steps(workdir) == [8, 12, 16]


@pytest.fixture(scope='module')
def last_checkpoint(finished_run, tiny_idx_dir):
  """(restored state, input pipeline) of the finished run's last step."""
  workdir, _, _ = finished_run
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  batches = _training_batches(tiny_idx_dir)
  restored = checkpointing.restore_latest(
      manager, _abstract_state(tiny_idx_dir), input_iterator=batches)
  return restored, batches


@pytest.mark.slow
def test_the_last_checkpoint_is_of_the_last_step(last_checkpoint):
  restored, _ = last_checkpoint
  assert int(restored.step) == 16


@pytest.mark.slow
def test_the_last_checkpoint_holds_the_input_pipelines_state(
    last_checkpoint):
  # The input pipeline's grain state, saved beside the step.
  _, batches = last_checkpoint
  assert batches.get_state() == {
      'next_step': 16, 'epoch': 2, 'step_in_epoch': 0, 'steps_per_epoch': 8,
      'global_batch_size': 32, 'seed': 0}


@pytest.mark.slow
def test_the_checkpointed_centers_are_trained(last_checkpoint):
  restored, _ = last_checkpoint
  centers = np.asarray(restored.centers)
  assert centers.shape == (10, 2)
  assert np.abs(centers).max() > 0, 'centers never left their zero init'


@pytest.mark.slow
def test_a_checkpoint_restores_into_an_eval_shape_target(finished_run,
                                                         tiny_idx_dir):
  """`jax.eval_shape` of the state is a valid (and cheap) restore target."""
  workdir, _, _ = finished_run
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  state = _abstract_state(tiny_idx_dir)
  expected = checkpointing.restore_latest(manager, state)
  restored = checkpointing.restore_latest(
      manager, jax.eval_shape(lambda s: s, state))
  jax.tree.map(np.testing.assert_array_equal,
               jax.random.key_data(restored.rng),
               jax.random.key_data(expected.rng))
  jax.tree.map(np.testing.assert_array_equal,
               (restored.params, restored.centers, restored.opt_state),
               (expected.params, expected.centers, expected.opt_state))


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
    finished_run, tiny_idx_dir, tmp_path):
  workdir, _, _ = finished_run
  copy = tmp_path / 'checkpoints'
  shutil.copytree(os.path.join(workdir, 'checkpoints'), copy)
  # Overwrite every file of the latest step.
  for root, _, files in os.walk(copy / '16'):
    for name in files:
      with open(os.path.join(root, name), 'w') as f:
        f.write('garbage')
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  restored = checkpointing.restore_latest(
      manager, _abstract_state(tiny_idx_dir))
  assert int(restored.step) == 12


# --- runs that fail -----------------------------------------------------------


@pytest.fixture(scope='module')
def diverged_run(tiny_idx_dir, tmp_path_factory):
  """(error, workdir) of a run whose training loss blows up."""
  workdir = str(tmp_path_factory.mktemp('diverged'))
  config = _config(tiny_idx_dir, learning_rate=1e12, num_epochs=1.0,
                   checkpoint_every_steps=2)
  with pytest.raises(training.trainer.NonFiniteLossError) as error:
    training.train_and_evaluate(config, workdir)
  return error.value, workdir


@pytest.mark.slow
def test_a_non_finite_training_loss_stops_naming_the_step(diverged_run):
  error, _ = diverged_run
  assert re.search(r'at step \d+', str(error)), str(error)


@pytest.mark.slow
def test_what_was_saved_before_a_non_finite_loss_is_finite(diverged_run,
                                                           tiny_idx_dir):
  _, workdir = diverged_run
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  restored = checkpointing.restore_latest(manager,
                                          _abstract_state(tiny_idx_dir))
  if restored is not None:
    for leaf in jax.tree.leaves(restored.params):
      assert np.all(np.isfinite(leaf))


@pytest.mark.slow
def test_a_crashing_evaluation_keeps_the_steps_checkpoint(
    tiny_idx_dir, tmp_path, monkeypatch):
  def crash(*args, **kwargs):
    del args, kwargs
    raise OSError('a corrupt test image')

  monkeypatch.setattr(training.trainer, '_evaluate_and_write', crash)
  config = _config(tiny_idx_dir, checkpoint_every_steps=4)
  with pytest.raises(OSError, match='corrupt test image'):
    training.train_and_evaluate(config, str(tmp_path))
  # The first evaluation is at the end of epoch 1, step 8: saved before.
  assert _checkpoint_steps(str(tmp_path)) == [4, 8]


@pytest.fixture(scope='module')
def non_finite_evaluation(tiny_idx_dir, tmp_path_factory):
  """(error, workdir) of a run whose first test loss is NaN."""
  def nan_metrics(*args, **kwargs):
    del args, kwargs
    return {'metrics': {'cross_entropy': float('nan'), 'center_loss': 0.0}}

  workdir = str(tmp_path_factory.mktemp('non_finite_evaluation'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training.trainer, 'evaluate_split', nan_metrics)
    with pytest.raises(training.trainer.NonFiniteLossError) as error:
      training.train_and_evaluate(_config(tiny_idx_dir), workdir)
  return error.value, workdir


@pytest.mark.slow
def test_a_non_finite_test_loss_stops_naming_the_step(non_finite_evaluation):
  error, _ = non_finite_evaluation
  assert re.search('Non-finite test cross_entropy .* at step 8',
                   str(error)), str(error)


@pytest.mark.slow
def test_a_non_finite_test_loss_writes_no_test_record(non_finite_evaluation):
  _, workdir = non_finite_evaluation
  assert not [r for r in _records(workdir)
              if any(key.startswith('test/') for key in r)]


@pytest.mark.slow
def test_the_step_is_saved_before_its_non_finite_evaluation(
    non_finite_evaluation):
  _, workdir = non_finite_evaluation
  assert 8 in _checkpoint_steps(workdir)


# --- the dataset of the config ------------------------------------------------


def test_a_dataset_name_without_its_data_is_refused_before_the_workdir(
    tmp_path):
  config = config_util.runlocal_config(None, **{'input.name': 'cifar10'})
  with pytest.raises(ValueError, match=r"'cifar10'.*data_dir"):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_the_string_none_from_the_command_line_means_none(monkeypatch):
  # `--config.input.data_dir=None` sets a string field to 'None'.
  seen = {}
  monkeypatch.setattr(training.trainer.data, 'load_dataset',
                      lambda source, **kwargs: seen.update(kwargs))
  config = config_util.runlocal_config('None')
  training.trainer.load_dataset(config.input)
  assert seen['data_dir'] is None
