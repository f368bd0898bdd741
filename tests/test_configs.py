"""Tests of the experiment configs (configs/): each builds with and without
`runlocal`, declares every field its model and loader take (so any can be
narrowed on the command line), and the MNIST config trains from TFDS mock
data."""

import dataclasses
import importlib

import pytest

from centerloss_jax import data
from centerloss_jax import models
from centerloss_jax import training

LENET_CONFIGS = ['default', 'fashion_mnist_lenetpp', 'mnist_lenetpp']
FACE_CONFIGS = ['casia_webface_face_resnet', 'face_scale', 'synthetic_faces']
CONFIGS = LENET_CONFIGS + FACE_CONFIGS
ARGS = [None, 'runlocal']

# Model attributes the trainer sets itself, not the config's `model` group.
TRAINER_SET_MODEL_FIELDS = {'parent', 'name', 'num_classes', 'use_classifier',
                            'classifier'}


def get_config(name, arg=None):
  return importlib.import_module(f'configs.{name}').get_config(arg)


def create_model(config):
  """The config's model, built by the trainer from every `model` field."""
  return training.state.create_model(config,
                                     num_classes=config.input.num_classes)


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_parallel_is_a_known_mode(name, arg):
  assert get_config(name, arg).parallel in ('jit', 'pmap', 'shard_map')


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_loss_settings_parse(name, arg):
  config = get_config(name, arg)
  training.ClassifierLoss.from_config(config.loss)
  training.PairLoss.from_config(config.loss)


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_model_accepts_every_model_field(name, arg):
  # A field the model does not take is a TypeError here.
  create_model(get_config(name, arg))


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_model_has_the_classifier_its_loss_needs(name, arg):
  config = get_config(name, arg)
  classifier_loss = training.ClassifierLoss.from_config(config.loss)
  assert create_model(config).classifier == classifier_loss.model_classifier


@pytest.mark.parametrize('name', LENET_CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_mnist_configs_train_lenet_pp(name, arg):
  assert get_config(name, arg).model.name == 'lenet_pp'


@pytest.mark.parametrize('name', LENET_CONFIGS)
def test_mnist_runlocal_configs_train_on_at_most_256_images(name):
  assert get_config(name, 'runlocal').input.train_subset <= 256


@pytest.mark.parametrize('name', FACE_CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_face_configs_train_face_resnet(name, arg):
  assert get_config(name, arg).model.name == 'face_resnet'


@pytest.mark.parametrize('name', FACE_CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_face_configs_crop_112x96_or_56x48(name, arg):
  assert tuple(get_config(name, arg).input.image_shape)[:2] in ((112, 96),
                                                                (56, 48))


@pytest.mark.parametrize('name', FACE_CONFIGS)
def test_face_runlocal_configs_are_tiny(name):
  config = get_config(name, 'runlocal')
  assert config.batch_size <= 16 and config.model.feature_dim <= 16


@pytest.mark.parametrize('name', FACE_CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_face_configs_evaluate_every_n_steps(name, arg):
  # Each evaluation runs the open-set protocols: face configs give a
  # cadence in steps, not -1 (every epoch).
  assert get_config(name, arg).eval_every_steps > 0


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_declares_every_field_its_model_takes(name, arg):
  # So that any of them can be overridden on the command line
  # (`--config.model.stage_channels=...`) from the base config.
  config = get_config(name, arg)
  model_fields = {field.name
                  for field in dataclasses.fields(type(create_model(config)))}
  assert (model_fields - TRAINER_SET_MODEL_FIELDS) <= set(config.model), (
      model_fields - TRAINER_SET_MODEL_FIELDS - set(config.model))


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', ARGS)
def test_config_declares_every_argument_its_loader_takes(name, arg):
  config = get_config(name, arg)
  loader_fields = set(data.registry.accepted_arguments(config.input.source))
  assert loader_fields <= set(config.input), loader_fields - set(config.input)


def test_base_face_config_declares_the_reference_network():
  config = get_config('casia_webface_face_resnet')
  reference = models.FaceResNet()
  assert config.model.feature_dim == reference.feature_dim == 512
  for field in ('stem_channels', 'stage_channels', 'stage_blocks'):
    assert tuple(config.model[field]) == tuple(getattr(reference, field))


@pytest.mark.parametrize('name', CONFIGS)
def test_unknown_variant_is_rejected(name):
  with pytest.raises(ValueError, match="'bogus'"):
    get_config(name, 'bogus')


@pytest.fixture(scope='module')
def mock_mnist_run(tmp_path_factory):
  """(metrics, workdir) of one epoch of mnist_lenetpp's runlocal variant,
  sharded, on TFDS mock data."""
  tfds = pytest.importorskip('tensorflow_datasets')
  workdir = tmp_path_factory.mktemp('mnist_run')
  config = get_config('mnist_lenetpp', 'runlocal')
  config.num_epochs = 1.0
  config.parallel = 'shard_map'
  with tfds.testing.mock_data(num_examples=300):
    metrics = training.train_and_evaluate(config, str(workdir))
  return metrics, workdir


@pytest.mark.slow
def test_mnist_config_evaluates_runlocals_test_subset(mock_mnist_run):
  metrics, _ = mock_mnist_run
  assert metrics['num_examples'] == 100


@pytest.mark.slow
def test_mnist_config_plots_the_features_at_the_last_step(mock_mnist_run):
  _, workdir = mock_mnist_run
  assert (workdir / 'features_step_8.png').exists()
