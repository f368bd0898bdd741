"""Every experiment config builds, declares what it can be narrowed by, and
the TFDS path trains on mock data."""

import dataclasses
import importlib

import pytest
import tensorflow_datasets as tfds

from centerloss_jax import data
from centerloss_jax import models
from centerloss_jax import training

LENET_CONFIGS = ['default', 'fashion_mnist_lenetpp', 'mnist_lenetpp']
FACE_CONFIGS = ['casia_webface_face_resnet', 'face_scale', 'synthetic_faces']
CONFIGS = LENET_CONFIGS + FACE_CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', [None, 'runlocal'])
def test_config_builds(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  assert config.parallel in ('jit', 'pmap', 'shard_map')
  # The loss settings parse, and the model accepts every config field.
  classifier_loss = training.ClassifierLoss.from_config(config.loss)
  training.PairLoss.from_config(config.loss)
  model = training.state.create_model(config, num_classes=config.input.num_classes)
  assert model.classifier == classifier_loss.model_classifier
  if name in LENET_CONFIGS:
    assert config.model.name == 'lenet_pp'
    if arg == 'runlocal':
      assert config.input.train_subset <= 256
  else:
    assert config.model.name == 'face_resnet'
    assert tuple(config.input.image_shape)[:2] in ((112, 96), (56, 48))
    if arg == 'runlocal':
      assert config.batch_size <= 16 and config.model.feature_dim <= 16
    # Each evaluation runs the open-set protocols: face configs give a
    # cadence in steps, not -1 (every epoch).
    assert config.eval_every_steps > 0


# Model attributes the trainer sets itself, not the config's `model` group.
TRAINER_SET_MODEL_FIELDS = {'parent', 'name', 'num_classes', 'use_classifier',
                            'classifier'}


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', [None, 'runlocal'])
def test_config_declares_every_field_its_model_and_loader_take(name, arg):
  # So that any of them can be overridden on the command line
  # (`--config.model.stage_channels=...`) from the base config.
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  model_class = type(training.state.create_model(
      config, num_classes=config.input.num_classes))
  model_fields = {field.name for field in dataclasses.fields(model_class)}
  assert (model_fields - TRAINER_SET_MODEL_FIELDS) <= set(config.model), (
      model_fields - TRAINER_SET_MODEL_FIELDS - set(config.model))
  loader_fields = set(data.registry.accepted_arguments(config.input.source))
  assert loader_fields <= set(config.input), loader_fields - set(config.input)


def test_base_face_config_declares_the_reference_network():
  config = importlib.import_module(
      'configs.casia_webface_face_resnet').get_config()
  reference = models.FaceResNet()
  assert config.model.feature_dim == reference.feature_dim == 512
  for field in ('stem_channels', 'stage_channels', 'stage_blocks'):
    assert tuple(config.model[field]) == tuple(getattr(reference, field))


@pytest.mark.parametrize('name', CONFIGS)
def test_unknown_variant_is_rejected(name):
  module = importlib.import_module(f'configs.{name}')
  with pytest.raises(ValueError, match="'bogus'"):
    module.get_config('bogus')


def test_mnist_config_trains_on_tfds_mock_data(tmp_path):
  config = importlib.import_module('configs.mnist_lenetpp').get_config(
      'runlocal')
  config.num_epochs = 1.0
  config.parallel = 'shard_map'
  with tfds.testing.mock_data(num_examples=300):
    metrics = training.train_and_evaluate(config, str(tmp_path))
  assert metrics['num_examples'] == 100  # runlocal's test_subset.
  assert (tmp_path / 'features_step_8.png').exists()
