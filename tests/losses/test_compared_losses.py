"""Tests for centerloss_jax.losses: the losses the paper is compared with.

Each function is checked against a case small enough to compute by hand, or
against a float64 numpy reference written from the loss's definition with
explicit loops over rows and pairs (sharing no code with the library):

  contrastive: sum over ordered pairs i != j of w_i w_j *
               (0.5 d^2 if same identity else 0.5 max(0, m - d)^2)
  batch-hard:  sum over anchors with a positive and a negative of
               w_a max(0, m + max_p d(a, p) - min_n d(a, n))
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import centerloss_jax.losses as losses
from centerloss_jax.losses import margin as margin_lib

P = jax.sharding.PartitionSpec


# ---------------------------------------------------------------------------
# Numpy references, one pair or anchor at a time.
# ---------------------------------------------------------------------------


def reference_contrastive(features, labels, weights, margin):
  """(loss sum, pair-weight sum) over ordered pairs, float64."""
  x = np.asarray(features, np.float64)
  total, count = 0.0, 0.0
  for i in range(len(x)):
    for j in range(len(x)):
      if i == j or labels[i] < 0 or labels[j] < 0:
        continue
      pair_weight = weights[i] * weights[j]
      if pair_weight == 0:
        continue
      d = np.linalg.norm(x[i] - x[j])
      if labels[i] == labels[j]:
        term = 0.5 * d ** 2
      else:
        term = 0.5 * max(0.0, margin - d) ** 2
      total += pair_weight * term
      count += pair_weight
  return total, count


def reference_batch_hard(features, labels, weights, margin, soft=False):
  """(loss sum, anchor-weight sum) of batch-hard triplets, float64."""
  x = np.asarray(features, np.float64)
  usable = [k for k in range(len(x)) if weights[k] > 0 and labels[k] >= 0]
  total, count = 0.0, 0.0
  for a in usable:
    positives = [np.linalg.norm(x[a] - x[p]) for p in usable
                 if p != a and labels[p] == labels[a]]
    negatives = [np.linalg.norm(x[a] - x[n]) for n in usable
                 if labels[n] != labels[a]]
    if not positives or not negatives:
      continue
    gap = max(positives) - min(negatives)
    term = np.log1p(np.exp(gap)) if soft else max(0.0, margin + gap)
    total += weights[a] * term
    count += weights[a]
  return total, count


def _random_batch(seed, batch=8, dim=3, num_ids=3):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, dim)).astype(np.float32)
  labels = rng.integers(0, num_ids, size=batch).astype(np.int32)
  weights = rng.uniform(0.5, 2.0, size=batch).astype(np.float32)
  return features, labels, weights


# ---------------------------------------------------------------------------
# Softmax.
# ---------------------------------------------------------------------------


def test_softmax_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5)).astype(np.float32) * 3
  labels = np.array([0, 4, 2, 2], np.int32)
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  expected = -log_probs[np.arange(4), labels]
  out = losses.softmax_cross_entropy_loss(logits, labels, reduction='none')
  assert out.dtype == jnp.float32 and out.shape == (4,)
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
  np.testing.assert_allclose(
      losses.softmax_cross_entropy_loss(logits, labels, weights),
      np.sum(weights * expected) / np.sum(weights), rtol=1e-5)


def test_softmax_invalid_labels_and_padding_rows_are_zero_without_nan():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  logits[3] = np.nan  # A padding row.
  labels = np.array([0, -1, 3, 2, 1], np.int32)  # -1 and 3 are invalid.
  weights = np.array([1.0, 1.0, 1.0, 0.0, 1.0], np.float32)
  out = losses.softmax_cross_entropy_loss(logits, labels, weights, reduction='none')
  np.testing.assert_array_equal(np.asarray(out)[1:4], 0.0)
  np.testing.assert_allclose(
      np.asarray(out)[[0, 4]],
      losses.softmax_cross_entropy_loss(logits[[0, 4]], labels[[0, 4]], reduction='none'),
      rtol=1e-6)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(
      losses.softmax_cross_entropy_loss(z, labels, weights, reduction='none'))))(logits)
  assert np.all(np.isfinite(grad)), grad
  np.testing.assert_array_equal(np.asarray(grad)[1:4], 0.0)
  # The mean is over the two valid, unpadded rows only.
  np.testing.assert_allclose(
      losses.softmax_cross_entropy_loss(logits, labels, weights),
      np.mean(np.asarray(out)[[0, 4]]), rtol=1e-6)


# ---------------------------------------------------------------------------
# Margin-based softmax.
# ---------------------------------------------------------------------------


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


def test_arcface_target_logit_at_60_degrees():
  cosine, labels = _cosines_with_target_angle(math.pi / 3)
  out = losses.arcface_logits(cosine, labels, scale=64.0, margin=0.5)
  # cos(60 deg + 0.5 rad) = 0.5 cos(0.5) - 0.8660 sin(0.5) = 0.0235966.
  np.testing.assert_allclose(out[0, 1], 64 * math.cos(math.pi / 3 + 0.5),
                             rtol=1e-4)
  np.testing.assert_allclose(out[0, 1], 64 * 0.0235966, rtol=1e-4)
  np.testing.assert_allclose(out[0, [0, 2]], [64 * 0.3, 64 * 0.3], rtol=1e-6)


@pytest.mark.parametrize('degrees', [150.0, 170.0, 180.0])
def test_arcface_fallback_past_pi_minus_margin(degrees):
  theta, margin = math.radians(degrees), 0.5
  cosine, labels = _cosines_with_target_angle(theta)
  out = losses.arcface_logits(cosine, labels, scale=1.0, margin=margin)
  if theta + margin <= math.pi:  # 150 deg + 0.5 rad = 3.118 < pi.
    expected = math.cos(theta + margin)
  else:  # The insightface fallback.
    expected = math.cos(theta) - margin * math.sin(margin)
  np.testing.assert_allclose(out[0, 1], expected, rtol=1e-5, atol=1e-6)


def test_arcface_and_sphereface_targets_decrease_with_angle():
  theta = np.linspace(0.0, math.pi, 721)
  cosine = np.cos(theta).astype(np.float32)[:, None]
  labels = np.zeros(len(theta), np.int32)
  arc = np.asarray(losses.arcface_logits(cosine, labels, scale=1.0))[:, 0]
  assert np.all(np.diff(arc) <= 1e-6), 'ArcFace target increases in theta'
  psi = np.asarray(losses.sphereface_psi(jnp.asarray(cosine[:, 0]), 4))
  assert np.all(np.diff(psi) <= 1e-5), 'SphereFace psi increases in theta'
  np.testing.assert_allclose(psi[[0, -1]], [1.0, 1 - 2 * 4], atol=1e-5)


def test_sphereface_psi_by_formula_for_m_4():
  m = 4
  theta = np.array([0.0, math.pi / 8, math.pi / 4, math.pi / 3, math.pi / 2,
                    2 * math.pi / 3, 0.9 * math.pi, math.pi])
  k = np.minimum(np.floor(m * theta / math.pi), m - 1)
  expected = (-1.0) ** k * np.cos(m * theta) - 2 * k
  # By hand: at pi/3, k = 1 and psi = -cos(4 pi / 3) - 2 = 0.5 - 2 = -1.5.
  assert expected[3] == pytest.approx(-1.5)
  psi = losses.sphereface_psi(jnp.asarray(np.cos(theta), jnp.float32), m)
  np.testing.assert_allclose(psi, expected, atol=2e-5)
  # On [0, pi/4] psi is cos(4 theta) itself.
  first = np.linspace(0.0, math.pi / 4, 50)
  np.testing.assert_allclose(
      losses.sphereface_psi(jnp.asarray(np.cos(first), jnp.float32), m),
      np.cos(4 * first), atol=2e-5)


@pytest.mark.parametrize('m', [1, 2, 3, 4])
def test_chebyshev_polynomials_are_cos_of_multiple_angle(m):
  theta = np.linspace(0.0, math.pi, 37)
  np.testing.assert_allclose(
      margin_lib.chebyshev_cos_multiple(jnp.asarray(np.cos(theta)), m),
      np.cos(m * theta), atol=1e-5)


def test_sphereface_logits_target_blend_and_invalid_label():
  theta = math.pi / 3
  cosine = np.array([[0.3, np.cos(theta)], [0.3, 0.6]], np.float32)
  labels = np.array([1, -1], np.int32)
  norm = np.array([2.0, 3.0], np.float32)
  psi = -math.cos(4 * theta) - 2  # k = 1, = -1.5.
  for blend in (0.0, 5.0):
    out = losses.sphereface_logits(cosine, labels, norm, margin=4,
                                   blend=blend)
    target = 2.0 * (blend * math.cos(theta) + psi) / (1 + blend)
    np.testing.assert_allclose(out, [[0.6, target], [0.9, 1.8]], rtol=1e-5)


def test_margin_logits_dispatches_and_rejects_unknown_kinds():
  cosine = np.array([[0.5, -0.2], [0.1, 0.9]], np.float32)
  labels = np.array([0, 1], np.int32)
  features = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
  np.testing.assert_allclose(
      losses.margin_logits('sphereface', cosine, labels, features, margin=2,
                           blend=0.0),
      losses.sphereface_logits(cosine, labels, np.array([5.0, 2.0]),
                               margin=2, blend=0.0), rtol=1e-6)
  np.testing.assert_allclose(
      losses.margin_logits('cosface', cosine, labels, scale=10.0),
      losses.cosface_logits(cosine, labels, scale=10.0))
  np.testing.assert_allclose(
      losses.margin_logits('arcface', cosine, labels, None, margin=0.3),
      losses.arcface_logits(cosine, labels, margin=0.3))
  with pytest.raises(ValueError, match=r"'softmax'.*'arcface'"):
    losses.margin_logits('softmax', cosine, labels, features)
  with pytest.raises(ValueError, match='features'):
    losses.margin_logits('sphereface', cosine, labels)
  with pytest.raises(ValueError, match='margin'):
    losses.sphereface_logits(cosine, labels, np.ones(2), margin=5)


def test_margin_gradients_finite_at_cosine_plus_minus_one():
  cosine = np.array([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.0]], np.float32)
  labels = np.array([0, 0], np.int32)
  features = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # Norm 0 too.
  for kind in losses.MARGIN_KINDS:
    def total(c, x, kind=kind):
      return jnp.sum(losses.softmax_cross_entropy_loss(
          losses.margin_logits(kind, c, labels, x), labels, reduction='none'))
    grads = jax.jit(jax.grad(total, argnums=(0, 1)))(cosine, features)
    for grad in grads:
      assert np.all(np.isfinite(grad)), (kind, grads)


# ---------------------------------------------------------------------------
# Contrastive loss.
# ---------------------------------------------------------------------------

# Four points in 2-D; distances 0-1: 5, 0-2: 1, 0-3: sqrt(2), 1-2: sqrt(18),
# 1-3: sqrt(13), 2-3: 1.
HAND_POINTS = np.array([[0, 0], [3, 4], [0, 1], [1, 1]], np.float32)
HAND_LABELS = np.array([0, 0, 1, 1], np.int32)


def test_contrastive_by_hand():
  sums = losses.contrastive_loss_sums(
      HAND_POINTS, HAND_LABELS, None, HAND_POINTS, HAND_LABELS, None,
      margin=2.0)
  # Unordered: positives 0-1: 0.5 * 25, 2-3: 0.5 * 1; negatives within the
  # margin 0-2: 0.5 * (2 - 1)^2, 0-3: 0.5 * (2 - sqrt 2)^2; the rest 0.
  unordered = 12.5 + 0.5 + 0.5 + 0.5 * (2 - math.sqrt(2)) ** 2
  np.testing.assert_allclose(sums['loss'], 2 * unordered, rtol=1e-6)
  assert float(sums['num_pairs']) == 12.0
  assert float(sums['num_positive_pairs']) == 4.0
  np.testing.assert_allclose(
      losses.contrastive_loss(HAND_POINTS, HAND_LABELS, margin=2.0),
      2 * unordered / 12, rtol=1e-6)


@pytest.mark.parametrize('normalize', [False, True])
def test_contrastive_matches_numpy_loop(normalize):
  features, labels, weights = _random_batch(2, batch=7)
  labels[2] = -1
  weights[4] = 0.0
  sums = losses.contrastive_loss_sums(
      features, labels, weights, features, labels, weights, margin=1.5,
      normalize=normalize)
  if normalize:
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
  total, count = reference_contrastive(features, labels, weights, 1.5)
  np.testing.assert_allclose(sums['loss'], total, rtol=1e-5)
  np.testing.assert_allclose(sums['num_pairs'], count, rtol=1e-6)


def _with_junk_rows(features, labels, weights):
  """The batch plus a NaN padding row (weight 0) and an invalid label (-1)."""
  junk_features = np.array([[np.nan, np.inf, 0], [0.1, 0.2, 0.3]], np.float32)
  return (np.concatenate([features, junk_features]),
          np.concatenate([labels, np.array([1, -1], np.int32)]),
          np.concatenate([weights, np.array([0.0, 1.0], np.float32)]))


@pytest.mark.parametrize('loss_name', ['contrastive', 'triplet'])
def test_padding_and_invalid_labels_change_nothing(loss_name):
  features, labels, weights = _random_batch(3)
  fn = _full_batch_sums(loss_name)
  grad_fn = jax.jit(jax.grad(lambda x, y, w: fn(x, y, w)['loss']))
  sums = jax.jit(fn)
  clean, padded = sums(features, labels, weights), sums(
      *_with_junk_rows(features, labels, weights))
  for key in clean:
    np.testing.assert_allclose(padded[key], clean[key], rtol=1e-6,
                               err_msg=key)
  clean_grad = grad_fn(features, labels, weights)
  grad = grad_fn(*_with_junk_rows(features, labels, weights))
  assert np.all(np.isfinite(grad)), grad
  np.testing.assert_array_equal(grad[-2:], 0.0)
  np.testing.assert_allclose(grad[:-2], clean_grad, rtol=1e-5, atol=1e-6)


def _full_batch_sums(loss_name, **kwargs):
  """`f(features, labels, weights)` -> sums, anchors = candidates."""
  if loss_name == 'contrastive':
    fn = functools.partial(losses.contrastive_loss_sums, margin=1.5, **kwargs)
  else:
    fn = functools.partial(losses.batch_hard_triplet_loss_sums, margin=0.5,
                           **kwargs)
  return lambda x, y, w: fn(x, y, w, x, y, w)


@pytest.mark.parametrize('loss_name', ['contrastive', 'triplet'])
def test_gradient_finite_at_zero_distance(loss_name):
  # Rows 0 and 1 coincide with the same identity, rows 2 and 3 with
  # different identities: d = 0 for a positive and for a negative pair.
  features = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.5], [0.5, 0.5],
                       [0.0, 3.0]], np.float32)
  labels = np.array([0, 0, 1, 2, 2], np.int32)
  fn = _full_batch_sums(loss_name)
  value, grad = jax.jit(jax.value_and_grad(
      lambda x: fn(x, labels, None)['loss']))(features)
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(grad)), grad


# ---------------------------------------------------------------------------
# Batch-hard triplet loss.
# ---------------------------------------------------------------------------

# Identity 0 on the y axis, identity 1 at x = 4, identity 2 alone and far.
TRIPLET_POINTS = np.array([[0, 0], [0, 3], [4, 0], [4, 3], [0, 6],
                           [100, 100]], np.float32)
TRIPLET_LABELS = np.array([0, 0, 1, 1, 0, 2], np.int32)


def test_batch_hard_triplet_by_hand():
  # Anchor: (hardest positive, hardest negative) = 0: (6, 4), 1: (3, 4),
  # 2: (3, 4), 3: (3, 4), 4: (6, 5); anchor 5 has no positive.
  gaps = np.array([2.0, -1.0, -1.0, -1.0, 1.0])
  sums = losses.batch_hard_triplet_loss_sums(
      TRIPLET_POINTS, TRIPLET_LABELS, None, TRIPLET_POINTS, TRIPLET_LABELS,
      None, margin=2.0)
  np.testing.assert_allclose(sums['loss'], 4 + 1 + 1 + 1 + 3, rtol=1e-6)
  assert float(sums['num_anchors']) == 5.0
  soft = losses.batch_hard_triplet_loss(TRIPLET_POINTS, TRIPLET_LABELS,
                                        soft=True)
  np.testing.assert_allclose(soft, np.mean(np.log1p(np.exp(gaps))),
                             rtol=1e-6)


@pytest.mark.parametrize('soft', [False, True])
def test_batch_hard_triplet_matches_numpy_loop(soft):
  features, labels, weights = _random_batch(4, batch=9, num_ids=4)
  labels[1] = -1
  weights[5] = 0.0
  sums = losses.batch_hard_triplet_loss_sums(
      features, labels, weights, features, labels, weights, margin=0.7,
      soft=soft)
  total, count = reference_batch_hard(features, labels, weights, 0.7, soft)
  assert count > 0
  np.testing.assert_allclose(sums['loss'], total, rtol=1e-5)
  np.testing.assert_allclose(sums['num_anchors'], count, rtol=1e-6)


def test_input_errors():
  x, y = HAND_POINTS, HAND_LABELS
  with pytest.raises(ValueError, match='margin is required'):
    losses.batch_hard_triplet_loss(x, y)
  with pytest.raises(ValueError, match='anchor_offset'):
    losses.contrastive_loss_sums(x[:2], y[:2], None, x, y, None, margin=1.0)
  with pytest.raises(ValueError, match=r'anchor_offset must be in \[0, 2\]'):
    losses.contrastive_loss_sums(x[:2], y[:2], None, x, y, None, margin=1.0,
                                 anchor_offset=3)
  with pytest.raises(ValueError, match='candidate_weights'):
    losses.contrastive_loss_sums(x, y, None, x, y, np.ones(3), margin=1.0)


# ---------------------------------------------------------------------------
# The anchor/candidate split used by data-parallel trainers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('loss_name', ['contrastive', 'triplet'])
def test_sums_over_4_anchor_slices_equal_full_batch_under_shard_map(
    loss_name):
  # The data-parallel recipe: each of 4 replicas takes its contiguous slice
  # of the batch as anchors (a traced offset) and the all-gathered batch as
  # candidates; the psum of the sums must be the full-batch sums, and the
  # gradient (which also flows back through the all-gather) the full-batch
  # gradient.
  num_devices = 4
  features, labels, weights = _random_batch(6)
  weights[6] = 0.0
  mesh = jax.make_mesh((num_devices,), ('batch',),
                       devices=jax.devices()[:num_devices])
  if loss_name == 'contrastive':
    fn = functools.partial(losses.contrastive_loss_sums, margin=1.5)
  else:
    fn = functools.partial(losses.batch_hard_triplet_loss_sums, margin=0.5)

  def per_replica(x, y, w):
    gather = functools.partial(jax.lax.all_gather, axis_name='batch',
                               tiled=True)
    offset = jax.lax.axis_index('batch') * x.shape[0]
    sums = fn(x, y, w, gather(x), gather(y), gather(w), anchor_offset=offset)
    return jax.lax.psum(sums, 'batch')

  sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=P('batch'),
                          out_specs=P())
  loss_and_sums = lambda x, y, w: (sharded(x, y, w)['loss'], sharded(x, y, w))
  (_, got), grad = jax.jit(jax.value_and_grad(loss_and_sums, has_aux=True))(
      *jax.device_put((features, labels, weights),
                      jax.sharding.NamedSharding(mesh, P('batch'))))
  full = _full_batch_sums(loss_name)
  expected = full(features, labels, weights)
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5,
                               err_msg=key)
  assert float(expected['loss']) > 0
  expected_grad = jax.grad(lambda x: full(x, labels, weights)['loss'])(
      features)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_jit_on_explicit_sharding_mesh_equals_unsharded():
  # Under plain jit on `jax.make_mesh`'s default (explicit) mesh, a (b, B)
  # distance matrix sharded on both axes is illegal; the candidates must be
  # replicated.
  features, labels, weights = _random_batch(7)
  mesh = jax.make_mesh((4,), ('batch',), devices=jax.devices()[:4])

  def both(x, y, w):
    return (losses.contrastive_loss(x, y, w, margin=1.5),
            losses.batch_hard_triplet_loss(x, y, w, margin=0.5))

  expected = both(features, labels, weights)
  with jax.set_mesh(mesh):
    got = jax.jit(both)(*jax.device_put(
        (features, labels, weights),
        jax.sharding.NamedSharding(mesh, P('batch'))))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
