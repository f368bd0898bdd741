"""Tests for centerloss_jax.nnx: the `CenterLoss` NNX module.

The centers are a `Centers` variable, not an `nnx.Param`: invisible to
`nnx.grad(..., argnums=nnx.DiffState(0, nnx.Param))` and to
`nnx.Optimizer(..., wrt=nnx.Param)`, moved in place by Eq. 4 only, and left
alone after `model.eval()` as BatchNorm's statistics are. Also: the same
update as `losses.update_centers`, its options, the diagnostics it keeps,
`nnx.shard_map`, and gradient accumulation with `optax.MultiSteps`. The
problem is `toy_classifier`'s.
"""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from centerloss_jax import losses as loss_lib
from centerloss_jax import nnx as cl_nnx
from toy_classifier import ALPHA
from toy_classifier import assert_halves
from toy_classifier import assert_holds_no_centers
from toy_classifier import CENTER_LOSS_WEIGHT
from toy_classifier import CENTERS_SHAPE
from toy_classifier import cluster_batches
from toy_classifier import dyadic_batch
from toy_classifier import dyadic_init
from toy_classifier import FEATURE_DIM
from toy_classifier import HIDDEN_DIM
from toy_classifier import INPUT_DIM
from toy_classifier import leaf_shapes
from toy_classifier import NUM_CLASSES


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


def new_center_loss(**options):
  return cl_nnx.CenterLoss(NUM_CLASSES, FEATURE_DIM, rngs=nnx.Rngs(0),
                           **options)


# The module called under nnx.jit: eager dispatch of its update is slow.
call = nnx.jit(lambda module, *args, update=None: module(*args,
                                                         update=update),
               static_argnames='update')


# ---------------------------------------------------------------------------
# Where the centers live.
# ---------------------------------------------------------------------------


def test_centers_are_a_centers_variable():
  assert isinstance(new_center_loss().centers, cl_nnx.Centers)


def test_centers_are_not_params():
  assert not isinstance(new_center_loss().centers, nnx.Param), (
      'Centers subclass nnx.Param: the optimizer would train them.')


def test_centers_state_holds_one_classes_by_dim_array():
  model = NnxNet(nnx.Rngs(0))
  assert leaf_shapes(nnx.state(model, cl_nnx.Centers)) == [CENTERS_SHAPE]


def test_params_hold_no_centers_shaped_array():
  model = NnxNet(nnx.Rngs(0))
  assert_holds_no_centers(nnx.state(model, nnx.Param), 'params')


# ---------------------------------------------------------------------------
# Training with nnx.Optimizer.
# ---------------------------------------------------------------------------


def ce_plus_center_loss(model, inputs, labels):
  features = model.features(inputs)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      model.head(features), labels).mean()
  center = model.center_loss(features, labels)
  return ce + CENTER_LOSS_WEIGHT * center, center


@nnx.jit
def train_step(model, optimizer, inputs, labels):
  (_, center), grads = nnx.value_and_grad(
      ce_plus_center_loss, argnums=nnx.DiffState(0, nnx.Param),
      has_aux=True)(model, inputs, labels)
  optimizer.update(model, grads)
  return center, grads


@pytest.fixture(scope='module')
def trained():
  """STEPS Adam steps: the centers before and after, the first step's
  gradients, the optimizer state and the center losses."""
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  initial_centers = np.array(model.center_loss.centers[...])
  inputs, labels = cluster_batches()
  center_losses, first_grads = [], None
  for x, y in zip(inputs, labels):
    center, grads = train_step(model, optimizer, x, y)
    center_losses.append(float(center))
    first_grads = grads if first_grads is None else first_grads
  return dict(initial_centers=initial_centers,
              centers=np.array(model.center_loss.centers[...]),
              first_grads=first_grads, optimizer_state=nnx.state(optimizer),
              center_losses=center_losses)


def test_training_returns_gradients(trained):
  assert list(nnx.to_flat_state(trained['first_grads'])), (
      'No gradients came back.')


def test_gradients_hold_no_centers_variable(trained):
  for path, leaf in nnx.to_flat_state(trained['first_grads']):
    assert not isinstance(leaf, cl_nnx.Centers) and (
        'center_loss' not in path), f'Centers got a gradient at {path}.'


def test_gradients_hold_no_centers_shaped_leaf(trained):
  assert_holds_no_centers(trained['first_grads'], 'The gradients')


