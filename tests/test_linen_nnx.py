"""Tests for the Flax wrappers: centerloss_jax.linen and centerloss_jax.nnx.

The centers must be state outside the params: invisible to `jax.grad` and to
the optimizer (no Adam moments, momentum or weight decay for them), moved by
Eq. 4 only. A small MLP trains on separable Gaussian clusters; shapes are
chosen so that no param has the centers' shape (NUM_CLASSES, FEATURE_DIM) =
(5, 3), so a leaf of that shape in the optimizer state can only be centers.
"""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centerloss_jax import linen as cl_linen
from centerloss_jax import losses as loss_lib
from centerloss_jax import nnx as cl_nnx

NUM_CLASSES = 5
FEATURE_DIM = 3
INPUT_DIM = 8
HIDDEN_DIM = 16
CENTERS_SHAPE = (NUM_CLASSES, FEATURE_DIM)
CENTER_LOSS_WEIGHT = 0.1  # lambda of Eq. 5.
ALPHA = 0.5
STEPS = 30
BATCH = 40


def cluster_batches(steps=STEPS, batch=BATCH, seed=0):
  """Inputs (steps, batch, INPUT_DIM) around 5 well-separated class means."""
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.normal(size=(NUM_CLASSES, INPUT_DIM))
  labels = rng.integers(0, NUM_CLASSES, (steps, batch)).astype(np.int32)
  inputs = means[labels] + 0.3 * rng.normal(size=(steps, batch, INPUT_DIM))
  return inputs.astype(np.float32), labels


def shapes_of(tree):
  return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]


# ---------------------------------------------------------------------------
# linen.
# ---------------------------------------------------------------------------


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


def linen_init():
  inputs, labels = cluster_batches()
  variables = jax.jit(LinenNet().init)(jax.random.key(0), inputs[0], labels[0])
  return variables, inputs, labels


def centers_of(variables):
  """The one centers array of a linen 'centers' collection."""
  (centers,) = jax.tree.leaves(variables)
  return centers


def train_linen(tx, *, update=True):
  """STEPS steps of CE + lambda * center loss; returns state and losses."""
  variables, inputs, labels = linen_init()
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
  initial_centers = centers
  for x, y in zip(inputs, labels):
    params, centers, opt_state, center = step(params, centers, opt_state, x, y)
    center_losses.append(float(center))
  return dict(initial_centers=initial_centers, centers=centers,
              opt_state=opt_state, center_losses=center_losses)


def test_linen_init_puts_centers_in_their_own_collection():
  variables, _, _ = linen_init()
  assert set(variables) == {'params', 'centers'}, (
      f'Expected collections params and centers, got {sorted(variables)}.')
  centers = jax.tree.leaves(variables['centers'])
  assert shapes_of(centers) == [CENTERS_SHAPE], (
      f'centers collection holds {shapes_of(centers)}, not {CENTERS_SHAPE}.')
  assert centers[0].dtype == jnp.float32
  assert CENTERS_SHAPE not in shapes_of(variables['params']), (
      'A (num_classes, dim) array is in params: centers would get gradients '
      'and optimizer updates.')
  flat_params = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  assert not any('centers' in jax.tree_util.keystr(path)
                 for path, _ in flat_params), 'centers found in params.'


OPTIMIZERS = {
    'sgd_momentum': lambda: optax.sgd(0.05, momentum=0.9),
    'adam': lambda: optax.adam(1e-2),
}


@pytest.mark.parametrize('optimizer', sorted(OPTIMIZERS))
def test_linen_training_moves_centers_by_eq4_not_by_the_optimizer(optimizer):
  run = train_linen(OPTIMIZERS[optimizer]())
  assert not np.allclose(centers_of(run['centers']),
                         centers_of(run['initial_centers'])), (
                             'Centers did not move during training: the Eq. 4 '
                             'update is not stored with mutable=["centers"].')
  assert CENTERS_SHAPE not in shapes_of(run['opt_state']), (
      'The optimizer state holds a (num_classes, dim) leaf: the optimizer '
      'tracks the centers.')
  first, last = run['center_losses'][0], run['center_losses'][-1]
  assert last < 0.5 * first, (
      f'Center loss did not fall by half in {STEPS} steps: first {first:.4f}, '
      f'last {last:.4f}.')


def test_linen_center_loss_does_not_fall_without_the_update():
  """Control for the test above: its threshold fails when centers stay put."""
  run = train_linen(OPTIMIZERS['adam'](), update=False)
  np.testing.assert_array_equal(
      centers_of(run['centers']), centers_of(run['initial_centers']),
      err_msg='update=False still moved the centers.')
  first, last = run['center_losses'][0], run['center_losses'][-1]
  assert last >= 0.5 * first, (
      'Center loss halves even with frozen centers, so the training test '
      f'cannot detect a missing update: first {first:.4f}, last {last:.4f}.')


def test_linen_centers_stay_when_not_updated_or_immutable():
  variables, inputs, labels = linen_init()
  apply = jax.jit(LinenNet().apply, static_argnames=('update', 'mutable'))
  before = centers_of(variables['centers'])
  # Immutable collection: update=False only reads the centers; update=True
  # is an error (Eq. 4 would be silently lost), not a no-op.
  logits, _, features = apply(variables, inputs[0], labels[0], update=False)
  assert logits.shape == (BATCH, NUM_CLASSES)
  with pytest.raises(ValueError, match=r"mutable=\['centers'\].*update=False"):
    apply(variables, inputs[0], labels[0])
  # Mutable but update=False: the returned centers are the same.
  _, updates = apply(variables, inputs[0], labels[0], update=False,
                     mutable=('centers',))
  np.testing.assert_array_equal(
      centers_of(updates), before, err_msg='update=False changed the centers.')
  # Control: mutable and update=True stores Eq. 4 of the model's features.
  _, updates = apply(variables, inputs[0], labels[0], mutable=('centers',))
  np.testing.assert_allclose(
      centers_of(updates),
      jax.jit(loss_lib.update_centers)(before, features, labels[0],
                                       alpha=ALPHA),
      rtol=1e-6, atol=1e-6,
      err_msg='The linen module does not store Eq. 4 of its own features.')
  assert not np.array_equal(centers_of(updates), before)


