"""Tests of models.heads.CosineClassifier: float32 cosines, a zero feature
scores 0 with a finite gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax.models import heads
from model_params import key


@pytest.fixture(scope='module')
def zero_and_3_4_features():
  """(head, variables, features, cosines of the bfloat16 features): feature
  0 is zero, feature 1 is (3, 0, 0, 4)."""
  head = heads.CosineClassifier(num_classes=3)
  features = jnp.zeros((2, 4)).at[1].set(jnp.array([3.0, 0.0, 0.0, 4.0]))
  variables = jax.jit(head.init)(key(0), features)
  cosines = jax.jit(head.apply)(variables, features.astype(jnp.bfloat16))
  return head, variables, features, cosines


def test_cosine_classifier_outputs_float32_for_bfloat16_features(
    zero_and_3_4_features):
  cosines = zero_and_3_4_features[3]
  assert cosines.dtype == jnp.float32


def test_cosine_classifier_scores_a_zero_feature_zero(zero_and_3_4_features):
  cosines = zero_and_3_4_features[3]
  np.testing.assert_array_equal(cosines[0], np.zeros(3))


def test_cosine_classifier_scores_are_cosines_to_the_class_weights(
    zero_and_3_4_features):
  _, variables, _, cosines = zero_and_3_4_features
  kernel = np.asarray(variables['params']['kernel'])
  np.testing.assert_allclose(
      cosines[1], np.array([0.6, 0, 0, 0.8]) @ kernel
      / np.linalg.norm(kernel, axis=0), atol=1e-6)


def test_cosine_classifier_gradient_at_a_zero_feature_is_finite(
    zero_and_3_4_features):
  head, variables, features, _ = zero_and_3_4_features
  grads = jax.jit(jax.grad(lambda f: head.apply(variables, f).sum()))(
      features)
  assert np.all(np.isfinite(grads))