def test_optimizer_state_holds_no_centers(trained):
  assert_holds_no_centers(trained['optimizer_state'],
                          'The NNX optimizer state')


def test_training_moves_the_centers(trained):
  assert not np.allclose(trained['centers'], trained['initial_centers']), (
      'NNX centers did not move: the in-place Eq. 4 update is lost under '
      'nnx.jit/nnx.value_and_grad.')


def test_center_loss_halves_in_training(trained):
  assert_halves(trained['center_losses'])


# ---------------------------------------------------------------------------
# The module's update is `update_centers`, its loss `center_loss`.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module', params=[False, True], ids=['unit', 'weighted'])
def module_call(request):
  """The module's loss and centers from one call with update=True, then
  after one with update=False; the inputs and the centers before."""
  module = new_center_loss(alpha=ALPHA, centers_init=dyadic_init)
  centers = jnp.array(module.centers[...])
  features, _ = dyadic_batch(4, 12)
  labels = np.array([0, 1, 1, 4, 4, 4, 0, 1, 9, -1, 4, 1], np.int32)
  # Multiples of 1/4, every third 0: with dyadic features and centers every
  # sum is exact, so the module and the functions agree bit for bit.
  weights = (np.arange(12) % 4 / 4 * (np.arange(12) % 3 > 0)).astype(
      np.float32) if request.param else None
  loss = call(module, features, labels, weights, update=True)
  moved = np.array(module.centers[...])
  call(module, features, labels, weights, update=False)
  return dict(inputs=(features, labels, weights), centers=centers, loss=loss,
              moved=moved, after_read=np.array(module.centers[...]))


def test_module_update_equals_update_centers(module_call):
  features, labels, weights = module_call['inputs']
  np.testing.assert_array_equal(
      module_call['moved'],
      jax.jit(loss_lib.update_centers)(module_call['centers'], features,
                                       labels, alpha=ALPHA, weights=weights),
      err_msg='nnx.CenterLoss stores a different update than update_centers.')


def test_module_loss_uses_the_centers_before_the_update(module_call):
  features, labels, weights = module_call['inputs']
  np.testing.assert_array_equal(
      module_call['loss'],
      jax.jit(loss_lib.center_loss)(features, labels, module_call['centers'],
                                    weights),
      err_msg='nnx.CenterLoss loss is not computed with the pre-update '
      'centers (Algorithm 1).')


def test_module_call_moves_the_centers(module_call):
  assert not np.array_equal(module_call['moved'], module_call['centers'])


def test_update_false_keeps_the_centers(module_call):
  np.testing.assert_array_equal(module_call['after_read'],
                                module_call['moved'],
                                err_msg='update=False moved NNX centers.')


@pytest.fixture(scope='module')
def cosine_ema_call():
  """(features, labels, loss, centers after) of an eager call of a cosine,
  EMA module; eager like the functions it is compared with."""
  features, labels = dyadic_batch(5, 4)
  module = new_center_loss(alpha=0.5, rule='ema', normalize=True)
  loss = module(features, labels)
  return features, labels, loss, module.centers[...]


def test_cosine_ema_module_loss_equals_center_loss(cosine_ema_call):
  features, labels, loss, _ = cosine_ema_call
  np.testing.assert_array_equal(
      loss, loss_lib.center_loss(features, labels, jnp.zeros(CENTERS_SHAPE),
                                 normalize=True))


def test_cosine_ema_module_updates_as_update_centers(cosine_ema_call):
  features, labels, _, centers = cosine_ema_call
  np.testing.assert_array_equal(
      centers,
      loss_lib.update_centers(jnp.zeros(CENTERS_SHAPE), features, labels,
                              alpha=0.5, rule='ema', normalize=True))


# ---------------------------------------------------------------------------
# Train and eval modes.
# ---------------------------------------------------------------------------


