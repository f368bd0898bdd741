"""One reduction scheme for every loss, the cosine and EMA variants, and the
diagnostics, written as a user of the library would call them.
"""

import functools

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import pytest

import centerloss_jax as cl
from centerloss_jax import linen as cl_linen
from centerloss_jax import losses
from centerloss_jax import nnx as cl_nnx
from centerloss_jax.losses import class_sharded

NUM_CLASSES = 4
DIM = 3


def _batch(seed=0, batch=12):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(NUM_CLASSES), batch // NUM_CLASSES)
  rng.shuffle(labels)
  features = (labels[:, None] + rng.normal(size=(batch, DIM))).astype(
      np.float32)
  weights = rng.uniform(0.5, 2.0, batch).astype(np.float32)
  weights[1] = 0.0
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return (jnp.asarray(features), jnp.asarray(labels.astype(np.int32)),
          jnp.asarray(weights), jnp.asarray(centers))


# --- point 7: reduction='mean' | 'sum' | 'none' on every loss --------------


def _losses_with_normalisers():
  """(name, loss(reduction=...), the normaliser of 'mean')."""
  features, labels, weights, centers = _batch()
  logits = features @ jnp.asarray(np.random.default_rng(1).normal(
      size=(DIM, NUM_CLASSES)), jnp.float32)
  pair_weights = weights[:, None] * weights[None, :] * ~np.eye(
      len(labels), dtype=bool)
  return [
      ('center', functools.partial(losses.center_loss, features, labels,
                                   centers, weights), jnp.sum(weights)),
      ('softmax', functools.partial(losses.softmax_cross_entropy_loss,
                                    logits, labels, weights),
       jnp.sum(weights)),
      ('contrastive', functools.partial(losses.contrastive_loss, features,
                                        labels, weights, margin=2.0),
       jnp.sum(pair_weights)),
      ('triplet', functools.partial(losses.batch_hard_triplet_loss,
                                    features, labels, weights, margin=0.5),
       # Every anchor with weight > 0 has a positive and a negative here.
       jnp.sum(weights)),
  ]


@pytest.mark.parametrize('case', _losses_with_normalisers(),
                         ids=lambda case: case[0])
def test_every_loss_has_the_same_three_reductions(case):
  _, loss, normaliser = case
  per_example = loss(reduction='none')
  assert per_example.shape == (12,)
  assert float(per_example[1]) == 0.0            # The weight-0 row.
  np.testing.assert_allclose(loss(reduction='sum'), jnp.sum(per_example),
                             rtol=1e-6)
  np.testing.assert_allclose(loss(reduction='mean'),
                             jnp.sum(per_example) / normaliser, rtol=1e-6)
  np.testing.assert_array_equal(loss(), loss(reduction='mean'))
  with pytest.raises(ValueError, match=r"reduction must be one of .*'avg'"):
    loss(reduction='avg')


def test_class_sharded_losses_follow_the_same_scheme():
  features, labels, weights, centers = _batch(batch=8)
  kernel = jnp.asarray(np.random.default_rng(2).normal(
      size=(DIM, NUM_CLASSES)), jnp.float32)
  mesh = jax.make_mesh((2,), ('classes',), devices=jax.devices()[:2])

  def per_shard(centers_shard, kernel_shard, reduction):
    logits = class_sharded.class_sharded_logits(
        features, kernel_shard, class_axis='classes')
    return (class_sharded.class_sharded_center_loss(
                features, labels, centers_shard, weights,
                class_axis='classes', reduction=reduction),
            class_sharded.class_sharded_softmax_cross_entropy_loss(
                logits, labels, weights, class_axis='classes',
                reduction=reduction))

  put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
  for reduction in losses.REDUCTIONS:
    got = jax.jit(jax.shard_map(
        functools.partial(per_shard, reduction=reduction), mesh=mesh,
        in_specs=(P('classes'), P(None, 'classes')), out_specs=P(),
        check_vma=False))(put(centers, P('classes')),
                          put(kernel, P(None, 'classes')))
    want = (losses.center_loss(features, labels, centers, weights,
                               reduction=reduction),
            losses.softmax_cross_entropy_loss(features @ kernel, labels,
                                              weights, reduction=reduction))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# --- point 8: the cosine center loss and the EMA update --------------------


def test_cosine_center_loss_is_one_minus_cosine_and_scale_free():
  features, labels, _, centers = _batch()
  cosines = np.sum(
      np.asarray(features) * np.asarray(centers)[labels], -1) / (
          np.linalg.norm(features, axis=-1)
          * np.linalg.norm(np.asarray(centers)[labels], axis=-1))
  loss = losses.center_loss(features, labels, centers, normalize=True)
  np.testing.assert_allclose(loss, np.mean(1.0 - cosines), rtol=1e-5)
  np.testing.assert_allclose(
      losses.center_loss(10.0 * features, labels, 3.0 * centers,
                         normalize=True), loss, rtol=1e-5)
  # The gradient is tangent to the sphere: growing a feature changes
  # nothing, so it has no radial component.
  grad = jax.grad(lambda x: losses.center_loss(x, labels, centers,
                                               normalize=True))(features)
  np.testing.assert_allclose(np.sum(grad * features, -1), 0.0, atol=1e-6)


