"""The loss in a user's own Flax code: the way users write it, not our trainer.

Each test is a user's small model and loop (linen or NNX, optax), for what
such code most easily gets wrong: NNX eval mode, linen's silent no-op,
`jax.shard_map` at its default `check_vma=True`, validation of alpha /
weights / classes / list labels, and out-of-range labels made visible.
"""

import functools

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import pytest

import centerloss_jax as cl
from centerloss_jax import linen as cl_linen
from centerloss_jax import nnx as cl_nnx

NUM_CLASSES = 4


def _batch(seed=0, batch=16, dim=6):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  inputs = (2.0 * labels[:, None] + rng.normal(size=(batch, dim))).astype(
      np.float32)
  return jnp.asarray(inputs), jnp.asarray(labels)


# --- NNX: model.eval() freezes the centers, as it freezes BatchNorm ---------


class UserNnxNet(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(6, 3, rngs=rngs)
    self.norm = nnx.BatchNorm(3, rngs=rngs)
    self.head = nnx.Linear(3, NUM_CLASSES, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(NUM_CLASSES, 3, alpha=0.5,
                                         rngs=rngs)

  def __call__(self, x, y):
    features = self.norm(self.linear(x))
    ce = optax.softmax_cross_entropy_with_integer_labels(self.head(features),
                                                         y).mean()
    return ce + 0.01 * self.center_loss(features, y)


def test_nnx_eval_mode_keeps_centers_and_batch_stats_put():
  model = UserNnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  x, y = _batch()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    grads = nnx.grad(UserNnxNet.__call__,
                     argnums=nnx.DiffState(0, nnx.Param))(model, x, y)
    optimizer.update(model, grads)

  @nnx.jit
  def eval_step(model, x, y):  # The training loss, reused for evaluation.
    return model(x, y)

  train_step(model, optimizer, x, y)
  centers = np.asarray(model.center_loss.centers[...])
  mean = np.asarray(model.norm.mean[...])
  assert np.abs(centers).max() > 0, 'training did not move the centers'

  model.eval()
  eval_step(model, *_batch(seed=1))
  np.testing.assert_array_equal(model.center_loss.centers[...], centers,
                                err_msg='eval moved the centers')
  np.testing.assert_array_equal(model.norm.mean[...], mean)

  model.train()
  eval_step(model, *_batch(seed=1))
  assert not np.array_equal(model.center_loss.centers[...], centers), (
      'model.train() did not re-enable the update')


def test_nnx_explicit_update_overrides_the_mode():
  module = cl_nnx.CenterLoss(NUM_CLASSES, 6, rngs=nnx.Rngs(0))
  x, y = _batch()
  module.eval()
  module(x, y, update=True)
  assert np.abs(module.centers[...]).max() > 0
  module.train()
  before = np.asarray(module.centers[...])
  module(x, y, update=False)
  np.testing.assert_array_equal(module.centers[...], before)


# --- linen: no silent no-op ------------------------------------------------


class UserLinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, y, update=True):
    features = nn.Dense(3)(x)
    logits = nn.Dense(NUM_CLASSES)(features)
    center_loss = cl_linen.CenterLoss(num_classes=NUM_CLASSES)(
        features, y, update=update)
    return logits, center_loss


def test_linen_without_mutable_centers_raises_instead_of_doing_nothing():
  model = UserLinenNet()
  x, y = _batch()
  variables = model.init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match=r"mutable=\['centers'\]"):
    model.apply(variables, x, y)
  # Reading only (evaluation) is fine without the mutable collection.
  model.apply(variables, x, y, update=False)


def test_linen_readme_pattern_moves_the_centers_by_eq4():
  model = UserLinenNet()
  x, y = _batch()
  variables = model.init(jax.random.key(0), x, y)
  features = nn.Dense(3).apply(
      {'params': variables['params']['Dense_0']}, x)
  (_, _), updates = model.apply(variables, x, y, mutable=['centers'])
  variables = {**variables, **updates}     # Merge the moved centers back.
  np.testing.assert_allclose(
      variables['centers']['CenterLoss_0']['centers'],
      cl.update_centers(jnp.zeros((NUM_CLASSES, 3)), features, y, alpha=0.5),
      rtol=1e-6, atol=1e-7)


# --- validation ------------------------------------------------------------


@pytest.mark.parametrize('alpha', [-1.0, 1.5])
def test_alpha_outside_unit_interval_is_rejected_everywhere(alpha):
  x, y = _batch()
  with pytest.raises(ValueError, match=rf'alpha .* \[0, 1\].*got {alpha}'):
    cl.update_centers(jnp.zeros((NUM_CLASSES, 6)), x, y, alpha=alpha)
  with pytest.raises(ValueError, match='alpha'):
    cl_linen.CenterLoss(num_classes=NUM_CLASSES, alpha=alpha)
  with pytest.raises(ValueError, match='alpha'):
    cl_nnx.CenterLoss(NUM_CLASSES, 6, alpha=alpha, rngs=nnx.Rngs(0))


def test_negative_weights_are_rejected_when_concrete():
  x, y = _batch(batch=4)
  centers = jnp.zeros((NUM_CLASSES, 6))
  weights = jnp.array([1.0, -3.5, 1.0, 1.0])
  with pytest.raises(ValueError, match=r'non-negative.*-3.5 at index 1'):
    cl.center_loss(x, y, centers, weights)
  with pytest.raises(ValueError, match='non-negative'):
    cl.update_centers(centers, x, y, alpha=0.5, weights=weights)
  # Under jit the weights are traced: no host check, no cost, still runs.
  ok = jnp.array([1.0, 0.0, 1.0, 1.0])
  assert np.isfinite(jax.jit(cl.center_loss)(x, y, centers, ok))