class BatchNormNet(nnx.Module):
  """Linear, BatchNorm, a Linear head and the center loss, whose summed
  loss serves for training and evaluation alike."""

  def __init__(self, rngs):
    self.linear = nnx.Linear(INPUT_DIM, FEATURE_DIM, rngs=rngs)
    self.norm = nnx.BatchNorm(FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(NUM_CLASSES, FEATURE_DIM,
                                         alpha=0.5, rngs=rngs)

  def __call__(self, x, y):
    features = self.norm(self.linear(x))
    ce = optax.softmax_cross_entropy_with_integer_labels(self.head(features),
                                                         y).mean()
    return ce + 0.01 * self.center_loss(features, y)


@pytest.fixture(scope='module')
def train_then_eval_then_train():
  """Centers and BatchNorm means after a train step, after an evaluation in
  eval mode, and after one more back in train mode."""
  model = BatchNormNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  inputs, labels = cluster_batches(steps=2, batch=16)

  @nnx.jit
  def step(model, optimizer, x, y):
    grads = nnx.grad(BatchNormNet.__call__,
                     argnums=nnx.DiffState(0, nnx.Param))(model, x, y)
    optimizer.update(model, grads)

  evaluate = nnx.jit(BatchNormNet.__call__)   # The training loss, reused.
  snapshot = lambda: (np.array(model.center_loss.centers[...]),
                      np.array(model.norm.mean[...]))
  step(model, optimizer, inputs[0], labels[0])
  trained = snapshot()
  model.eval()
  evaluate(model, inputs[1], labels[1])
  evaluated = snapshot()
  model.train()
  evaluate(model, inputs[1], labels[1])
  return dict(trained=trained, evaluated=evaluated, retrained=snapshot())


def test_train_step_moves_the_centers(train_then_eval_then_train):
  centers, _ = train_then_eval_then_train['trained']
  assert np.abs(centers).max() > 0, 'training did not move the centers'


def test_eval_mode_keeps_the_centers(train_then_eval_then_train):
  np.testing.assert_array_equal(train_then_eval_then_train['evaluated'][0],
                                train_then_eval_then_train['trained'][0],
                                err_msg='eval moved the centers')


def test_eval_mode_keeps_the_batch_norm_statistics(
    train_then_eval_then_train):
  np.testing.assert_array_equal(train_then_eval_then_train['evaluated'][1],
                                train_then_eval_then_train['trained'][1])


def test_train_mode_turns_the_update_back_on(train_then_eval_then_train):
  assert not np.array_equal(train_then_eval_then_train['retrained'][0],
                            train_then_eval_then_train['trained'][0]), (
                                'model.train() did not re-enable the update')


def test_update_true_moves_the_centers_in_eval_mode():
  module = new_center_loss()
  features, labels = dyadic_batch(6, 16)
  module.eval()
  call(module, features, labels, update=True)
  assert np.abs(module.centers[...]).max() > 0


def test_update_false_keeps_the_centers_in_train_mode():
  module = new_center_loss(centers_init=dyadic_init)
  features, labels = dyadic_batch(6, 16)
  before = np.asarray(module.centers[...])
  call(module, features, labels, update=False)
  np.testing.assert_array_equal(module.centers[...], before)


# ---------------------------------------------------------------------------
# Options and diagnostics.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('alpha', [-1.0, 1.5])
def test_alpha_outside_the_unit_interval_is_rejected(alpha):
  with pytest.raises(ValueError, match='alpha'):
    new_center_loss(alpha=alpha)


def test_strict_labels_catch_one_indexed_labels():
  features, labels = dyadic_batch(7, 16)
  with pytest.raises(ValueError, match='1-indexed'):
    new_center_loss(strict_labels=True)(features, labels + 1)


@pytest.fixture(scope='module')
def diagnosed():
  """(module after a jitted call and an eager one in eval mode, features,
  labels with three out of range, the diagnostics after each call)."""
  features, labels = dyadic_batch(8, 16)
  labels[:3] = NUM_CLASSES                 # Three out of range.
  module = new_center_loss()
  call(module, features, labels)
  after_update = {name: np.array(getattr(module, name)[...])
                  for name in ('invalid_labels', *loss_lib.DIAGNOSTICS)}
  expected = loss_lib.center_diagnostics(
      features, labels, jnp.zeros(CENTERS_SHAPE), module.centers[...])
  module.eval()
  module(features, labels)                 # Read only: nothing moves.
  return dict(after_update=after_update, expected=expected,
              after_eval=float(module.center_movement[...]))


def test_module_counts_the_masked_labels(diagnosed):
  assert int(diagnosed['after_update']['invalid_labels']) == 3


def test_module_keeps_the_center_diagnostics(diagnosed):
  for name in loss_lib.DIAGNOSTICS:
    np.testing.assert_allclose(diagnosed['after_update'][name],
                               diagnosed['expected'][name], rtol=1e-6)


def test_center_movement_is_positive_after_an_update(diagnosed):
  assert float(diagnosed['after_update']['center_movement']) > 0


def test_eval_mode_call_records_zero_center_movement(diagnosed):
  assert diagnosed['after_eval'] == 0.0


# ---------------------------------------------------------------------------
# nnx.shard_map at jax.shard_map's default check_vma=True.
# ---------------------------------------------------------------------------


def test_update_under_shard_map_equals_update_centers():
  mesh = jax.make_mesh((jax.device_count(),), ('batch',))
  features, labels = dyadic_batch(9, 4 * jax.device_count())
  module = new_center_loss(axis_name='batch')
  step = nnx.jit(nnx.shard_map(
      lambda m, x, y: jax.lax.pmean(m(x, y), 'batch'), mesh=mesh,
      in_specs=(P(), P('batch'), P('batch')), out_specs=P()))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P('batch')))
  step(module, shard(features), shard(labels))
  # Dyadic features: every order of the additions gives the same bits.
  np.testing.assert_array_equal(
      module.centers[...],
      jax.jit(loss_lib.update_centers)(jnp.zeros(CENTERS_SHAPE), features,
                                       labels, alpha=0.5))


