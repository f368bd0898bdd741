"""Tests of the face backbones, the classifier heads and LocallySharedConv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import models
from centerloss_jax.models import face_cnn
from centerloss_jax.models import face_resnet
from centerloss_jax.models import heads

# Tiny widths: the architectures (depth, pools, heads) at a fraction of the
# cost. FaceResNet needs at least 48x48 inputs.
TINY_RESNET = dict(stem_channels=(4, 8), stage_channels=(8, 8, 16, 16),
                   feature_dim=8)
# 8 conv channels, not fewer: a PReLU slope before a max-pool only gets a
# gradient through windows whose maximum is negative, which a handful of
# channels on a tiny map may not have (the gradient test then fails).
TINY_CNN = dict(conv_channels=8, local_channels=6, feature_dim=8)
FACE_MODELS = [('face_resnet', TINY_RESNET, (48, 48)),
               ('face_cnn', TINY_CNN, (24, 20))]


def _key(seed):
  # 'rbg' keys: initialising a network with the default threefry keys spends
  # most of its time compiling the random bit generator (~5x slower here).
  return jax.random.key(seed, impl='rbg')


def _normal(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _images(batch, size, seed=0):
  return _normal((batch, *size, 3), seed)


def _conv_kernels(params):
  """Shapes of the nn.Conv kernels (4-D 'kernel' params of a Conv_* scope)."""
  return [leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if path[-1].key == 'kernel' and len(leaf.shape) == 4
          and path[-2].key.startswith('Conv_')]


def test_face_resnet_has_the_reference_27_convs_and_param_count():
  model = models.create_model('face_resnet', num_classes=10572)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 112, 96, 3)))
  params = variables['params']
  convs = _conv_kernels(params)
  assert len(convs) == 27
  assert sorted(convs) == sorted(
      [(3, 3, 3, 32), (3, 3, 32, 64)] + [(3, 3, 64, 64)] * 2
      + [(3, 3, 64, 128)] + [(3, 3, 128, 128)] * 4 + [(3, 3, 128, 256)]
      + [(3, 3, 256, 256)] * 10 + [(3, 3, 256, 512)] + [(3, 3, 512, 512)] * 6)
  assert [len(_conv_kernels(params[f'ResidualBlock_{i}'])) for i in
          range(11)] == [2] * 11
  # 112x96 -> 108x92 -> 54x46 -> 52x44 -> 26x22 -> 24x20 -> 12x10 -> 10x8
  # -> 5x4: fc5 sees 5 * 4 * 512 inputs.
  assert params['fc5']['kernel'].shape == (5 * 4 * 512, 512)
  assert params[face_resnet.CLASSIFIER_SCOPE] == {
      'kernel': jax.ShapeDtypeStruct((512, 10572), jnp.float32)}
  # Independent count: plain convs with bias, residual convs without,
  # one PReLU slope per channel after every conv.
  plain = [(3, 32), (32, 64), (64, 128), (128, 256), (256, 512)]
  residual = [(64, 1), (128, 2), (256, 5), (512, 3)]
  expected = sum(9 * i * o + o + o for i, o in plain)
  expected += sum(blocks * 2 * (9 * c * c + c) for c, blocks in residual)
  expected += 5 * 4 * 512 * 512 + 512 + 512 * 10572
  assert sum(x.size for x in jax.tree.leaves(params)) == expected
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_face_cnn_layout_at_112x96():
  model = models.create_model('face_cnn', num_classes=100)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 112, 96, 3)))['params']
  # Four pools: 112x96 -> 56x48 -> 28x24 -> 14x12 -> 7x6; regions of 4, 2
  # and 1 tile 7x6 as 2x2, 4x3 and 7x6.
  assert params['local_conv1']['kernel'].shape == (2, 2, 9 * 128, 256)
  assert params['local_conv2']['kernel'].shape == (4, 3, 9 * 256, 256)
  assert params['local_conv3']['kernel'].shape == (7, 6, 9 * 256, 256)
  assert params['local_conv3']['bias'].shape == (7, 6, 256)
  # pool4 (7x6x128) and local_conv3 (7x6x256) concatenated.
  assert params['fc']['kernel'].shape == (7 * 6 * (128 + 256), 512)
  assert _conv_kernels(params) == [
      (3, 3, 3, 128), (3, 3, 128, 128), (3, 3, 128, 128), (3, 3, 128, 128)]


@pytest.fixture(scope='module', params=FACE_MODELS, ids=lambda p: p[0])
def tiny_face_model(request):
  """(name, widths, model, variables, images) of a tiny face model."""
  name, widths, size = request.param
  images = _images(4, size)
  model = models.create_model(name, num_classes=5, **widths)
  variables = jax.jit(model.init)(_key(0), images)
  return name, widths, model, variables, images


def test_outputs_are_float32_in_float32_and_bfloat16(tiny_face_model):
  name, widths, model, variables, images = tiny_face_model
  features, logits = jax.jit(model.apply, static_argnames='train')(
      variables, images, train=True)
  assert features.shape == (4, 8) and logits.shape == (4, 5)
  assert features.dtype == logits.dtype == jnp.float32
  bf16_model = models.create_model(name, num_classes=5, dtype=jnp.bfloat16,
                                   **widths)
  bf16_variables = jax.eval_shape(bf16_model.init, _key(0), images)
  assert jax.tree.map(lambda x: x.shape, bf16_variables) == jax.tree.map(
      lambda x: x.shape, variables)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_variables))
  bf16_features, bf16_logits = jax.jit(bf16_model.apply)(variables, images)
  assert bf16_features.dtype == bf16_logits.dtype == jnp.float32
  # Same params, bf16 arithmetic: close to the float32 result, not equal.
  scale = np.abs(features).max()
  np.testing.assert_allclose(bf16_features, features, atol=0.05 * scale)
  assert not np.array_equal(bf16_features, features)


def test_without_classifier_returns_features_and_none(tiny_face_model):
  name, widths, model, variables, images = tiny_face_model
  headless = models.create_model(name, num_classes=5, use_classifier=False,
                                 **widths)
  params = dict(variables['params'])
  kernel = params.pop(models.classifier_scope(name))['kernel']
  features, logits = jax.jit(headless.apply)({'params': params}, images)
  assert logits is None
  full_features, full_logits = jax.jit(model.apply)(variables, images)
  np.testing.assert_array_equal(features, full_features)
  np.testing.assert_allclose(full_logits, features @ kernel, rtol=1e-5,
                             atol=1e-5)


def _check_cosines(features, cosines, kernel):
  features = np.asarray(features, np.float64)
  kernel = np.asarray(kernel, np.float64)
  assert kernel.shape == (features.shape[1], cosines.shape[1])
  expected = ((features / np.linalg.norm(features, axis=1, keepdims=True))
              @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True)))
  np.testing.assert_allclose(cosines, expected, atol=1e-5)
  assert cosines.dtype == jnp.float32
  assert np.all(np.abs(cosines) <= 1.0)


def test_cosine_classifier_outputs_numpy_cosines(tiny_face_model):
  name, widths, _, variables, images = tiny_face_model
  model = models.create_model(name, num_classes=5, classifier='cosine',
                              **widths)
  # Both heads keep a (feature_dim, num_classes) 'kernel' in the same scope.
  assert jax.tree.map(jnp.shape, jax.eval_shape(
      model.init, _key(0), images)) == jax.tree.map(jnp.shape, variables)
  features, cosines = jax.jit(model.apply)(variables, images)
  _check_cosines(features, cosines,
                 variables['params'][models.classifier_scope(name)]['kernel'])


def test_cosine_classifier_gives_zero_and_finite_gradient_for_zero_feature():
  head = heads.CosineClassifier(num_classes=3)
  features = jnp.zeros((2, 4)).at[1].set(jnp.array([3.0, 0.0, 0.0, 4.0]))
  variables = head.init(_key(0), features)
  cosines = jax.jit(head.apply)(variables, features.astype(jnp.bfloat16))
  assert cosines.dtype == jnp.float32
  np.testing.assert_array_equal(cosines[0], np.zeros(3))
  kernel = np.asarray(variables['params']['kernel'])
  np.testing.assert_allclose(
      cosines[1], np.array([0.6, 0, 0, 0.8]) @ kernel
      / np.linalg.norm(kernel, axis=0), atol=1e-6)
  grads = jax.jit(jax.grad(lambda f: head.apply(variables, f).sum()))(
      features)
  assert np.all(np.isfinite(grads))


def test_lenet_pp_linear_head_keeps_its_param_path():
  images = jnp.ones((2, 28, 28, 1))
  model = models.create_model('lenet_pp', num_classes=10, feature_dim=2,
                              stage_channels=(2, 2, 2))
  variables = jax.jit(model.init)(_key(0), images)
  params = variables['params']
  assert models.classifier_scope('lenet_pp') == 'Dense_1'
  assert models.lenet_pp.CLASSIFIER_SCOPE == 'Dense_1'
  assert set(params) == {'Conv_0', 'Conv_1', 'Conv_2', 'Conv_3', 'Conv_4',
                         'Conv_5', 'Dense_0', 'Dense_1'} | {
                             f'PReLU_{i}' for i in range(7)}
  assert jax.tree.map(jnp.shape, params['Dense_1']) == {'kernel': (2, 10)}
  features, logits = jax.jit(model.apply)(variables, images)
  np.testing.assert_allclose(logits, features @ params['Dense_1']['kernel'],
                             rtol=1e-6)
  cosine = models.create_model('lenet_pp', num_classes=10, feature_dim=2,
                               stage_channels=(2, 2, 2), classifier='cosine')
  cosine_params = jax.eval_shape(cosine.init, _key(0), images)['params']
  assert jax.tree.map(jnp.shape, cosine_params['Dense_1']) == {
      'kernel': (2, 10)}


@pytest.mark.parametrize('name', ['lenet_pp', 'face_resnet', 'face_cnn'])
def test_unknown_classifier_is_rejected(name):
  model = models.create_model(name, classifier='arcface')
  with pytest.raises(ValueError, match="'arcface'.*'linear', 'cosine'"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 112, 96, 3)))


def test_registry_knows_the_face_models():
  assert isinstance(models.create_model('face_resnet'), models.FaceResNet)
  assert isinstance(models.create_model('face_cnn'), models.FaceCNN)
  assert models.classifier_scope('face_resnet') == 'classifier'
  assert models.classifier_scope('face_cnn') == 'classifier'
  with pytest.raises(ValueError, match="'vgg'.*'face_cnn', 'face_resnet'"):
    models.classifier_scope('vgg')


def test_face_resnet_rejects_bad_sizes():
  model = models.create_model('face_resnet', **TINY_RESNET)
  with pytest.raises(ValueError, match=r'\(47, 96\) are too small'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 47, 96, 3)))
  jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
  bad = models.create_model('face_resnet', stem_channels=(4, 8),
                            stage_channels=(16, 16, 16, 16))
  with pytest.raises(ValueError, match='stage_channels\\[0\\] = 16'):
    jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


def test_every_param_gets_a_gradient(tiny_face_model):
  _, _, model, variables, images = tiny_face_model
  rng = np.random.default_rng(2)
  feature_weights = rng.standard_normal((4, 8)).astype(np.float32)
  logit_weights = rng.standard_normal((4, 5)).astype(np.float32)

  def loss(params):
    features, logits = model.apply({'params': params}, images)
    return (features * feature_weights).sum() + (logits * logit_weights).sum()

  grads = jax.jit(jax.grad(loss))(variables['params'])
  norms = {jax.tree_util.keystr(path): float(jnp.abs(g).max())
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert [path for path, norm in norms.items() if not norm > 0] == []


def _local_params_from_conv(conv_kernel, conv_bias):
  """nn.Conv (kh, kw, cin, f) kernel as one (cin * kh * kw, f) patch kernel."""
  kh, kw, cin, features = conv_kernel.shape
  return (conv_kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, features),
          conv_bias)


def test_locally_shared_conv_with_1x1_regions_is_conv_local():
  x = _normal((2, 7, 6, 3))
  reference = nn.ConvLocal(4, (3, 3), padding='SAME')
  reference_params = reference.init(_key(1), x)['params']
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=1)
  params = layer.init(_key(2), x)['params']
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         reference_params)
  reference_params = {
      'kernel': reference_params['kernel'],
      'bias': _normal((7, 6, 4), 3)}
  np.testing.assert_allclose(layer.apply({'params': reference_params}, x),
                             reference.apply({'params': reference_params}, x),
                             atol=1e-5)


@pytest.mark.parametrize('region_size', [7, 100])
def test_locally_shared_conv_with_one_region_is_conv(region_size):
  x = _normal((2, 7, 6, 3))
  conv = nn.Conv(4, (3, 3), padding='SAME')
  conv_params = conv.init(_key(1), x)['params']
  conv_params['bias'] = _normal((4,), 2)
  kernel, bias = _local_params_from_conv(conv_params['kernel'],
                                         conv_params['bias'])
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=region_size)
  params = {'kernel': kernel[None, None], 'bias': bias[None, None]}
  assert jax.tree.map(jnp.shape, layer.init(_key(0), x)['params']) \
      == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(layer.apply({'params': params}, x),
                             conv.apply({'params': conv_params}, x),
                             atol=1e-5)


def test_locally_shared_conv_uses_each_regions_kernel_with_partial_edges():
  # 5x7 map, regions of 2: 3x4 regions, the last row and column partial.
  x = _normal((2, 5, 7, 3))
  layer = face_cnn.LocallySharedConv(4, (3, 3), region_size=2)
  params = layer.init(_key(1), x)['params']
  params['bias'] = _normal((3, 4, 4), 2)
  assert params['kernel'].shape == (3, 4, 27, 4)
  output = np.asarray(layer.apply({'params': params}, x))
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
    layer.init(_key(0), jnp.zeros((1, 4, 4, 2)))


@pytest.mark.parametrize('size', [(8, 6), (7, 5), (1, 2)])
def test_max_pool_3x3_stride_2_equals_flax_max_pool(size):
  x = _normal((2, *size, 3))

  def reference(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

  def values_and_grads(pool):
    weights = _normal(reference(x).shape, 1)
    return jax.value_and_grad(lambda x: (pool(x) * weights).sum())(x), pool(x)

  (loss, grad), pooled = jax.jit(
      lambda x: values_and_grads(face_cnn.max_pool_3x3_stride_2))(x)
  (expected_loss, expected_grad), expected = jax.jit(
      lambda x: values_and_grads(reference))(x)
  np.testing.assert_array_equal(pooled, expected)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)
