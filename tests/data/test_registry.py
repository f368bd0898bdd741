"""Tests of data.registry.load_dataset: sources by name, their loaders'
keyword arguments checked by name; and the trainer's `config.input` edge,
which hands the loader's fields to it."""

import ml_collections
import pytest

from centerloss_jax import data
from centerloss_jax import training
from idx_files import idx_source
from idx_files import random_split
from idx_files import write_idx_split


def test_load_dataset_unknown_source_names_it_and_the_choices():
  with pytest.raises(ValueError, match=r"'csv'.*\('idx', 'tfds', "
                     r"'synthetic_faces', 'identity_folders'\)"):
    data.load_dataset(**idx_source(source='csv'))


def test_load_dataset_misspelled_key_names_it_and_the_accepted_ones():
  with pytest.raises(ValueError, match=r"'idx' does not take 'data_dri'; it "
                     r"accepts data_dir, name, num_classes, test_subset, "
                     r"train_subset"):
    data.load_dataset(**idx_source(data_dri='/nowhere'))


def test_load_dataset_names_a_missing_required_argument():
  with pytest.raises(ValueError, match="'synthetic_faces' needs "
                     "'num_train_identities'"):
    data.load_dataset('synthetic_faces', images_per_identity=2,
                      num_train_identities=None)


def test_load_dataset_none_arguments_take_the_loaders_defaults():
  # As from a config: num_probe_identities=None is the loader's default
  # (no identification set); 0 verification identities is no pairs.
  only_train = data.load_dataset(
      'synthetic_faces', seed=1, image_shape=(28, 24, 3),
      num_train_identities=6, images_per_identity=3,
      test_images_per_identity=1, num_verification_identities=0,
      pairs_per_fold=4, num_probe_identities=None,
      probe_images_per_identity=2, num_distractors=5, difficulty=1.0)
  assert only_train.verification is None and only_train.identification is None


@pytest.fixture(scope='module')
def input_config(tmp_path_factory):
  """An experiment's `config.input` for IDX files, with augmentation."""
  directory = tmp_path_factory.mktemp('idx')
  write_idx_split(directory, 'train', *random_split(4))
  write_idx_split(directory, 'test', *random_split(2))
  return ml_collections.ConfigDict(dict(
      idx_source(data_dir=str(directory)), crop_padding=2, flip=True))


def test_trainer_load_dataset_keeps_augmentation_fields_from_the_loader(
    input_config):
  assert training.trainer.load_dataset(input_config).train.num_examples == 4


def test_trainer_load_dataset_names_a_field_no_one_reads(input_config):
  misspelled = ml_collections.ConfigDict(input_config.to_dict())
  misspelled.train_subet = 2
  with pytest.raises(ValueError, match=r"'train_subet', which input source "
                     r"'idx' does not take.*reads crop_padding, flip"):
    training.trainer.load_dataset(misspelled)