# ---------------------------------------------------------------------------
# Gradient accumulation: optax.MultiSteps with accumulate_centers.
# ---------------------------------------------------------------------------

MICRO_BATCHES = 4


class LinearNet(nnx.Module):
  """A Linear trunk to features, a Linear head and the center loss."""

  def __init__(self, rngs):
    self.trunk = nnx.Linear(INPUT_DIM, FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(NUM_CLASSES, FEATURE_DIM, rngs=rngs)

  def __call__(self, x, y, update_centers):
    features = self.trunk(x)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        self.head(features), y).mean()
    return (ce + 0.1 * self.center_loss(features, y, update=update_centers),
            features)


grad_fn = nnx.grad(lambda m, x, y, update: m(x, y, update), has_aux=True,
                   argnums=nnx.DiffState(0, nnx.Param))


@nnx.jit
def big_step(model, optimizer, x, y):
  grads, _ = grad_fn(model, x, y, True)   # Eq. 4 inside, on the big batch.
  optimizer.update(model, grads)


@nnx.jit
def accumulating_step(model, optimizer, stats, x, y):
  grads, features = grad_fn(model, x, y, False)   # Centers only read.
  optimizer.update(model, grads)
  # nnx.Optimizer counts updates: the k-th is when MultiSteps applies.
  centers, stats = loss_lib.accumulate_centers(
      model.center_loss.centers[...], stats, features, y, alpha=0.5,
      apply=optimizer.step[...] % MICRO_BATCHES == 0)
  model.center_loss.centers[...] = centers
  return stats


@pytest.fixture(scope='module')
def multisteps_runs():
  """(one big-batch step's model, the recipe's model after the micro-steps,
  its centers after each micro-step)."""
  x, y = dyadic_batch(10, 64, dim=INPUT_DIM)
  big = LinearNet(nnx.Rngs(0))
  big_step(big, nnx.Optimizer(big, optax.sgd(0.1), wrt=nnx.Param), x, y)

  model = LinearNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES), wrt=nnx.Param)
  stats = loss_lib.CenterStatistics.zeros(NUM_CLASSES, FEATURE_DIM)
  centers_after_each = []
  for rows in np.split(np.arange(64), MICRO_BATCHES):
    stats = accumulating_step(model, optimizer, stats, x[rows], y[rows])
    centers_after_each.append(np.array(model.center_loss.centers[...]))
  return big, model, centers_after_each


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_accumulated_centers_do_not_move_before_the_kth_step(
    multisteps_runs):
  _, _, centers_after_each = multisteps_runs
  for centers in centers_after_each[:-1]:
    np.testing.assert_array_equal(centers, 0.0)


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_multisteps_recipe_moves_centers_as_one_big_batch(multisteps_runs):
  big, model, _ = multisteps_runs
  np.testing.assert_allclose(model.center_loss.centers[...],
                             big.center_loss.centers[...], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_multisteps_recipe_moves_params_as_one_big_batch(multisteps_runs):
  big, model, _ = multisteps_runs
  for got, want in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                       jax.tree.leaves(nnx.state(big, nnx.Param))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
