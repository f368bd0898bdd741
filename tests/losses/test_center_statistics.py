"""Tests for the gradient-accumulation split of Eq. 4 (losses.center).

`center_statistics`, `apply_center_statistics` and `accumulate_centers`:
the per-class sums and counts of micro-batches add up to those of one big
batch and move the centers once, as one big batch would; with
`optax.MultiSteps` in a `flax.training.train_state` step; and through an
Orbax checkpoint taken mid-accumulation.
"""

import functools
import re

from flax.training import train_state
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from centerloss_jax import losses as loss_lib
from numerics import assert_trees_close
from numerics import reassociation_rtol
from center_data import (
    NUM_CLASSES, DIM, dyadic_batch, random_labels, update, statistics,
    apply_statistics)


# ---------------------------------------------------------------------------
# Gradient accumulation: statistics of micro-batches, applied once.
# ---------------------------------------------------------------------------

MICRO_BATCHES = 4

@pytest.fixture(scope='module')
def accumulation_run():
  """The centers after each micro-batch of `accumulate_centers`, the final
  statistics, and `update_centers` on the whole (dyadic) batch."""
  labels = random_labels(0, 32)
  features, centers = dyadic_batch(labels, seed=1)
  weights = np.ones(32, np.float32)
  weights[[3, 17]] = 0.0                   # Padding rows.
  labels[5] = NUM_CLASSES                  # An out-of-range label.
  stats = loss_lib.CenterStatistics.zeros(NUM_CLASSES, DIM)
  step = jax.jit(functools.partial(loss_lib.accumulate_centers, alpha=0.5))
  after_each = []
  for i, rows in enumerate(np.split(np.arange(32), MICRO_BATCHES)):
    new_centers, stats = step(centers, stats, features[rows], labels[rows],
                              weights=weights[rows],
                              apply=i == MICRO_BATCHES - 1)
    after_each.append(np.asarray(new_centers))
  big_batch = update(centers, features, labels, alpha=0.5, weights=weights)
  return dict(centers=centers, after_each=after_each, statistics=stats,
              big_batch=np.asarray(big_batch))


def test_accumulated_centers_do_not_move_before_the_apply_cue(
    accumulation_run):
  for moved in accumulation_run['after_each'][:-1]:
    np.testing.assert_array_equal(moved, accumulation_run['centers'])


def test_accumulated_micro_batches_move_centers_as_one_big_batch(
    accumulation_run):
  # Dyadic data: the sums are exact, so equality is bit for bit.
  np.testing.assert_array_equal(accumulation_run['after_each'][-1],
                                accumulation_run['big_batch'])


def test_accumulation_starts_afresh_after_the_apply(accumulation_run):
  np.testing.assert_array_equal(accumulation_run['statistics'].counts,
                                np.zeros(NUM_CLASSES))


