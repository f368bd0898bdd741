"""Tests of the models package: the registry (`create_model`,
`classifier_scope`), and the properties every face model shares, each test
parametrised over tiny FaceResNet and FaceCNN: float32 outputs in float32
and bfloat16, the headless and cosine variants, a gradient for every
param."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import models
from model_params import key
from model_params import normal
from model_params import TINY_CNN
from model_params import TINY_RESNET

FACE_MODELS = ['face_resnet', 'face_cnn']

# ---------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name, model_class', [
    ('face_resnet', models.FaceResNet), ('face_cnn', models.FaceCNN)])
def test_create_model_builds_the_named_model(name, model_class):
  assert isinstance(models.create_model(name), model_class)


def test_unknown_model_name_is_rejected():
  with pytest.raises(ValueError, match="'resnet'.*'lenet_pp'"):
    models.create_model('resnet')


@pytest.mark.parametrize('name', FACE_MODELS)
def test_face_models_classifier_scope_is_classifier(name):
  assert models.classifier_scope(name) == 'classifier'


def test_classifier_scope_of_an_unknown_model_is_rejected():
  with pytest.raises(ValueError, match="'vgg'.*'face_cnn', 'face_resnet'"):
    models.classifier_scope('vgg')


@pytest.mark.parametrize('name', ['lenet_pp', 'face_resnet', 'face_cnn'])
def test_unknown_classifier_is_rejected(name):
  model = models.create_model(name, classifier='arcface')
  with pytest.raises(ValueError, match="'arcface'.*'linear', 'cosine'"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 112, 96, 3)))


# ---------------------------------------------------------------------------
# Tiny face models: 4 images, 5 classes, 8-D features.
# ---------------------------------------------------------------------------


# Each face model's tiny widths and image size.
TINY_FACE_MODELS = {'face_resnet': (TINY_RESNET, (48, 48)),
                    'face_cnn': (TINY_CNN, (24, 20))}


class TinyFaceModel:
  """A tiny face model, 4 images, and its variables: their shapes traced
  (no compile), the values initialised when first asked for."""

  def __init__(self, name):
    self.name = name
    self.widths, size = TINY_FACE_MODELS[name]
    self.images = normal((4, *size, 3))
    self.model = self.variant()
    self.variable_shapes = jax.eval_shape(self.model.init, key(0),
                                          self.images)

  @functools.cached_property
  def variables(self):
    return jax.jit(self.model.init)(key(0), self.images)

  def variant(self, **attributes):
    """The model with these attributes (same widths, 5 classes)."""
    return models.create_model(self.name, num_classes=5, **attributes,
                               **self.widths)


@pytest.fixture(scope='module', params=FACE_MODELS)
def tiny_shapes(request):
  """A tiny face model for tests of shapes and dtypes only."""
  return TinyFaceModel(request.param)


# Initialising the tiny FaceResNet alone compiles for seconds.
@pytest.fixture(scope='module', params=[
    pytest.param('face_resnet', marks=pytest.mark.slow), 'face_cnn'])
def tiny(request):
  """A tiny face model for tests of computed values."""
  return TinyFaceModel(request.param)


@pytest.fixture(scope='module')
def float32_outputs(tiny):
  return jax.jit(tiny.model.apply)(tiny.variables, tiny.images)


def test_outputs_are_batch_by_feature_dim_and_num_classes(tiny_shapes):
  features, logits = jax.eval_shape(
      lambda v, x: tiny_shapes.model.apply(v, x, train=True),
      tiny_shapes.variable_shapes, tiny_shapes.images)
  assert features.shape == (4, 8) and logits.shape == (4, 5)


def test_float32_outputs_are_float32(float32_outputs):
  features, logits = float32_outputs
  assert features.dtype == logits.dtype == jnp.float32


@pytest.fixture(scope='module')
def bfloat16_variables(tiny_shapes):
  """The shapes and dtypes of the bfloat16 model's variables."""
  return jax.eval_shape(tiny_shapes.variant(dtype=jnp.bfloat16).init, key(0),
                        tiny_shapes.images)


def test_bfloat16_model_has_the_float32_models_param_shapes(
    tiny_shapes, bfloat16_variables):
  assert jax.tree.map(lambda x: x.shape, bfloat16_variables) == jax.tree.map(
      lambda x: x.shape, tiny_shapes.variable_shapes)


