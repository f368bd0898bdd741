"""Center loss in a user's own training loop: accumulation and checkpoints.

User-style code (their own small linen and NNX models,
`flax.training.train_state`, `nnx.Optimizer`, optax, Orbax): with
`optax.MultiSteps` the centers must move once per accumulated batch, by
Eq. 4 on all of it, exactly as one big batch would move them; and the
centers must survive the user's own Orbax save/restore.
"""

import functools

from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import orbax.checkpoint as ocp

import centerloss_jax as cl
from centerloss_jax import nnx as cl_nnx

NUM_CLASSES = 5
DIM = 3
MICRO_BATCHES = 4


def _integer_batch(seed, batch, dim=DIM):
  """Small-integer features: every sum is exact, so any order agrees."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  features = rng.integers(-8, 9, (batch, dim)).astype(np.float32)
  return features, labels


# --- the functional form: k micro-batches == one big batch -----------------


def test_accumulated_statistics_equal_one_big_batch_bit_for_bit():
  features, labels = _integer_batch(0, batch=32)
  weights = np.ones(32, np.float32)
  weights[[3, 17]] = 0.0                   # Padding rows.
  labels[5] = NUM_CLASSES                  # An out-of-range label.
  # Centers on a grid of 1/4: c * n and the sums stay exact in float32.
  centers = jnp.asarray(np.random.default_rng(1).integers(
      -8, 9, (NUM_CLASSES, DIM)) / 4.0, jnp.float32)
  expected = jax.jit(functools.partial(cl.update_centers, alpha=0.5))(
      centers, features, labels, weights=weights)

  stats = cl.CenterStatistics.zeros(NUM_CLASSES, DIM)
  step = jax.jit(functools.partial(cl.accumulate_centers, alpha=0.5))
  for i, rows in enumerate(np.split(np.arange(32), MICRO_BATCHES)):
    last = i == MICRO_BATCHES - 1
    new_centers, stats = step(centers, stats, features[rows], labels[rows],
                              weights=weights[rows], apply=last)
    if not last:                           # Nothing moves before the cue.
      np.testing.assert_array_equal(new_centers, centers)
  np.testing.assert_array_equal(new_centers, expected)
  # A fresh accumulation starts after the apply.
  np.testing.assert_array_equal(stats.counts, np.zeros(NUM_CLASSES))


def _float_batch(seed, batch):
  """Gaussian features and centers: sums round differently in any order."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, DIM)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  centers = jnp.asarray(rng.normal(size=(NUM_CLASSES, DIM)), jnp.float32)
  return features, labels, centers


def test_accumulation_of_float_features_matches_up_to_rounding():
  features, labels, centers = _float_batch(2, batch=40)
  for rule in cl.losses.UPDATE_RULES:
    stats = cl.CenterStatistics.zeros(NUM_CLASSES, DIM)
    for rows in np.split(np.arange(40), MICRO_BATCHES):
      stats = jax.tree.map(jnp.add, stats, cl.center_statistics(
          features[rows], labels[rows], NUM_CLASSES))
    np.testing.assert_allclose(
        cl.apply_center_statistics(centers, stats, alpha=0.5, rule=rule),
        cl.update_centers(centers, features, labels, alpha=0.5, rule=rule),
        rtol=1e-6, atol=1e-6)


def test_statistics_of_one_batch_apply_exactly_as_update_centers():
  features, labels, centers = _float_batch(3, batch=24)
  for rule in cl.losses.UPDATE_RULES:
    for normalize in (False, True):
      options = dict(alpha=0.5, rule=rule, normalize=normalize)

      @jax.jit
      def two_parts(centers, features, labels):
        stats = cl.center_statistics(features, labels, NUM_CLASSES,
                                     normalize=normalize)
        return cl.apply_center_statistics(centers, stats, **options)

      np.testing.assert_array_equal(
          two_parts(centers, features, labels),
          jax.jit(functools.partial(cl.update_centers, **options))(
              centers, features, labels))


def test_statistics_of_replicas_add_up_under_default_shard_map():
  mesh = jax.make_mesh((jax.device_count(),), ('batch',))
  features, labels = _integer_batch(4, batch=4 * jax.device_count())
  expected = cl.center_statistics(features, labels, NUM_CLASSES)
  sharded = jax.jit(jax.shard_map(
      functools.partial(cl.center_statistics, num_classes=NUM_CLASSES,
                        axis_name='batch'),
      mesh=mesh, in_specs=(P('batch'), P('batch')), out_specs=P()))
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P('batch')))
  got = sharded(put(features), put(labels))
  np.testing.assert_array_equal(got.feature_sums, expected.feature_sums)
  np.testing.assert_array_equal(got.counts, expected.counts)


def test_statistics_that_do_not_fit_the_centers_are_rejected():
  stats = cl.CenterStatistics.zeros(NUM_CLASSES, DIM)
  try:
    cl.apply_center_statistics(jnp.zeros((NUM_CLASSES + 1, DIM)), stats,
                               alpha=0.5)
  except ValueError as error:
    assert f'({NUM_CLASSES + 1}, {DIM})' in str(error)
  else:
    raise AssertionError('mismatched statistics were accepted')


# --- a user's loop: optax.MultiSteps + flax.training.train_state ----------


class UserNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    features = nn.Dense(DIM)(nn.relu(nn.Dense(8)(x)))
    return features, nn.Dense(NUM_CLASSES)(features)


class UserState(train_state.TrainState):
  centers: jax.Array
  center_stats: cl.CenterStatistics


def _loss_fn(params, apply_fn, centers, x, y):
  features, logits = apply_fn({'params': params}, x)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.1 * cl.center_loss(features, y, centers), features