@pytest.mark.parametrize('rule', loss_lib.UPDATE_RULES)
def test_accumulated_float_statistics_match_one_batch_up_to_rounding(rule):
  # Gaussian features: the sums round differently in any order.
  labels = random_labels(2, 40)
  rng = np.random.default_rng(2)
  features = rng.normal(size=(40, DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  stats = loss_lib.CenterStatistics.zeros(NUM_CLASSES, DIM)
  for rows in np.split(np.arange(40), MICRO_BATCHES):
    stats = jax.tree.map(jnp.add, stats, statistics(
        features[rows], labels[rows], num_classes=NUM_CLASSES))
  np.testing.assert_allclose(
      apply_statistics(centers, stats, alpha=0.5, rule=rule),
      update(centers, features, labels, alpha=0.5, rule=rule),
      rtol=1e-6, atol=1e-6)


def _one_batch_two_ways(rule, normalize):
  """(apply_center_statistics of one dyadic batch's statistics, and
  update_centers on that batch): two programs."""
  labels = random_labels(3, 24)
  features, centers = dyadic_batch(labels, seed=3)
  options = dict(alpha=0.5, rule=rule, normalize=normalize)
  stats = statistics(features, labels, num_classes=NUM_CLASSES,
                     normalize=normalize)
  return (apply_statistics(centers, stats, **options),
          update(centers, features, labels, **options))


@pytest.mark.parametrize('rule', loss_lib.UPDATE_RULES)
def test_statistics_of_one_batch_apply_exactly_as_update_centers(rule):
  # The same sums, in the same order, then the same arithmetic per class;
  # dyadic data makes every sum and product exact, so a fused multiply-add
  # in one program and not the other changes no bit either.
  applied, updated = _one_batch_two_ways(rule, normalize=False)
  np.testing.assert_array_equal(applied, updated)


@pytest.mark.parametrize('rule', loss_lib.UPDATE_RULES)
def test_cosine_statistics_of_one_batch_apply_as_update_centers(rule):
  # Back on the sphere, the moved centers' norms are sums of DIM rounded
  # squares, which XLA may fuse into multiply-adds differently per program.
  applied, updated = _one_batch_two_ways(rule, normalize=True)
  assert_trees_close(applied, updated, rtol=reassociation_rtol(DIM),
                     what='cosine centers from statistics and from the update')


def test_statistics_that_do_not_fit_the_centers_are_rejected():
  stats = loss_lib.CenterStatistics.zeros(NUM_CLASSES, DIM)
  with pytest.raises(ValueError,
                     match=re.escape(f'({NUM_CLASSES + 1}, {DIM})')):
    loss_lib.apply_center_statistics(jnp.zeros((NUM_CLASSES + 1, DIM)), stats,
                                     alpha=0.5)


# ---------------------------------------------------------------------------
# The optax.MultiSteps recipe: flax.training.train_state, one jitted step.
# ---------------------------------------------------------------------------

INPUT_DIM = 6


class MlpNet(nn.Module):
  """Input -> 8 hidden units -> DIM-dimensional features -> logits."""

  @nn.compact
  def __call__(self, x):
    features = nn.Dense(DIM)(nn.relu(nn.Dense(8)(x)))
    return features, nn.Dense(NUM_CLASSES)(features)


class CenterTrainState(train_state.TrainState):
  centers: jax.Array
  center_stats: loss_lib.CenterStatistics


def _ce_plus_center_loss(params, apply_fn, centers, x, y):
  features, logits = apply_fn({'params': params}, x)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.1 * loss_lib.center_loss(features, y, centers), features


@jax.jit
def accumulating_step(state, x, y):
  """The documented recipe: MultiSteps for the params, accumulate_centers
  for Eq. 4."""
  grads, features = jax.grad(_ce_plus_center_loss, has_aux=True)(
      state.params, state.apply_fn, state.centers, x, y)
  state = state.apply_gradients(grads=grads)
  centers, stats = loss_lib.accumulate_centers(
      state.centers, state.center_stats, features, y, alpha=0.5,
      apply=state.tx.has_updated(state.opt_state))  # tx: optax.MultiSteps
  return state.replace(centers=centers, center_stats=stats)


@jax.jit
def plain_step(state, x, y):
  """Eq. 4 on every call: right for one big batch; with MultiSteps it moves
  the centers on every micro-batch."""
  grads, features = jax.grad(_ce_plus_center_loss, has_aux=True)(
      state.params, state.apply_fn, state.centers, x, y)
  state = state.apply_gradients(grads=grads)
  return state.replace(centers=loss_lib.update_centers(
      state.centers, features, y, alpha=0.5))


def new_train_state(tx):
  model = MlpNet()
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((1, INPUT_DIM)))['params']
  centers = jax.random.normal(jax.random.key(1), (NUM_CLASSES, DIM))
  return CenterTrainState.create(
      apply_fn=model.apply, params=params, tx=tx, centers=centers,
      center_stats=loss_lib.CenterStatistics.zeros(NUM_CLASSES, DIM))


def multi_steps():
  return optax.MultiSteps(optax.sgd(0.1), MICRO_BATCHES)


@pytest.fixture(scope='module')
def multisteps_runs():
  """One big-batch step, and MICRO_BATCHES micro-steps with the recipe and
  with the plain step, from the same state."""
  labels = random_labels(6, 64)
  inputs, _ = dyadic_batch(labels, seed=6, dim=INPUT_DIM)
  big = plain_step(new_train_state(optax.sgd(0.1)), inputs, labels)
  accumulating = new_train_state(multi_steps())
  naive = new_train_state(multi_steps())
  for rows in np.split(np.arange(64), MICRO_BATCHES):
    accumulating = accumulating_step(accumulating, inputs[rows], labels[rows])
    naive = plain_step(naive, inputs[rows], labels[rows])
  return big, accumulating, naive


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_multisteps_recipe_moves_params_as_one_big_batch(multisteps_runs):
  big, accumulating, _ = multisteps_runs
  # Per-micro-batch forward passes round like the big one up to the last
  # bit; the mean of micro-batch gradient means is the big-batch mean.
  for got, want in zip(jax.tree.leaves(accumulating.params),
                       jax.tree.leaves(big.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_multisteps_recipe_moves_centers_as_one_big_batch(multisteps_runs):
  big, accumulating, _ = multisteps_runs
  np.testing.assert_allclose(accumulating.centers, big.centers, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow  # Compiles a big-batch and a micro-batch train step.
def test_moving_centers_on_every_micro_batch_misses_the_big_batch(
    multisteps_runs):
  # Each micro-batch with its own 1/(1+n_j) lands elsewhere: the bug the
  # recipe fixes.
  big, _, naive = multisteps_runs
  assert np.max(np.abs(naive.centers - big.centers)) > 1e-2


@pytest.fixture(scope='module')
def checkpoint_round_trip(tmp_path_factory):
  """(state mid-accumulation, that state saved and restored with Orbax,
  the inputs and labels)."""
  labels = random_labels(7, 16)
  inputs, _ = dyadic_batch(labels, seed=7, dim=INPUT_DIM)
  state = new_train_state(multi_steps())
  for rows in np.split(np.arange(16), 2):  # Mid-accumulation.
    state = accumulating_step(state, inputs[rows], labels[rows])
  directory = tmp_path_factory.mktemp('orbax') / 'checkpoints'
  with ocp.CheckpointManager(directory) as manager:
    manager.save(2, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.StandardRestore(new_train_state(multi_steps())))
  return state, restored, inputs, labels


@pytest.mark.slow  # Compiles a train step, saves and restores with Orbax.
def test_checkpointed_state_is_mid_accumulation(checkpoint_round_trip):
  state, _, _, _ = checkpoint_round_trip
  assert float(jnp.sum(state.center_stats.counts)) == 16


@pytest.mark.slow  # Compiles a train step, saves and restores with Orbax.
def test_orbax_restores_centers_and_statistics(checkpoint_round_trip):
  state, restored, _, _ = checkpoint_round_trip
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # Compiles a train step, saves and restores with Orbax.
def test_accumulation_resumes_from_a_restored_checkpoint(
    checkpoint_round_trip):
  state, restored, inputs, labels = checkpoint_round_trip
  rows = np.arange(8)
  np.testing.assert_array_equal(
      accumulating_step(restored, inputs[rows],
                        labels[rows]).center_stats.counts,
      accumulating_step(state, inputs[rows], labels[rows]).center_stats.counts)