def test_bfloat16_model_keeps_float32_params(bfloat16_variables):
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(bfloat16_variables))


@pytest.fixture(scope='module')
def bfloat16_outputs(tiny):
  """The bfloat16 model's outputs with the float32 model's params."""
  return jax.jit(tiny.variant(dtype=jnp.bfloat16).apply)(tiny.variables,
                                                         tiny.images)


def test_bfloat16_outputs_are_float32(bfloat16_outputs):
  features, logits = bfloat16_outputs
  assert features.dtype == logits.dtype == jnp.float32


def test_bfloat16_features_are_close_to_float32(float32_outputs,
                                                bfloat16_outputs):
  features, bf16_features = float32_outputs[0], bfloat16_outputs[0]
  scale = np.abs(features).max()
  np.testing.assert_allclose(bf16_features, features, atol=0.05 * scale)


def test_bfloat16_model_computes_in_bfloat16(float32_outputs,
                                             bfloat16_outputs):
  # Same params, bf16 arithmetic: not equal to the float32 result.
  assert not np.array_equal(bfloat16_outputs[0], float32_outputs[0])


@pytest.fixture(scope='module')
def headless_outputs(tiny):
  """(features, logits) of the model without its classifier, with the same
  params less the classifier's."""
  params = dict(tiny.variables['params'])
  params.pop(models.classifier_scope(tiny.name))
  return jax.jit(tiny.variant(use_classifier=False).apply)(
      {'params': params}, tiny.images)


def test_headless_model_returns_no_logits(headless_outputs):
  assert headless_outputs[1] is None


def test_headless_model_features_equal_the_full_models(headless_outputs,
                                                       float32_outputs):
  np.testing.assert_array_equal(headless_outputs[0], float32_outputs[0])


def test_logits_are_the_features_times_the_classifier_kernel(
    tiny, float32_outputs):
  features, logits = float32_outputs
  kernel = tiny.variables['params'][models.classifier_scope(tiny.name)][
      'kernel']
  np.testing.assert_allclose(logits, features @ kernel, rtol=1e-5, atol=1e-5)


def test_cosine_model_has_the_linear_models_param_shapes(tiny_shapes):
  # Both heads keep a (feature_dim, num_classes) 'kernel' in the same scope.
  cosine_model = tiny_shapes.variant(classifier='cosine')
  assert jax.tree.map(jnp.shape, jax.eval_shape(
      cosine_model.init, key(0), tiny_shapes.images)) == jax.tree.map(
          jnp.shape, tiny_shapes.variable_shapes)


@pytest.fixture(scope='module')
def cosine_outputs(tiny):
  """(features, cosines) of the cosine-head model with the same params."""
  return jax.jit(tiny.variant(classifier='cosine').apply)(tiny.variables,
                                                          tiny.images)


def test_cosine_model_outputs_the_features_cosines_to_the_class_weights(
    tiny, cosine_outputs):
  features, cosines = cosine_outputs
  features = np.asarray(features, np.float64)
  kernel = np.asarray(
      tiny.variables['params'][models.classifier_scope(tiny.name)]['kernel'],
      np.float64)
  assert kernel.shape == (features.shape[1], cosines.shape[1])
  expected = ((features / np.linalg.norm(features, axis=1, keepdims=True))
              @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True)))
  np.testing.assert_allclose(cosines, expected, atol=1e-5)


def test_cosine_model_outputs_float32_cosines(cosine_outputs):
  assert cosine_outputs[1].dtype == jnp.float32


def test_cosine_model_outputs_are_within_minus_one_and_one(cosine_outputs):
  assert np.all(np.abs(cosine_outputs[1]) <= 1.0)


@pytest.mark.slow
def test_every_param_gets_a_gradient(tiny):
  rng = np.random.default_rng(2)
  feature_weights = rng.standard_normal((4, 8)).astype(np.float32)
  logit_weights = rng.standard_normal((4, 5)).astype(np.float32)

  def loss(params):
    features, logits = tiny.model.apply({'params': params}, tiny.images)
    return (features * feature_weights).sum() + (logits * logit_weights).sum()

  grads = jax.jit(jax.grad(loss))(tiny.variables['params'])
  norms = {jax.tree_util.keystr(path): float(jnp.abs(g).max())
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert [path for path, norm in norms.items() if not norm > 0] == []