def test_cosine_update_keeps_moved_centers_on_the_sphere():
  features, labels, weights, centers = _batch()
  weights = weights.at[labels == 3].set(0.0)      # Class 3 is absent.
  unit = losses.l2_normalize(centers)
  new = losses.update_centers(unit, 5.0 * features, labels, alpha=0.5,
                              weights=weights, normalize=True)
  np.testing.assert_allclose(np.linalg.norm(new[:3], axis=-1), 1.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(new[3], unit[3])
  # Eq. 4 on the unit features, then back to the sphere.
  raw = losses.update_centers(unit, losses.l2_normalize(features), labels,
                              alpha=0.5, weights=weights)
  np.testing.assert_allclose(new[:3], losses.l2_normalize(raw[:3]),
                             rtol=1e-6, atol=1e-7)


def test_ema_rule_moves_each_center_alpha_of_the_way_to_its_batch_mean():
  features, labels, weights, centers = _batch()
  alpha = 0.3
  new = losses.update_centers(centers, features, labels, alpha=alpha,
                              weights=weights, rule='ema')
  for j in range(NUM_CLASSES):
    rows = np.asarray(labels) == j
    w = np.asarray(weights)[rows]
    mean = np.sum(w[:, None] * np.asarray(features)[rows], 0) / np.sum(w)
    np.testing.assert_allclose(
        new[j], centers[j] + alpha * (mean - centers[j]), rtol=1e-5,
        atol=1e-6)
  with pytest.raises(ValueError, match=r"rule .*'paper', 'ema'.*'adam'"):
    losses.update_centers(centers, features, labels, alpha=alpha,
                          rule='adam')


def test_modules_take_the_variants_and_match_the_functions():
  features, labels, _, _ = _batch()
  options = dict(alpha=0.5, rule='ema', normalize=True)
  module = cl_nnx.CenterLoss(NUM_CLASSES, DIM, rngs=nnx.Rngs(0), **options)
  loss = module(features, labels)
  zeros = jnp.zeros((NUM_CLASSES, DIM))
  np.testing.assert_array_equal(
      loss, losses.center_loss(features, labels, zeros, normalize=True))
  np.testing.assert_array_equal(
      module.centers[...],
      losses.update_centers(zeros, features, labels, alpha=0.5, rule='ema',
                            normalize=True))
  linen_module = cl_linen.CenterLoss(num_classes=NUM_CLASSES, **options)
  variables = linen_module.init(jax.random.key(0), features, labels)
  _, updates = linen_module.apply(variables, features, labels,
                                  mutable=['centers'])
  np.testing.assert_array_equal(updates['centers']['centers'],
                                module.centers[...])
  with pytest.raises(ValueError, match='rule'):
    cl_linen.CenterLoss(num_classes=NUM_CLASSES, rule='sgd')


# --- point 9: diagnostics ---------------------------------------------------


def test_center_diagnostics_match_their_definitions():
  features, labels, weights, centers = _batch()
  new = losses.update_centers(centers, features, labels, alpha=0.5,
                              weights=weights)
  got = cl.center_diagnostics(features, labels, centers, new, weights)
  w, c, c_new = (np.asarray(a) for a in (weights, centers, new))
  y, x = np.asarray(labels), np.asarray(features)
  mean = lambda v: np.sum(w * v) / np.sum(w)
  np.testing.assert_allclose(
      got['feature_center_distance'],
      mean(np.linalg.norm(x - c[y], axis=-1)), rtol=1e-5)
  np.testing.assert_allclose(got['center_norm'],
                             mean(np.linalg.norm(c_new[y], axis=-1)),
                             rtol=1e-5)
  np.testing.assert_allclose(got['center_movement'],
                             mean(np.linalg.norm(c_new[y] - c[y], axis=-1)),
                             rtol=1e-5)
  assert float(got['center_movement']) > 0
  unmoved = cl.center_diagnostics(features, labels, centers)
  assert float(unmoved['center_movement']) == 0.0
  # The center loss is half the mean squared distance, the diagnostic the
  # mean distance: by Jensen, 2 * loss >= distance ** 2.
  assert (2 * float(losses.center_loss(features, labels, centers, weights))
          >= float(got['feature_center_distance'])**2)


def test_modules_expose_the_diagnostics():
  features, labels, _, _ = _batch()
  module = cl_nnx.CenterLoss(NUM_CLASSES, DIM, rngs=nnx.Rngs(0))
  nnx.jit(lambda m, x, y: m(x, y))(module, features, labels)
  expected = cl.center_diagnostics(
      features, labels, jnp.zeros((NUM_CLASSES, DIM)), module.centers[...])
  for name in losses.DIAGNOSTICS:
    np.testing.assert_allclose(getattr(module, name)[...], expected[name],
                               rtol=1e-6)
  assert float(module.center_movement[...]) > 0
  module.eval()
  module(features, labels)                 # Read only: nothing moves.
  assert float(module.center_movement[...]) == 0.0

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, y):
      return cl_linen.CenterLoss(num_classes=NUM_CLASSES)(x, y)

  variables = Net().init(jax.random.key(0), features, labels)
  _, state = Net().apply(variables, features, labels,
                         mutable=['centers', 'intermediates'])
  sown = state['intermediates']['CenterLoss_0']
  for name in losses.DIAGNOSTICS:
    np.testing.assert_allclose(sown[name][0], expected[name], rtol=1e-6)