@jax.jit
def _accumulating_step(state, x, y):
  """The documented recipe: MultiSteps for params, accumulate_centers for Eq. 4."""
  grads, features = jax.grad(_loss_fn, has_aux=True)(
      state.params, state.apply_fn, state.centers, x, y)
  state = state.apply_gradients(grads=grads)
  centers, stats = cl.accumulate_centers(
      state.centers, state.center_stats, features, y, alpha=0.5,
      apply=state.tx.has_updated(state.opt_state))  # tx: optax.MultiSteps
  return state.replace(centers=centers, center_stats=stats)


@jax.jit
def _plain_step(state, x, y):
  """Eq. 4 on every call: right for one big batch, and what users wrote
  before with MultiSteps, where it moves the centers on every micro-batch."""
  grads, features = jax.grad(_loss_fn, has_aux=True)(
      state.params, state.apply_fn, state.centers, x, y)
  state = state.apply_gradients(grads=grads)
  return state.replace(centers=cl.update_centers(state.centers, features, y,
                                                 alpha=0.5))


def _user_state(tx):
  model = UserNet()
  x, _ = _integer_batch(5, batch=8, dim=6)
  params = model.init(jax.random.key(0), x)['params']
  centers = jax.random.normal(jax.random.key(1), (NUM_CLASSES, DIM))
  return UserState.create(apply_fn=model.apply, params=params, tx=tx,
                          centers=centers,
                          center_stats=cl.CenterStatistics.zeros(
                              NUM_CLASSES, DIM))


def test_multisteps_recipe_equals_one_big_batch_and_the_naive_loop_does_not():
  x, y = _integer_batch(6, batch=64, dim=6)
  x = x / 8.0
  micro = np.split(np.arange(64), MICRO_BATCHES)
  big = _plain_step(_user_state(optax.sgd(0.1)), x, y)

  accumulating = _user_state(optax.MultiSteps(optax.sgd(0.1),
                                              MICRO_BATCHES))
  naive = _user_state(optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES))
  for rows in micro:
    accumulating = _accumulating_step(accumulating, x[rows], y[rows])
    naive = _plain_step(naive, x[rows], y[rows])

  # Per-micro-batch forward passes round like the big one up to the last
  # bit; the mean of micro-batch gradient means is the big-batch mean.
  for got, want in zip(jax.tree.leaves(accumulating.params),
                       jax.tree.leaves(big.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(accumulating.centers, big.centers, rtol=1e-5,
                             atol=1e-6)
  # Moving the centers on every micro-batch (each with its own 1/(1+n_j))
  # lands elsewhere: the bug the recipe fixes.
  assert np.max(np.abs(naive.centers - big.centers)) > 1e-2


class UserNnxNet(nnx.Module):

  def __init__(self, rngs):
    self.trunk = nnx.Linear(6, DIM, rngs=rngs)
    self.head = nnx.Linear(DIM, NUM_CLASSES, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(NUM_CLASSES, DIM, rngs=rngs)

  def __call__(self, x, y, update_centers):
    features = self.trunk(x)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        self.head(features), y).mean()
    return (ce + 0.1 * self.center_loss(features, y, update=update_centers),
            features)


def test_nnx_multisteps_recipe_equals_one_big_batch():
  x, y = _integer_batch(8, batch=64, dim=6)
  x = x / 8.0
  grad_fn = nnx.grad(lambda m, x, y, update: m(x, y, update), has_aux=True,
                     argnums=nnx.DiffState(0, nnx.Param))

  big = UserNnxNet(nnx.Rngs(0))
  big_optimizer = nnx.Optimizer(big, optax.sgd(0.1), wrt=nnx.Param)
  grads, _ = grad_fn(big, x, y, True)      # Eq. 4 inside, on the big batch.
  big_optimizer.update(big, grads)

  @nnx.jit
  def micro_step(model, optimizer, stats, x, y):
    grads, features = grad_fn(model, x, y, False)   # Centers only read.
    optimizer.update(model, grads)
    # nnx.Optimizer counts updates: the k-th is when MultiSteps applies.
    centers, stats = cl.accumulate_centers(
        model.center_loss.centers[...], stats, features, y, alpha=0.5,
        apply=optimizer.step[...] % MICRO_BATCHES == 0)
    model.center_loss.centers[...] = centers
    return stats

  model = UserNnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES), wrt=nnx.Param)
  stats = cl.CenterStatistics.zeros(NUM_CLASSES, DIM)
  for i, rows in enumerate(np.split(np.arange(64), MICRO_BATCHES)):
    stats = micro_step(model, optimizer, stats, x[rows], y[rows])
    if i < MICRO_BATCHES - 1:
      np.testing.assert_array_equal(model.center_loss.centers[...], 0.0)
  np.testing.assert_allclose(model.center_loss.centers[...],
                             big.center_loss.centers[...], rtol=1e-5,
                             atol=1e-6)
  for got, want in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                       jax.tree.leaves(nnx.state(big, nnx.Param))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- Orbax: the centers survive the user's own checkpoints -----------------


def test_centers_and_statistics_survive_a_users_orbax_checkpoint(tmp_path):
  state = _user_state(optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES))
  x, y = _integer_batch(7, batch=16, dim=6)
  for rows in np.split(np.arange(16), 2):  # Mid-accumulation.
    state = _accumulating_step(state, x[rows] / 8.0, y[rows])
  assert float(jnp.sum(state.center_stats.counts)) == 16

  with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
    manager.save(2, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  fresh = _user_state(optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES))
  with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.StandardRestore(fresh))
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
  # Training resumes where it stopped: the same next step either way.
  rows = np.arange(8)
  np.testing.assert_array_equal(
      _accumulating_step(restored, x[rows] / 8.0, y[rows]).center_stats.counts,
      _accumulating_step(state, x[rows] / 8.0, y[rows]).center_stats.counts)
