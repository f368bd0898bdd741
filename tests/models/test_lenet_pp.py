"""Tests of models.lenet_pp: LeNet++'s architecture (the paper's), its
outputs, its linear head's param path, and its 2x2 max-pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import models
from centerloss_jax.models.lenet_pp import max_pool_2x2
from model_params import key
from model_params import normal

# ---------------------------------------------------------------------------
# The paper's architecture.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def paper_variables():
  """The shapes of LeNet++'s variables for 10 classes and 2-D features."""
  model = models.create_model('lenet_pp', num_classes=10, feature_dim=2)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((4, 28, 28, 1)))


@pytest.fixture(scope='module')
def paper_shapes(paper_variables):
  return jax.tree.map(lambda x: x.shape, paper_variables['params'])


def test_lenet_pp_has_the_papers_six_5x5_convs(paper_shapes):
  kernels = [paper_shapes[f'Conv_{i}']['kernel'] for i in range(6)]
  assert kernels == [(5, 5, 1, 32), (5, 5, 32, 32), (5, 5, 32, 64),
                     (5, 5, 64, 64), (5, 5, 64, 128), (5, 5, 128, 128)]


def test_lenet_pp_fc_sees_a_3x3x128_map(paper_shapes):
  # 28 -> 14 -> 7 -> 3 after three 2x2 pools.
  assert paper_shapes['Dense_0']['kernel'] == (3 * 3 * 128, 2)


def test_lenet_pp_classifier_has_no_bias(paper_shapes):
  assert paper_shapes['Dense_1'] == {'kernel': (2, 10)}, (
      'classifier has no bias')


def test_lenet_pp_has_a_prelu_after_every_layer(paper_shapes):
  assert len([k for k in paper_shapes if k.startswith('PReLU')]) == 7


def test_lenet_pp_has_only_params(paper_variables):
  assert set(paper_variables) == {'params'}


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def bfloat16_outputs():
  """The shapes and dtypes of a bfloat16 LeNet++'s (features, logits)."""
  model = models.create_model('lenet_pp', num_classes=7, feature_dim=3,
                              stage_channels=(2, 2, 2), dtype=jnp.bfloat16)
  images = jnp.ones((5, 28, 28, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  return jax.eval_shape(model.apply, variables, images)


def test_lenet_pp_outputs_batch_by_feature_dim_and_num_classes(
    bfloat16_outputs):
  features, logits = bfloat16_outputs
  assert features.shape == (5, 3) and logits.shape == (5, 7)


def test_lenet_pp_outputs_are_float32_in_bfloat16(bfloat16_outputs):
  features, logits = bfloat16_outputs
  assert features.dtype == logits.dtype == jnp.float32


# ---------------------------------------------------------------------------
# The classifier head's param path.
# ---------------------------------------------------------------------------

IMAGES = jnp.ones((2, 28, 28, 1))
NARROW = dict(num_classes=10, feature_dim=2, stage_channels=(2, 2, 2))


def test_lenet_pp_classifier_scope_is_dense_1():
  assert models.classifier_scope('lenet_pp') == 'Dense_1'
  assert models.lenet_pp.CLASSIFIER_SCOPE == 'Dense_1'


def test_lenet_pp_param_scopes_are_flaxs_default_names():
  model = models.create_model('lenet_pp', **NARROW)
  params = jax.eval_shape(model.init, key(0), IMAGES)['params']
  assert set(params) == {'Conv_0', 'Conv_1', 'Conv_2', 'Conv_3', 'Conv_4',
                         'Conv_5', 'Dense_0', 'Dense_1'} | {
                             f'PReLU_{i}' for i in range(7)}


def test_lenet_pp_logits_are_the_features_times_the_classifier_kernel():
  model = models.create_model('lenet_pp', **NARROW)
  variables = jax.jit(model.init)(key(0), IMAGES)
  features, logits = jax.jit(model.apply)(variables, IMAGES)
  # Exact float64 products of the float32 values; a float32 sum of 2 terms
  # is within a few roundings of their magnitudes.
  features = np.asarray(features, np.float64)
  kernel = np.asarray(variables['params']['Dense_1']['kernel'], np.float64)
  difference = np.abs(np.asarray(logits, np.float64) - features @ kernel)
  assert np.all(difference <= 1e-6 * (np.abs(features) @ np.abs(kernel)))


def test_lenet_pp_cosine_classifier_keeps_the_dense_1_kernel():
  cosine = models.create_model('lenet_pp', classifier='cosine', **NARROW)
  cosine_params = jax.eval_shape(cosine.init, key(0), IMAGES)['params']
  assert jax.tree.map(jnp.shape, cosine_params['Dense_1']) == {
      'kernel': (2, 10)}


# ---------------------------------------------------------------------------
# max_pool_2x2.
# ---------------------------------------------------------------------------

POOL_INPUT = normal((2, 7, 7, 3))


def _flax_max_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def test_max_pool_2x2_values_equal_flax_max_pool():
  # Exact: a max selects one of its inputs.
  np.testing.assert_array_equal(jax.jit(max_pool_2x2)(POOL_INPUT),
                                jax.jit(_flax_max_pool)(POOL_INPUT))


def test_max_pool_2x2_gradient_equals_flax_max_pool():
  # Exact: the windows do not overlap, so each input's gradient is 0 or 1.
  def pooled_sum_grad(pool):
    return jax.jit(jax.grad(lambda x: pool(x).sum()))(POOL_INPUT)

  np.testing.assert_array_equal(pooled_sum_grad(max_pool_2x2),
                                pooled_sum_grad(_flax_max_pool))
