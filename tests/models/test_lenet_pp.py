"""Shape and structure tests of LeNet++."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import models
from centerloss_jax.models.lenet_pp import max_pool_2x2


def test_lenet_pp_matches_the_paper_architecture():
  model = models.create_model('lenet_pp', num_classes=10, feature_dim=2)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((4, 28, 28, 1)))
  shapes = jax.tree.map(lambda x: x.shape, variables['params'])
  kernels = [shapes[f'Conv_{i}']['kernel'] for i in range(6)]
  assert kernels == [(5, 5, 1, 32), (5, 5, 32, 32), (5, 5, 32, 64),
                     (5, 5, 64, 64), (5, 5, 64, 128), (5, 5, 128, 128)]
  # 28 -> 14 -> 7 -> 3 after three 2x2 pools: 3 * 3 * 128 inputs to the FC.
  assert shapes['Dense_0']['kernel'] == (3 * 3 * 128, 2)
  assert shapes['Dense_1'] == {'kernel': (2, 10)}, 'classifier has no bias'
  assert len([k for k in shapes if k.startswith('PReLU')]) == 7
  assert set(variables) == {'params'}


def test_lenet_pp_returns_float32_features_and_logits():
  model = models.create_model('lenet_pp', num_classes=7, feature_dim=3,
                              stage_channels=(2, 2, 2), dtype=jnp.bfloat16)
  images = jnp.ones((5, 28, 28, 1))
  variables = model.init(jax.random.key(0), images)
  features, logits = model.apply(variables, images)
  assert features.shape == (5, 3) and logits.shape == (5, 7)
  assert features.dtype == logits.dtype == jnp.float32


def test_max_pool_2x2_equals_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  np.testing.assert_array_equal(max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))
  grad = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
  reference = jax.grad(lambda x: nn.max_pool(x, (2, 2), (2, 2)).sum())(x)
  np.testing.assert_array_equal(grad, reference)


def test_unknown_model_name_is_rejected():
  with pytest.raises(ValueError, match="'resnet'.*'lenet_pp'"):
    models.create_model('resnet')
