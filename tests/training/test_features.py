"""The open-set evaluation's feature step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import training


class _TinyConvEmbedder(nn.Module):
  """Features that depend on left/right: a conv then a flattening Dense."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.Conv(2, (3, 3))(x).reshape((x.shape[0], -1))
    features = nn.Dense(3)(x)
    return features, nn.Dense(4)(features)


def _image_state():
  model = _TinyConvEmbedder()
  params = model.init(jax.random.key(0), jnp.zeros((1, 6, 5, 1)))['params']
  return training.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
      centers=jnp.zeros((4, 3)), batch_stats={}, rng=jax.random.key(1))


@pytest.mark.slow
def test_feature_step_concatenates_image_and_mirror_features():
  state = _image_state()
  images = np.random.default_rng(0).normal(size=(4, 6, 5, 1)).astype(
      np.float32)
  batch = {'image': images, 'index': np.arange(4, dtype=np.int32),
           'weight': np.ones(4, np.float32)}
  _, outputs = jax.jit(functools.partial(training.features.feature_step,
                                         mirror=True))(state, batch)
  np.testing.assert_array_equal(outputs['index'], batch['index'])
  plain, _ = state.apply_fn({'params': state.params}, images)
  mirrored, _ = state.apply_fn({'params': state.params}, images[:, :, ::-1])
  assert not np.allclose(plain, mirrored)
  np.testing.assert_allclose(outputs['feature'],
                             np.concatenate([plain, mirrored], -1),
                             rtol=1e-5, atol=1e-6)