def test_no_class_and_list_labels_get_clear_answers():
  x, y = _batch(batch=4)
  with pytest.raises(ValueError, match=r'num_classes >= 1.*\(0, 6\)'):
    cl.center_loss(x, y, jnp.zeros((0, 6)))
  centers = jnp.asarray(np.random.default_rng(0).normal(size=(NUM_CLASSES, 6)),
                        jnp.float32)
  as_lists = cl.center_loss(np.asarray(x).tolist(), [int(v) for v in y],
                            centers)
  np.testing.assert_allclose(as_lists, cl.center_loss(x, y, centers),
                             rtol=1e-6)
  np.testing.assert_allclose(
      cl.update_centers(centers, np.asarray(x).tolist(), [int(v) for v in y],
                        alpha=0.5),
      cl.update_centers(centers, x, y, alpha=0.5), rtol=1e-6)


# --- out-of-range labels: visible ------------------------------------------


def test_one_indexed_labels_are_caught_by_the_strict_check():
  x, y = _batch()
  one_indexed = y + 1                      # Class NUM_CLASSES does not exist.
  with pytest.raises(ValueError, match=rf'outside \[0, {NUM_CLASSES}\)'):
    cl.losses.common.check_labels_in_range(one_indexed, NUM_CLASSES)
  strict = cl_nnx.CenterLoss(NUM_CLASSES, 6, strict_labels=True,
                             rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='1-indexed'):
    strict(x, one_indexed)
  linen_strict = cl_linen.CenterLoss(num_classes=NUM_CLASSES,
                                     strict_labels=True)
  with pytest.raises(ValueError, match='1-indexed'):
    linen_strict.init(jax.random.key(0), x, one_indexed)


def test_modules_report_how_many_labels_were_masked():
  x, y = _batch()
  labels = y.at[:3].set(NUM_CLASSES)       # Three out of range.
  expected = 3
  module = cl_nnx.CenterLoss(NUM_CLASSES, 6, rngs=nnx.Rngs(0))
  nnx.jit(lambda m, a, b: m(a, b))(module, x, labels)
  assert int(module.invalid_labels[...]) == expected
  linen_module = cl_linen.CenterLoss(num_classes=NUM_CLASSES)
  variables = linen_module.init(jax.random.key(0), x, y)
  _, state = jax.jit(lambda v: linen_module.apply(
      v, x, labels, mutable=['centers', 'intermediates']))(variables)
  (count,) = state['intermediates']['invalid_labels']
  assert int(count) == expected


# --- jax.shard_map at its default check_vma=True ---------------------------


def _mesh_and_global_batch():
  mesh = jax.make_mesh((jax.device_count(),), ('batch',))
  x, y = _batch(batch=4 * jax.device_count())
  shard = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
  return mesh, shard, (x, y), (shard(x, P('batch')), shard(y, P('batch')))


def test_update_centers_under_default_shard_map_and_pmap_equals_jit():
  mesh, shard, (x, y), (xs, ys) = _mesh_and_global_batch()
  centers = jnp.asarray(
      np.random.default_rng(1).normal(size=(NUM_CLASSES, x.shape[1])),
      jnp.float32)
  update = functools.partial(cl.update_centers, alpha=0.5)
  expected = jax.jit(update)(centers, x, y)
  sharded = jax.jit(jax.shard_map(
      functools.partial(update, axis_name='batch'), mesh=mesh,
      in_specs=(P(), P('batch'), P('batch')), out_specs=P()))
  np.testing.assert_array_equal(sharded(shard(centers, P()), xs, ys),
                                expected)
  n = jax.local_device_count()
  replicas = jax.pmap(functools.partial(update, axis_name='batch'),
                      axis_name='batch', in_axes=(None, 0, 0))(
                          centers, x.reshape(n, -1, x.shape[1]),
                          y.reshape(n, -1))
  for replica in replicas:
    np.testing.assert_array_equal(replica, expected)


def test_modules_under_default_shard_map():
  mesh, shard, (x, y), (xs, ys) = _mesh_and_global_batch()

  class Net(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, y):
      features = nn.Dense(3)(x)
      return cl_linen.CenterLoss(num_classes=NUM_CLASSES,
                                 axis_name=self.axis_name)(features, y)

  variables = Net().init(jax.random.key(0), x, y)
  _, expected = jax.jit(lambda v: Net().apply(v, x, y, mutable=['centers']))(
      variables)

  def linen_step(variables, x, y):
    loss, updates = Net('batch').apply(variables, x, y, mutable=['centers'])
    return jax.lax.pmean(loss, 'batch'), updates

  _, updates = jax.jit(jax.shard_map(
      linen_step, mesh=mesh, in_specs=(P(), P('batch'), P('batch')),
      out_specs=(P(), P())))(shard(variables, P()), xs, ys)
  # Per-shard and whole-batch Dense features may differ in the last bit.
  np.testing.assert_allclose(jax.tree.leaves(updates)[0],
                             jax.tree.leaves(expected)[0], atol=1e-6)

  module = cl_nnx.CenterLoss(NUM_CLASSES, x.shape[1], axis_name='batch',
                             rngs=nnx.Rngs(0))
  step = nnx.jit(nnx.shard_map(
      lambda m, x, y: jax.lax.pmean(m(x, y), 'batch'), mesh=mesh,
      in_specs=(P(), P('batch'), P('batch')), out_specs=P()))
  step(module, xs, ys)
  np.testing.assert_array_equal(
      module.centers[...],
      cl.update_centers(jnp.zeros((NUM_CLASSES, x.shape[1])), x, y,
                        alpha=0.5))
