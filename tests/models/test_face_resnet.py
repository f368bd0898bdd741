"""Tests of models.face_resnet.FaceResNet: the reference network's layout
and parameter count, and the sizes it refuses."""

import jax
import jax.numpy as jnp
import pytest

from centerloss_jax import models
from centerloss_jax.models import face_resnet
from model_params import conv_kernels
from model_params import TINY_RESNET


@pytest.fixture(scope='module')
def reference_params():
  """The shapes of the reference FaceResNet's params for CASIA-WebFace."""
  model = models.create_model('face_resnet', num_classes=10572)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 112, 96, 3)))['params']


def test_face_resnet_has_the_reference_27_conv_kernels(reference_params):
  convs = conv_kernels(reference_params)
  assert len(convs) == 27
  assert sorted(convs) == sorted(
      [(3, 3, 3, 32), (3, 3, 32, 64)] + [(3, 3, 64, 64)] * 2
      + [(3, 3, 64, 128)] + [(3, 3, 128, 128)] * 4 + [(3, 3, 128, 256)]
      + [(3, 3, 256, 256)] * 10 + [(3, 3, 256, 512)] + [(3, 3, 512, 512)] * 6)


def test_face_resnet_residual_blocks_have_two_convs_each(reference_params):
  assert [len(conv_kernels(reference_params[f'ResidualBlock_{i}']))
          for i in range(11)] == [2] * 11


def test_face_resnet_fc5_sees_a_5x4x512_map_at_112x96(reference_params):
  # 112x96 -> 108x92 -> 54x46 -> 52x44 -> 26x22 -> 24x20 -> 12x10 -> 10x8
  # -> 5x4.
  assert reference_params['fc5']['kernel'].shape == (5 * 4 * 512, 512)


def test_face_resnet_classifier_is_a_bias_free_kernel(reference_params):
  assert reference_params[face_resnet.CLASSIFIER_SCOPE] == {
      'kernel': jax.ShapeDtypeStruct((512, 10572), jnp.float32)}


def test_face_resnet_has_the_reference_param_count(reference_params):
  # Independent count: plain convs with bias, residual convs without,
  # one PReLU slope per channel after every conv.
  plain = [(3, 32), (32, 64), (64, 128), (128, 256), (256, 512)]
  residual = [(64, 1), (128, 2), (256, 5), (512, 3)]
  expected = sum(9 * i * o + o + o for i, o in plain)
  expected += sum(blocks * 2 * (9 * c * c + c) for c, blocks in residual)
  expected += 5 * 4 * 512 * 512 + 512 + 512 * 10572
  assert sum(x.size for x in jax.tree.leaves(reference_params)) == expected


def test_face_resnet_params_are_float32(reference_params):
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(reference_params))


def test_face_resnet_rejects_images_too_small_for_its_stages():
  model = models.create_model('face_resnet', **TINY_RESNET)
  with pytest.raises(ValueError, match=r'\(47, 96\) are too small'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 47, 96, 3)))


def test_face_resnet_accepts_48x48_images():
  model = models.create_model('face_resnet', **TINY_RESNET)
  jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


def test_face_resnet_first_stage_must_be_as_wide_as_the_stem():
  bad = models.create_model('face_resnet', stem_channels=(4, 8),
                            stage_channels=(16, 16, 16, 16))
  with pytest.raises(ValueError, match='stage_channels\\[0\\] = 16'):
    jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