# ---------------------------------------------------------------------------
# NNX.
# ---------------------------------------------------------------------------


class NnxNet(nnx.Module):
  """Linear backbone to 3-D features, Linear classifier, center loss."""

  def __init__(self, rngs):
    self.hidden = nnx.Linear(INPUT_DIM, HIDDEN_DIM, rngs=rngs)
    self.feature = nnx.Linear(HIDDEN_DIM, FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(NUM_CLASSES, FEATURE_DIM,
                                         alpha=ALPHA, rngs=rngs)

  def features(self, inputs):
    return self.feature(nnx.relu(self.hidden(inputs)))


def nnx_loss_fn(model, inputs, labels):
  features = model.features(inputs)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      model.head(features), labels).mean()
  center = model.center_loss(features, labels)
  return ce + CENTER_LOSS_WEIGHT * center, center


@nnx.jit
def nnx_train_step(model, optimizer, inputs, labels):
  (_, center), grads = nnx.value_and_grad(
      nnx_loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(
          model, inputs, labels)
  optimizer.update(model, grads)
  return center, grads


def test_nnx_centers_are_centers_variables_not_params():
  model = NnxNet(nnx.Rngs(0))
  assert isinstance(model.center_loss.centers, cl_nnx.Centers)
  assert not isinstance(model.center_loss.centers, nnx.Param), (
      'Centers subclass nnx.Param: the optimizer would train them.')
  assert shapes_of(nnx.state(model, cl_nnx.Centers)) == [CENTERS_SHAPE]
  assert CENTERS_SHAPE not in shapes_of(nnx.state(model, nnx.Param)), (
      'A (num_classes, dim) Param exists: centers leak into params.')


def test_nnx_training_updates_centers_outside_grads_and_optimizer():
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  initial_centers = np.array(model.center_loss.centers[...])
  inputs, labels = cluster_batches()
  center_losses = []
  for step, (x, y) in enumerate(zip(inputs, labels)):
    center, grads = nnx_train_step(model, optimizer, x, y)
    center_losses.append(float(center))
    if step == 0:
      flat_grads = list(nnx.to_flat_state(grads))
      assert flat_grads, 'No gradients came back.'
      for path, leaf in flat_grads:
        assert not isinstance(leaf, cl_nnx.Centers) and (
            'center_loss' not in path), f'Centers got a gradient at {path}.'
      assert CENTERS_SHAPE not in shapes_of(grads)
  assert CENTERS_SHAPE not in shapes_of(nnx.state(optimizer)), (
      'The NNX optimizer state holds a (num_classes, dim) leaf: it tracks the '
      'centers.')
  assert not np.allclose(model.center_loss.centers[...], initial_centers), (
      'NNX centers did not move: the in-place Eq. 4 update is lost under '
      'nnx.jit/nnx.value_and_grad.')
  first, last = center_losses[0], center_losses[-1]
  assert last < 0.5 * first, (
      f'NNX center loss did not fall by half in {STEPS} steps: first '
      f'{first:.4f}, last {last:.4f}.')


@pytest.mark.parametrize('weighted', [False, True], ids=['unit', 'weighted'])
def test_nnx_module_update_equals_functional_update_centers(weighted):
  rng = np.random.default_rng(1)
  init = lambda key, shape, dtype: jax.random.normal(key, shape, dtype)
  module = cl_nnx.CenterLoss(NUM_CLASSES, FEATURE_DIM, alpha=ALPHA,
                             centers_init=init, rngs=nnx.Rngs(0))
  centers = jnp.array(module.centers[...])
  features = rng.normal(size=(12, FEATURE_DIM)).astype(np.float32)
  labels = np.array([0, 1, 1, 4, 4, 4, 0, 1, 9, -1, 4, 1], np.int32)
  weights = (rng.uniform(size=12).astype(np.float32) * (np.arange(12) % 3 > 0)
             if weighted else None)
  # Both compiled: eager op-by-op dispatch of the scan is slow, and compiled
  # code may round differently from eager code in the last bit.
  call = nnx.jit(lambda m, *args: m(*args), static_argnums=4)
  loss = call(module, features, labels, weights, True)
  np.testing.assert_array_equal(
      module.centers[...],
      jax.jit(loss_lib.update_centers)(centers, features, labels, alpha=ALPHA,
                                       weights=weights),
      err_msg='nnx.CenterLoss stores a different update than update_centers.')
  np.testing.assert_array_equal(
      loss, jax.jit(loss_lib.center_loss)(features, labels, centers, weights),
      err_msg='nnx.CenterLoss loss is not computed with the pre-update '
      'centers (Algorithm 1).')
  assert not np.array_equal(module.centers[...], centers)
  moved = np.array(module.centers[...])
  call(module, features, labels, weights, False)
  np.testing.assert_array_equal(module.centers[...], moved,
                                err_msg='update=False moved NNX centers.')
