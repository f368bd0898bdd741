"""Tests of models.face_cnn: FaceCNN's layout at 112x96, LocallySharedConv
against Flax's ConvLocal and Conv, and the 3x3 stride-2 max-pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import models
from centerloss_jax.models import face_cnn
from model_params import conv_kernels
from model_params import key
from model_params import normal

# ---------------------------------------------------------------------------
# FaceCNN.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def params_112x96():
  """FaceCNN's param shapes at 112x96. Four pools: 112x96 -> 56x48 -> 28x24
  -> 14x12 -> 7x6."""
  model = models.create_model('face_cnn', num_classes=100)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 112, 96, 3)))['params']


def test_face_cnn_local_convs_tile_7x6_in_regions_of_4_2_and_1(
    params_112x96):
  # Regions of 4, 2 and 1 tile 7x6 as 2x2, 4x3 and 7x6.
  assert params_112x96['local_conv1']['kernel'].shape == (2, 2, 9 * 128, 256)
  assert params_112x96['local_conv2']['kernel'].shape == (4, 3, 9 * 256, 256)
  assert params_112x96['local_conv3']['kernel'].shape == (7, 6, 9 * 256, 256)


def test_face_cnn_last_local_conv_has_a_bias_per_position(params_112x96):
  assert params_112x96['local_conv3']['bias'].shape == (7, 6, 256)


def test_face_cnn_fc_sees_pool4_and_the_last_local_conv(params_112x96):
  # pool4 (7x6x128) and local_conv3 (7x6x256) concatenated.
  assert params_112x96['fc']['kernel'].shape == (7 * 6 * (128 + 256), 512)


def test_face_cnn_has_four_3x3_convs(params_112x96):
  assert conv_kernels(params_112x96) == [
      (3, 3, 3, 128), (3, 3, 128, 128), (3, 3, 128, 128), (3, 3, 128, 128)]


# ---------------------------------------------------------------------------
# LocallySharedConv.
# ---------------------------------------------------------------------------

INPUT = normal((2, 7, 6, 3))


@pytest.fixture(scope='module')
def conv_local():
  """(ConvLocal, its params with a random bias, LocallySharedConv of 1x1
  regions, the params it initialises)."""
  reference = nn.ConvLocal(4, (3, 3), padding='SAME')
  reference_params = jax.jit(reference.init)(key(1), INPUT)['params']
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=1)
  params = jax.jit(layer.init)(key(2), INPUT)['params']
  reference_params = {'kernel': reference_params['kernel'],
                      'bias': normal((7, 6, 4), 3)}
  return reference, reference_params, layer, params


def test_locally_shared_conv_with_1x1_regions_has_conv_locals_params(
    conv_local):
  _, reference_params, _, params = conv_local
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         reference_params)


def test_locally_shared_conv_with_1x1_regions_is_conv_local(conv_local):
  reference, reference_params, layer, _ = conv_local
  np.testing.assert_allclose(
      jax.jit(layer.apply)({'params': reference_params}, INPUT),
      jax.jit(reference.apply)({'params': reference_params}, INPUT),
      atol=1e-5)


def _local_params_from_conv(conv_kernel, conv_bias):
  """nn.Conv (kh, kw, cin, f) kernel as one (cin * kh * kw, f) patch kernel."""
  kh, kw, cin, features = conv_kernel.shape
  return (conv_kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, features),
          conv_bias)


@pytest.fixture(scope='module', params=[7, 100])
def one_region(request):
  """(nn.Conv, its params, LocallySharedConv with one region, the conv's
  params as its one region's)."""
  conv = nn.Conv(4, (3, 3), padding='SAME')
  conv_params = jax.jit(conv.init)(key(1), INPUT)['params']
  conv_params['bias'] = normal((4,), 2)
  kernel, bias = _local_params_from_conv(conv_params['kernel'],
                                         conv_params['bias'])
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=request.param)
  params = {'kernel': kernel[None, None], 'bias': bias[None, None]}
  return conv, conv_params, layer, params


