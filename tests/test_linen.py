"""Tests for centerloss_jax.linen: the `CenterLoss` linen module.

The centers are state in their own `'centers'` collection, outside the
params: invisible to `jax.grad` and to the optimizer (no Adam moments,
momentum or weight decay for them), moved by Eq. 4 only, when the module is
applied with the collection mutable, and never silently not moved. Also:
its options (alpha, rule, normalize, strict labels), the diagnostics it
sows, and `jax.shard_map` at its default `check_vma=True`. The problem is
`toy_classifier`'s.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from centerloss_jax import linen as cl_linen
from centerloss_jax import losses as loss_lib
from toy_classifier import ALPHA
from toy_classifier import assert_halves
from toy_classifier import assert_holds_no_centers
from toy_classifier import BATCH
from toy_classifier import CENTER_LOSS_WEIGHT
from toy_classifier import CENTERS_SHAPE
from toy_classifier import cluster_batches
from toy_classifier import dyadic_batch
from toy_classifier import dyadic_init
from toy_classifier import FEATURE_DIM
from toy_classifier import HIDDEN_DIM
from toy_classifier import leaf_shapes
from toy_classifier import NUM_CLASSES


class LinenNet(nn.Module):
  """Dense backbone to 3-D features, Dense classifier, center loss."""

  @nn.compact
  def __call__(self, inputs, labels, update=True):
    hidden = nn.relu(nn.Dense(HIDDEN_DIM)(inputs))
    features = nn.Dense(FEATURE_DIM)(hidden)
    logits = nn.Dense(NUM_CLASSES)(features)
    center_loss = cl_linen.CenterLoss(num_classes=NUM_CLASSES, alpha=ALPHA)(
        features, labels, update=update)
    return logits, center_loss, features


def centers_of(variables):
  """The one centers array of a linen 'centers' collection."""
  (centers,) = jax.tree.leaves(variables)
  return centers


@pytest.fixture(scope='module')
def initialised():
  """(variables, inputs, labels) of LinenNet on the cluster batches."""
  inputs, labels = cluster_batches()
  variables = jax.jit(LinenNet().init)(jax.random.key(0), inputs[0], labels[0])
  return variables, inputs, labels


# ---------------------------------------------------------------------------
# Where the centers live.
# ---------------------------------------------------------------------------


def test_init_makes_a_params_and_a_centers_collection(initialised):
  variables, _, _ = initialised
  assert set(variables) == {'params', 'centers'}, (
      f'Expected collections params and centers, got {sorted(variables)}.')


def test_centers_collection_holds_one_classes_by_dim_array(initialised):
  variables, _, _ = initialised
  shapes = leaf_shapes(variables['centers'])
  assert shapes == [CENTERS_SHAPE], (
      f'centers collection holds {shapes}, not {CENTERS_SHAPE}.')


def test_centers_are_float32(initialised):
  variables, _, _ = initialised
  assert centers_of(variables['centers']).dtype == jnp.float32


def test_params_hold_no_centers_shaped_array(initialised):
  # Centers in params would get gradients and optimizer updates.
  variables, _, _ = initialised
  assert_holds_no_centers(variables['params'], 'params')


def test_params_hold_nothing_named_centers(initialised):
  variables, _, _ = initialised
  flat_params = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  assert not any('centers' in jax.tree_util.keystr(path)
                 for path, _ in flat_params), 'centers found in params.'


# ---------------------------------------------------------------------------
# Training with optax.
# ---------------------------------------------------------------------------


def train(initialised, tx, *, update=True):
  """STEPS steps of CE + lambda * center loss; returns state and losses."""
  variables, inputs, labels = initialised
  model = LinenNet()
  params, centers = variables['params'], variables['centers']
  opt_state = tx.init(params)

  @jax.jit
  def step(params, centers, opt_state, x, y):
    def loss_fn(params):
      (logits, center, _), updates = model.apply(
          {'params': params, 'centers': centers}, x, y, update=update,
          mutable=['centers'])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return ce + CENTER_LOSS_WEIGHT * center, (center, updates['centers'])
    grads, (center, new_centers) = jax.grad(loss_fn, has_aux=True)(params)
    param_updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, param_updates), new_centers,
            opt_state, center)

  center_losses = []
  for x, y in zip(inputs, labels):
    params, centers, opt_state, center = step(params, centers, opt_state, x, y)
    center_losses.append(float(center))
  return dict(initial_centers=centers_of(variables['centers']),
              centers=centers_of(centers), opt_state=opt_state,
              center_losses=center_losses)


OPTIMIZERS = {
    'sgd_momentum': lambda: optax.sgd(0.05, momentum=0.9),
    'adam': lambda: optax.adam(1e-2),
}


@pytest.fixture(scope='module', params=sorted(OPTIMIZERS))
def trained(request, initialised):
  return train(initialised, OPTIMIZERS[request.param]())


def test_training_moves_the_centers(trained):
  assert not np.allclose(trained['centers'], trained['initial_centers']), (
      'Centers did not move during training: the Eq. 4 update is not stored '
      'with mutable=["centers"].')


def test_optimizer_state_holds_no_centers(trained):
  assert_holds_no_centers(trained['opt_state'], 'The optimizer state')


def test_center_loss_halves_in_training(trained):
  assert_halves(trained['center_losses'])


@pytest.fixture(scope='module')
def trained_without_update(initialised):
  """Control for the training tests: their threshold fails when centers
  stay put."""
  return train(initialised, OPTIMIZERS['adam'](), update=False)


def test_update_false_keeps_the_centers_in_training(trained_without_update):
  np.testing.assert_array_equal(
      trained_without_update['centers'],
      trained_without_update['initial_centers'],
      err_msg='update=False still moved the centers.')


def test_center_loss_does_not_halve_with_frozen_centers(
    trained_without_update):
  losses = trained_without_update['center_losses']
  first, last = losses[0], losses[-1]
  assert last >= 0.5 * first, (
      'Center loss halves even with frozen centers, so the training test '
      f'cannot detect a missing update: first {first:.4f}, last {last:.4f}.')


# ---------------------------------------------------------------------------
# Applying: mutable or not, update or not.
# ---------------------------------------------------------------------------

apply = jax.jit(LinenNet().apply, static_argnames=('update', 'mutable'))


def test_read_only_apply_needs_no_mutable_collection(initialised):
  variables, inputs, labels = initialised
  logits, _, _ = apply(variables, inputs[0], labels[0], update=False)
  assert logits.shape == (BATCH, NUM_CLASSES)


def test_update_with_immutable_centers_raises_instead_of_doing_nothing(
    initialised):
  # Eq. 4 would be silently lost: an error, not a no-op.
  variables, inputs, labels = initialised
  with pytest.raises(ValueError, match=r"mutable=\['centers'\].*update=False"):
    apply(variables, inputs[0], labels[0])


def test_mutable_read_only_apply_returns_the_same_centers(initialised):
  variables, inputs, labels = initialised
  _, updates = apply(variables, inputs[0], labels[0], update=False,
                     mutable=('centers',))
  np.testing.assert_array_equal(
      centers_of(updates), centers_of(variables['centers']),
      err_msg='update=False changed the centers.')


@pytest.fixture(scope='module')
def applied_with_update(initialised):
  """(centers before, after, the features) of one jitted mutable apply."""
  variables, inputs, labels = initialised
  (_, _, features), updates = apply(variables, inputs[0], labels[0],
                                    mutable=('centers',))
  return centers_of(variables['centers']), centers_of(updates), features


def test_update_moves_the_centers(applied_with_update):
  before, after, _ = applied_with_update
  assert not np.array_equal(after, before)


def test_update_stores_eq4_of_the_features(initialised, applied_with_update):
  _, _, labels = initialised
  before, after, features = applied_with_update
  np.testing.assert_allclose(
      after,
      jax.jit(loss_lib.update_centers)(before, features, labels[0],
                                       alpha=ALPHA),
      rtol=1e-6, atol=1e-6,
      err_msg='The linen module does not store Eq. 4 of its own features.')


def test_merged_updates_hold_eq4_of_the_features(initialised):
  variables, inputs, labels = initialised

  @jax.jit
  def merged_and_eq4(variables, x, y):
    # The documented pattern: apply with mutable=['centers'], merge back.
    (_, _, features), updates = LinenNet().apply(variables, x, y,
                                                 mutable=['centers'])
    merged = {**variables, **updates}
    return merged, loss_lib.update_centers(jnp.zeros(CENTERS_SHAPE),
                                           features, y, alpha=ALPHA)

  merged, eq4 = merged_and_eq4(variables, inputs[0], labels[0])
  np.testing.assert_allclose(centers_of(merged['centers']), eq4, rtol=1e-6,
                             atol=1e-7)


# ---------------------------------------------------------------------------
# Options.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('alpha', [-1.0, 1.5])
def test_alpha_outside_the_unit_interval_is_rejected(alpha):
  with pytest.raises(ValueError, match='alpha'):
    cl_linen.CenterLoss(num_classes=NUM_CLASSES, alpha=alpha)


def test_unknown_rule_is_rejected():
  with pytest.raises(ValueError, match='rule'):
    cl_linen.CenterLoss(num_classes=NUM_CLASSES, rule='sgd')


def test_cosine_ema_module_updates_as_update_centers():
  features, labels = dyadic_batch(0, 4)
  module = cl_linen.CenterLoss(num_classes=NUM_CLASSES, alpha=0.5, rule='ema',
                               normalize=True)
  variables = module.init(jax.random.key(0), features, labels)
  _, updates = module.apply(variables, features, labels, mutable=['centers'])
  # Both eager: the same operations on the same values.
  np.testing.assert_array_equal(
      updates['centers']['centers'],
      loss_lib.update_centers(jnp.zeros(CENTERS_SHAPE), features, labels,
                              alpha=0.5, rule='ema', normalize=True))


def test_strict_labels_catch_one_indexed_labels():
  features, labels = dyadic_batch(1, 16)
  strict = cl_linen.CenterLoss(num_classes=NUM_CLASSES, strict_labels=True)
  with pytest.raises(ValueError, match='1-indexed'):
    strict.init(jax.random.key(0), features, labels + 1)


# ---------------------------------------------------------------------------
# What it sows into 'intermediates'.
# ---------------------------------------------------------------------------


class CenterLossOnly(nn.Module):
  """The module alone, under a parent module."""

  @nn.compact
  def __call__(self, features, labels):
    return cl_linen.CenterLoss(num_classes=NUM_CLASSES)(features, labels)


@pytest.fixture(scope='module')
def sown():
  """(features, labels with three out of range, the new centers, what the
  module sowed), from one jitted apply."""
  features, labels = dyadic_batch(2, 16)
  labels[:3] = NUM_CLASSES                 # Three out of range.
  net = CenterLossOnly()
  variables = net.init(jax.random.key(0), features, labels)
  _, state = jax.jit(lambda v: net.apply(
      v, features, labels, mutable=['centers', 'intermediates']))(variables)
  return (features, labels, centers_of(state['centers']),
          state['intermediates']['CenterLoss_0'])


def test_module_sows_the_count_of_masked_labels(sown):
  *_, intermediates = sown
  (count,) = intermediates['invalid_labels']
  assert int(count) == 3


def test_module_sows_the_center_diagnostics(sown):
  features, labels, new_centers, intermediates = sown
  expected = loss_lib.center_diagnostics(
      features, labels, jnp.zeros(CENTERS_SHAPE), new_centers)
  for name in loss_lib.DIAGNOSTICS:
    np.testing.assert_allclose(intermediates[name][0], expected[name],
                               rtol=1e-6)


# ---------------------------------------------------------------------------
# jax.shard_map at its default check_vma=True.
# ---------------------------------------------------------------------------


class DenseCenterLoss(nn.Module):
  """A Dense layer to features, then the center loss; exact arithmetic."""
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, y):
    features = nn.Dense(FEATURE_DIM, kernel_init=dyadic_init)(x)
    return cl_linen.CenterLoss(num_classes=NUM_CLASSES,
                               axis_name=self.axis_name)(features, y)


def test_update_under_shard_map_equals_jit():
  mesh = jax.make_mesh((jax.device_count(),), ('batch',))
  x, y = dyadic_batch(3, 4 * jax.device_count(), dim=6)
  variables = DenseCenterLoss().init(jax.random.key(0), x, y)
  _, expected = jax.jit(lambda v: DenseCenterLoss().apply(
      v, x, y, mutable=['centers']))(variables)

  def step(variables, x, y):
    loss, updates = DenseCenterLoss('batch').apply(variables, x, y,
                                                   mutable=['centers'])
    return jax.lax.pmean(loss, 'batch'), updates

  shard = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
  _, updates = jax.jit(jax.shard_map(
      step, mesh=mesh, in_specs=(P(), P('batch'), P('batch')),
      out_specs=(P(), P())))(shard(variables, P()), shard(x, P('batch')),
                             shard(y, P('batch')))
  # Dyadic inputs and kernel: per-shard and whole-batch features and sums
  # are exact, so the centers agree bit for bit.
  np.testing.assert_array_equal(centers_of(updates), centers_of(expected))
