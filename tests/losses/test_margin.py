"""Tests for centerloss_jax.losses.margin: the margin-softmax logits.

SphereFace, CosFace and ArcFace logits, each checked on a case small enough
to compute by hand or against its formula in numpy; `margin_logits`'
dispatch; finite gradients at the edges of the cosine's range.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centerloss_jax import losses
from centerloss_jax.losses import margin as margin_lib


def _cosines_with_target_angle(theta, num_classes=3, label=1):
  """One row: cos(theta) at `label`, 0.3 elsewhere."""
  cosine = np.full((1, num_classes), 0.3, np.float32)
  cosine[0, label] = np.cos(theta)
  return cosine, np.array([label], np.int32)


def test_cosface_logits_by_hand():
  cosine = np.array([[0.5, 0.2, -0.1], [0.5, 0.2, -0.1]], np.float32)
  labels = np.array([0, 3], np.int32)  # Row 1's label is invalid.
  out = losses.cosface_logits(cosine, labels, scale=64.0, margin=0.35)
  np.testing.assert_allclose(
      out, [[64 * 0.15, 64 * 0.2, 64 * -0.1], [32.0, 12.8, -6.4]], rtol=1e-5)


@pytest.fixture(scope='module')
def arcface_at_60_degrees():
  cosine, labels = _cosines_with_target_angle(math.pi / 3)
  return np.asarray(losses.arcface_logits(cosine, labels, scale=64.0,
                                          margin=0.5))


def test_arcface_target_logit_at_60_degrees(arcface_at_60_degrees):
  out = arcface_at_60_degrees
  # cos(60 deg + 0.5 rad) = 0.5 cos(0.5) - 0.8660 sin(0.5) = 0.0235966.
  np.testing.assert_allclose(out[0, 1], 64 * math.cos(math.pi / 3 + 0.5),
                             rtol=1e-4)
  np.testing.assert_allclose(out[0, 1], 64 * 0.0235966, rtol=1e-4)


def test_arcface_non_target_logits_are_scaled_cosines(arcface_at_60_degrees):
  np.testing.assert_allclose(arcface_at_60_degrees[0, [0, 2]],
                             [64 * 0.3, 64 * 0.3], rtol=1e-6)


@pytest.mark.parametrize('degrees', [150.0, 170.0, 180.0])
def test_arcface_falls_back_past_pi_minus_margin(degrees):
  theta, margin = math.radians(degrees), 0.5
  cosine, labels = _cosines_with_target_angle(theta)
  out = losses.arcface_logits(cosine, labels, scale=1.0, margin=margin)
  if theta + margin <= math.pi:  # 150 deg + 0.5 rad = 3.118 < pi.
    expected = math.cos(theta + margin)
  else:  # The insightface fallback.
    expected = math.cos(theta) - margin * math.sin(margin)
  np.testing.assert_allclose(out[0, 1], expected, rtol=1e-5, atol=1e-6)


_THETA = np.linspace(0.0, math.pi, 721)
_COSINE = np.cos(_THETA).astype(np.float32)


def test_arcface_target_decreases_with_the_angle():
  arc = np.asarray(losses.arcface_logits(
      _COSINE[:, None], np.zeros(len(_THETA), np.int32), scale=1.0))[:, 0]
  assert np.all(np.diff(arc) <= 1e-6), 'ArcFace target increases in theta'


def test_sphereface_psi_decreases_with_the_angle():
  psi = np.asarray(losses.sphereface_psi(jnp.asarray(_COSINE), 4))
  assert np.all(np.diff(psi) <= 1e-5), 'SphereFace psi increases in theta'


def test_sphereface_psi_goes_from_1_to_1_minus_2m():
  psi = np.asarray(losses.sphereface_psi(jnp.asarray(_COSINE), 4))
  np.testing.assert_allclose(psi[[0, -1]], [1.0, 1 - 2 * 4], atol=1e-5)


def test_sphereface_psi_matches_its_formula_for_m_4():
  m = 4
  theta = np.array([0.0, math.pi / 8, math.pi / 4, math.pi / 3, math.pi / 2,
                    2 * math.pi / 3, 0.9 * math.pi, math.pi])
  k = np.minimum(np.floor(m * theta / math.pi), m - 1)
  expected = (-1.0) ** k * np.cos(m * theta) - 2 * k
  # By hand: at pi/3, k = 1 and psi = -cos(4 pi / 3) - 2 = 0.5 - 2 = -1.5.
  assert expected[3] == pytest.approx(-1.5)
  psi = losses.sphereface_psi(jnp.asarray(np.cos(theta), jnp.float32), m)
  np.testing.assert_allclose(psi, expected, atol=2e-5)


def test_sphereface_psi_is_cos_4_theta_up_to_pi_over_4():
  first = np.linspace(0.0, math.pi / 4, 50)
  np.testing.assert_allclose(
      losses.sphereface_psi(jnp.asarray(np.cos(first), jnp.float32), 4),
      np.cos(4 * first), atol=2e-5)


@pytest.mark.parametrize('m', [1, 2, 3, 4])
def test_chebyshev_polynomials_are_cos_of_multiple_angle(m):
  theta = np.linspace(0.0, math.pi, 37)
  np.testing.assert_allclose(
      margin_lib.chebyshev_cos_multiple(jnp.asarray(np.cos(theta)), m),
      np.cos(m * theta), atol=1e-5)


# Row 0: target class 1 at 60 degrees; row 1: an invalid label. Norms 2, 3.
_SPHERE_THETA = math.pi / 3
_SPHERE_COSINE = np.array([[0.3, np.cos(_SPHERE_THETA)], [0.3, 0.6]],
                          np.float32)
_SPHERE_LABELS = np.array([1, -1], np.int32)
_SPHERE_NORM = np.array([2.0, 3.0], np.float32)


def _sphereface(blend):
  return np.asarray(losses.sphereface_logits(
      _SPHERE_COSINE, _SPHERE_LABELS, _SPHERE_NORM, margin=4, blend=blend))


@pytest.mark.parametrize('blend', [0.0, 5.0])
def test_sphereface_target_logit_blends_psi_with_the_cosine(blend):
  psi = -math.cos(4 * _SPHERE_THETA) - 2  # k = 1, = -1.5.
  target = 2.0 * (blend * math.cos(_SPHERE_THETA) + psi) / (1 + blend)
  np.testing.assert_allclose(_sphereface(blend)[0, 1], target, rtol=1e-5)


@pytest.mark.parametrize('blend', [0.0, 5.0])
def test_sphereface_logits_without_margin_are_norm_times_cosine(blend):
  out = _sphereface(blend)
  np.testing.assert_allclose([out[0, 0], *out[1]], [0.6, 0.9, 1.8],
                             rtol=1e-5)


_COSINE_2X2 = np.array([[0.5, -0.2], [0.1, 0.9]], np.float32)
_LABELS_2 = np.array([0, 1], np.int32)
_FEATURES_2X2 = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)  # Norms 5, 2.

# kind: (margin_logits, the kind's own function, relative tolerance).
_DISPATCHED = {
    'sphereface': (
        lambda: losses.margin_logits('sphereface', _COSINE_2X2, _LABELS_2,
                                     _FEATURES_2X2, margin=2, blend=0.0),
        lambda: losses.sphereface_logits(_COSINE_2X2, _LABELS_2,
                                         np.array([5.0, 2.0]), margin=2,
                                         blend=0.0),
        1e-6),
    'cosface': (
        lambda: losses.margin_logits('cosface', _COSINE_2X2, _LABELS_2,
                                     scale=10.0),
        lambda: losses.cosface_logits(_COSINE_2X2, _LABELS_2, scale=10.0),
        1e-7),
    'arcface': (
        lambda: losses.margin_logits('arcface', _COSINE_2X2, _LABELS_2, None,
                                     margin=0.3),
        lambda: losses.arcface_logits(_COSINE_2X2, _LABELS_2, margin=0.3),
        1e-7),
}


@pytest.mark.parametrize('kind', sorted(_DISPATCHED))
def test_margin_logits_dispatches_to_the_kind(kind):
  dispatched, direct, rtol = _DISPATCHED[kind]
  np.testing.assert_allclose(dispatched(), direct(), rtol=rtol)


def test_margin_logits_rejects_an_unknown_kind():
  with pytest.raises(ValueError, match=r"'softmax'.*'arcface'"):
    losses.margin_logits('softmax', _COSINE_2X2, _LABELS_2, _FEATURES_2X2)


def test_sphereface_margin_logits_need_the_features():
  with pytest.raises(ValueError, match='features'):
    losses.margin_logits('sphereface', _COSINE_2X2, _LABELS_2)


def test_sphereface_rejects_a_margin_above_4():
  with pytest.raises(ValueError, match='margin'):
    losses.sphereface_logits(_COSINE_2X2, _LABELS_2, np.ones(2), margin=5)


@pytest.mark.parametrize('kind', losses.MARGIN_KINDS)
def test_margin_gradients_are_finite_at_cosine_plus_minus_one(kind):
  cosine = np.array([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.0]], np.float32)
  labels = np.array([0, 0], np.int32)
  features = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # Norm 0 too.

  def total(c, x):
    return jnp.sum(losses.softmax_cross_entropy_loss(
        losses.margin_logits(kind, c, labels, x), labels, reduction='none'))

  grads = jax.jit(jax.grad(total, argnums=(0, 1)))(cosine, features)
  for grad in grads:
    assert np.all(np.isfinite(grad)), (kind, grads)
