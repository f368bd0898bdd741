"""The run's config and workdir, checked before any work; the stored config
compared on resume, on evaluation and for a study's records."""

import os

import pytest

from centerloss_jax import training
from centerloss_jax.training import run_config
import config_util


@pytest.mark.parametrize('field,value,message', [
    ('center_loss.alpha', -0.5, r'alpha .*\[0, 1\].*-0.5'),
    ('center_loss.alpha', 1.5, r'alpha .*\[0, 1\].*1.5'),
    ('center_loss.weight', -0.01, r'center_loss.weight must be .*-0.01'),
    ('learning_rate', -0.01, r'learning_rate must be .* > 0.*-0.01'),
    ('num_epochs', 0.0, r'num_epochs must be > 0'),
    ('num_epochs', -1.0, r'num_epochs must be > 0.*-1'),
    ('checkpoint_every_steps', 0, r'checkpoint_every_steps must be an '
     r'integer >= 1, got 0'),
    ('log_every_steps', 0, r'log_every_steps must be an integer >= 1'),
    ('grad_clip_norm', 0.0, r'grad_clip_norm must be None .* > 0, got 0.0'),
])
def test_bad_values_are_refused_before_the_workdir_is_touched(
    tiny_idx_dir, tmp_path, field, value, message):
  config = config_util.runlocal_config(tiny_idx_dir, **{field: value})
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_an_empty_workdir_is_refused(tiny_idx_dir):
  config = config_util.runlocal_config(tiny_idx_dir)
  with pytest.raises(ValueError, match='empty path'):
    training.train_and_evaluate(config, '')


def test_checkpoints_that_is_a_file_fails_before_any_work(tiny_idx_dir,
                                                          tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('not a directory')
  config = config_util.runlocal_config(tiny_idx_dir)
  with pytest.raises(NotADirectoryError, match='checkpoints exists and is '
                     'not a directory'):
    training.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['checkpoints']


def test_config_comparison_names_trajectory_fields_only():
  stored = {'learning_rate': 0.01, 'log_every_steps': 50,
            'model': {'name': 'lenet_pp'}, 'evaluation': {'pca_dim': None}}
  current = {'learning_rate': 0.1, 'log_every_steps': 5,
             'model': {'name': 'face_resnet'}, 'evaluation': {'pca_dim': 64},
             'center_loss': {'rule': 'paper'}}  # A field added since.
  assert run_config.config_changes(stored, current) == [
      "learning_rate: 0.01 -> 0.1", "model.name: 'lenet_pp' -> 'face_resnet'"]


@pytest.mark.parametrize('field,value', [
    ('schedule', 'cosine'), ('num_epochs', 4.0), ('num_train_steps', 100),
    ('warmup_epochs', 0.5), ('lr_boundaries', (8, 12))])
def test_a_changed_schedule_or_length_is_refused_on_resume(tmp_path, field,
                                                          value):
  config = config_util.runlocal_config(None)
  run_config.store_or_compare(str(tmp_path), config, allow_changes=False,
                              write=True)
  changed = config_util.runlocal_config(None, **{field: value})
  with pytest.raises(run_config.ConfigChangedError,
                     match=rf'{field}: .* -> .*allow_config_change'):
    run_config.store_or_compare(str(tmp_path), changed,
                                allow_changes=False, write=True)


_STORED = {'learning_rate': 0.01, 'batch_size': 128, 'parallel': 'jit',
           'model': {'feature_dim': 128},
           'evaluation': {'pca_dim': None},
           'input': {'pairs_dir': '/a', 'num_classes': 10,
                     'image_shape': [56, 48, 3]}}


def test_evaluation_may_change_evaluation_and_data_fields():
  evaluation = {'learning_rate': 0.01, 'batch_size': 64,
                'parallel': 'shard_map', 'model': {'feature_dim': 128},
                'evaluation': {'pca_dim': 64},
                'input': {'pairs_dir': '/b', 'num_classes': 10,
                          'image_shape': [56, 48, 3]}}
  assert run_config.evaluation_changes(_STORED, evaluation) == []


def test_evaluation_names_the_model_and_training_fields_it_changes():
  other = {'learning_rate': 0.1, 'model': {'feature_dim': 64},
           'input': {'num_classes': 12, 'image_shape': [112, 96, 3]}}
  assert run_config.evaluation_changes(_STORED, other) == [
      'input.image_shape: [56, 48, 3] -> [112, 96, 3]',
      'input.num_classes: 10 -> 12', 'learning_rate: 0.01 -> 0.1',
      'model.feature_dim: 128 -> 64']