def test_locally_shared_conv_with_one_region_has_one_kernel(one_region):
  _, _, layer, params = one_region
  assert jax.tree.map(jnp.shape, jax.eval_shape(
      layer.init, key(0), INPUT)['params']) == jax.tree.map(jnp.shape, params)


def test_locally_shared_conv_with_one_region_is_conv(one_region):
  conv, conv_params, layer, params = one_region
  np.testing.assert_allclose(
      jax.jit(layer.apply)({'params': params}, INPUT),
      jax.jit(conv.apply)({'params': conv_params}, INPUT), atol=1e-5)


@pytest.fixture(scope='module')
def partial_regions():
  """(input, params, output) of regions of 2 on a 5x7 map: 3x4 regions, the
  last row and column partial."""
  x = normal((2, 5, 7, 3))
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=2)
  params = jax.jit(layer.init)(key(1), x)['params']
  params['bias'] = normal((3, 4, 4), 2)
  return x, params, np.asarray(jax.jit(layer.apply)({'params': params}, x))


def test_locally_shared_conv_has_a_kernel_per_region(partial_regions):
  _, params, _ = partial_regions
  assert params['kernel'].shape == (3, 4, 27, 4)


def test_locally_shared_conv_uses_each_regions_kernel_with_partial_edges(
    partial_regions):
  x, params, output = partial_regions
  # Position (i, j) must equal an ordinary conv with region (i//2, j//2)'s
  # kernel, evaluated there.
  conv_apply = jax.jit(nn.Conv(4, (3, 3), padding='SAME').apply)
  for a in range(3):
    for b in range(4):
      kernel = params['kernel'][a, b].reshape(3, 3, 3, 4).transpose(1, 2, 0, 3)
      region_output = conv_apply(
          {'params': {'kernel': kernel, 'bias': params['bias'][a, b]}}, x)
      np.testing.assert_allclose(output[:, 2 * a:2 * a + 2, 2 * b:2 * b + 2],
                                 region_output[:, 2 * a:2 * a + 2,
                                               2 * b:2 * b + 2], atol=1e-5)


def test_locally_shared_conv_rejects_bad_region_size():
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=0)
  with pytest.raises(ValueError, match='region_size.*got 0'):
    layer.init(key(0), jnp.zeros((1, 4, 4, 2)))


# ---------------------------------------------------------------------------
# max_pool_3x3_stride_2.
# ---------------------------------------------------------------------------


def _flax_max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')


@pytest.fixture(scope='module', params=[(8, 6), (7, 5), (1, 2)],
                ids=lambda size: 'x'.join(map(str, size)))
def pooled(request):
  """For FaceCNN's pool and Flax's: ((loss, its gradient), pooled), where
  loss is the pooled values weighted by random weights."""
  x = normal((2, *request.param, 3))
  weights = normal(_flax_max_pool(x).shape, 1)

  def values_and_grads(pool):
    return jax.value_and_grad(lambda x: (pool(x) * weights).sum())(x), pool(x)

  return (jax.jit(lambda x: values_and_grads(face_cnn.max_pool_3x3_stride_2))(
      x), jax.jit(lambda x: values_and_grads(_flax_max_pool))(x))


def test_max_pool_3x3_stride_2_values_equal_flax_max_pool(pooled):
  # Exact: a max selects one of its inputs.
  (_, got), (_, expected) = pooled
  np.testing.assert_array_equal(got, expected)


def test_max_pool_3x3_stride_2_weighted_sum_equals_flax_max_pool(pooled):
  ((loss, _), _), ((expected_loss, _), _) = pooled
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)


def test_max_pool_3x3_stride_2_gradient_equals_flax_max_pool(pooled):
  ((_, grad), _), ((_, expected_grad), _) = pooled
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)
