"""Tests for centerloss_jax.losses.center: Eq. 2, Eq. 4 and their variants.

The unit is the center-loss functions: `center_loss`, `update_centers` (the
paper's Eq. 4, the EMA rule, the cosine form), and the gradient-accumulation
split `center_statistics` / `apply_center_statistics` / `accumulate_centers`
(with `optax.MultiSteps`), alone and under `jit`, `pmap` and `shard_map`.

The reference below is written straight from the paper, in float64 numpy
with explicit loops over classes, and shares no code with the library:

  Eq. 2 (weighted mean): L = 0.5 * sum_i w_i ||x_i - c_{y_i}||^2 / sum_i w_i
  Eq. 4: n_j = sum_i w_i [y_i = j],
         delta_c_j = sum_i w_i [y_i = j] (c_j - x_i) / (1 + n_j),
         c_j <- c_j - alpha * delta_c_j

Comparisons between two programs are bit-for-bit only on dyadic data (all
values multiples of 1/8), where every sum and product is exact in float32
whatever the order of the additions; elsewhere they carry a tolerance.
"""

import functools
import re

from flax.training import train_state
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from benchmarks import hlo_stats
from centerloss_jax import losses as loss_lib
from numerics import assert_trees_close
from numerics import reassociation_rtol

NUM_CLASSES = 7
DIM = 3


# ---------------------------------------------------------------------------
# The paper's formulas, in numpy.
# ---------------------------------------------------------------------------


def reference_center_loss(features, labels, centers, weights=None):
  """Eq. 2 as a weighted mean; out-of-range labels are skipped."""
  features = np.asarray(features, np.float64)
  centers = np.asarray(centers, np.float64)
  if weights is None:
    weights = np.ones(len(labels))
  weights = np.asarray(weights, np.float64)
  total, normaliser = 0.0, 0.0
  for j in range(centers.shape[0]):
    for i in range(len(labels)):
      if labels[i] == j:
        total += weights[i] * np.sum((features[i] - centers[j]) ** 2)
        normaliser += weights[i]
  return 0.5 * total / normaliser if normaliser > 0 else 0.0


def reference_update_centers(centers, features, labels, alpha, weights=None):
  """Eq. 4, one class at a time; out-of-range labels belong to no class."""
  features = np.asarray(features, np.float64)
  centers = np.asarray(centers, np.float64)
  if weights is None:
    weights = np.ones(len(labels))
  weights = np.asarray(weights, np.float64)
  new_centers = centers.copy()
  for j in range(centers.shape[0]):
    numerator = np.zeros(centers.shape[1])
    count = 0.0
    for i in range(len(labels)):
      if labels[i] == j:
        numerator += weights[i] * (centers[j] - features[i])
        count += weights[i]
    delta = numerator / (1.0 + count)
    new_centers[j] = centers[j] - alpha * delta
  return new_centers


# ---------------------------------------------------------------------------
# Test data.
# ---------------------------------------------------------------------------

# Class 2 four times, 5 three times, 0 once, 6 twice but only with weight 0;
# classes 1, 3 and 4 are absent.
LABELS = np.array([2, 5, 2, 0, 6, 2, 5, 6, 2, 5], np.int32)
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 0.25, 1.0, 0.0, 1.0, 3.0],
                   np.float32)
PRESENT = (0, 2, 5, 6)        # Classes with a label in the batch (unweighted).
WEIGHTED_PRESENT = (0, 2, 5)  # Classes with non-zero weight.
ABSENT = tuple(j for j in range(NUM_CLASSES) if j not in WEIGHTED_PRESENT)


def random_batch(seed=0):
  """(features, centers) float32 for LABELS; centers non-zero, distinct."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(len(LABELS), DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return features, centers


def dyadic_batch(labels, seed=0, dim=DIM):
  """Features and centers in multiples of 1/8: their sums are exact."""
  rng = np.random.default_rng(seed)
  features = rng.integers(-16, 16, (len(labels), dim)).astype(np.float32) / 8
  centers = rng.integers(-16, 16, (NUM_CLASSES, dim)).astype(np.float32) / 8
  return features, centers


def random_labels(seed, batch):
  return np.random.default_rng(seed).integers(
      0, NUM_CLASSES, batch).astype(np.int32)


# Compiled once per input signature (eager dispatch of the scan is slow);
# alpha is traced, so the alphas share one compilation.
update = jax.jit(loss_lib.update_centers,
                 static_argnames=('rule', 'normalize', 'axis_name'))
statistics = jax.jit(loss_lib.center_statistics,
                     static_argnames=('num_classes', 'normalize'))
apply_statistics = jax.jit(loss_lib.apply_center_statistics,
                           static_argnames=('rule', 'normalize'))


# ---------------------------------------------------------------------------
# Agreement with the paper's formulas.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('weighted', [False, True], ids=['unit', 'weighted'])
def test_center_loss_matches_eq2_reference(weighted):
  features, centers = random_batch()
  weights = WEIGHTS if weighted else None
  got = loss_lib.center_loss(features, LABELS, centers, weights)
  want = reference_center_loss(features, LABELS, centers, weights)
  np.testing.assert_allclose(
      got, want, rtol=1e-6,
      err_msg='center_loss differs from Eq. 2 (weighted mean, times 1/2).')


@pytest.fixture(scope='module',
                params=[(alpha, weighted) for alpha in (0.01, 0.1, 0.5, 1.0)
                        for weighted in (False, True)],
                ids=lambda p: f'alpha{p[0]}-{"weighted" if p[1] else "unit"}')
def eq4_update(request):
  """(updated, reference, old centers, moved classes) for one alpha."""
  alpha, weighted = request.param
  features, centers = random_batch(seed=1)
  weights = WEIGHTS if weighted else None
  got = np.asarray(update(centers, features, LABELS, alpha=alpha,
                          weights=weights))
  want = reference_update_centers(centers, features, LABELS, alpha, weights)
  moved = WEIGHTED_PRESENT if weighted else PRESENT
  return got, want, centers, moved


def test_update_centers_matches_eq4_reference(eq4_update):
  got, want, _, moved = eq4_update
  for j in moved:
    np.testing.assert_allclose(
        got[j], want[j], rtol=1e-6, atol=1e-6,
        err_msg=f'Eq. 4 update of class {j} (present in the batch) is wrong.')


def test_update_centers_returns_float32_centers(eq4_update):
  got, _, _, _ = eq4_update
  assert got.dtype == np.float32


def test_present_classes_move(eq4_update):
  got, _, centers, moved = eq4_update
  for j in moved:
    assert not np.array_equal(got[j], centers[j]), (
        f'Center of class {j} is present in the batch but did not move.')


def test_absent_classes_do_not_move(eq4_update):
  got, _, centers, moved = eq4_update
  for j in range(NUM_CLASSES):
    if j not in moved:
      np.testing.assert_array_equal(
          got[j], centers[j],
          err_msg=f'Center of class {j} moved although the class has no '
          'example of non-zero weight in the batch; it must stay bit-for-bit.')


# One class, two samples at x=1 and x=3, center 0, alpha 0.5.
HAND_CENTERS = np.array([[0.0], [5.0]], np.float32)
HAND_FEATURES = np.array([[1.0], [3.0]], np.float32)
HAND_LABELS = np.array([0, 0], np.int32)


def test_update_by_hand_divides_by_one_plus_the_count():
  # delta = ((0 - 1) + (0 - 3)) / (1 + 2) = -4/3, c_new = 0 - 0.5 * -4/3.
  got = update(HAND_CENTERS, HAND_FEATURES, HAND_LABELS, alpha=0.5)
  np.testing.assert_allclose(
      got, [[2.0 / 3.0], [5.0]], rtol=1e-7,
      err_msg='Eq. 4 by hand: expected c_0 = 0.5 * 4/3 (the 1 + n_j '
      'normalisation), c_1 untouched.')


def test_weighted_update_by_hand_counts_the_sum_of_weights():
  # Weights 1 and 3: delta = (-1 - 9) / (1 + 4) = -2, c_new = 0.5 * 2 = 1.
  got = update(HAND_CENTERS, HAND_FEATURES, HAND_LABELS, alpha=0.5,
               weights=np.array([1.0, 3.0], np.float32))
  np.testing.assert_allclose(
      got, [[1.0], [5.0]], rtol=1e-7,
      err_msg='Weighted Eq. 4 by hand: expected n_j = sum of weights.')


def test_center_loss_by_hand_is_half_the_mean_squared_distance():
  # 0.5 * (1^2 + 3^2) / 2 = 2.5 for x = 1, 3 around c = 0.
  got = loss_lib.center_loss(jnp.array([[1.0], [3.0]]), jnp.array([0, 0]),
                             jnp.zeros((2, 1)))
  np.testing.assert_allclose(got, 2.5, rtol=1e-7,
                             err_msg='Eq. 2 by hand: 0.5 * mean of 1 and 9.')


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def feature_gradient():
  """(gradient, features, labels, centers) with an invalid label at row 1."""
  features, centers = random_batch(seed=2)
  labels = LABELS.copy()
  labels[1] = -1  # An invalid label must get exactly zero gradient.
  grad = jax.grad(loss_lib.center_loss)(jnp.asarray(features), labels,
                                        centers, WEIGHTS)
  return np.asarray(grad), features, labels, centers


def test_feature_gradient_is_eq3_over_the_total_weight(feature_gradient):
  grad, features, labels, centers = feature_gradient
  valid = (labels >= 0) & (labels < NUM_CLASSES)
  w = np.where(valid, WEIGHTS, 0.0).astype(np.float64)
  own = centers[np.clip(labels, 0, NUM_CLASSES - 1)]
  want = w[:, None] * (features - own) / w.sum()
  np.testing.assert_allclose(
      grad, want, rtol=1e-5, atol=1e-7,
      err_msg='d center_loss / d x_i must be w_i (x_i - c_yi) / sum w (Eq. 3 '
      'with the mean).')


def test_out_of_range_label_gets_zero_feature_gradient(feature_gradient):
  grad, _, _, _ = feature_gradient
  np.testing.assert_array_equal(
      grad[1], np.zeros(DIM),
      err_msg='An example with an out-of-range label received a gradient.')


def test_center_loss_gradient_to_centers_is_exactly_zero():
  features, centers = random_batch(seed=3)
  grad = jax.grad(loss_lib.center_loss, argnums=2)(
      features, LABELS, jnp.asarray(centers), WEIGHTS)
  np.testing.assert_array_equal(
      grad, np.zeros_like(centers),
      err_msg='Centers got a gradient from center_loss; they must move by '
      'Eq. 4 only (stop_gradient missing).')


def test_update_centers_passes_no_gradient_to_features():
  features, centers = random_batch(seed=4)
  grad = jax.grad(
      lambda x: jnp.sum(update(centers, x, LABELS, alpha=0.5)))(
          jnp.asarray(features))
  np.testing.assert_array_equal(
      grad, np.zeros_like(features),
      err_msg='update_centers leaked a gradient into the features.')


# ---------------------------------------------------------------------------
# Mixed precision.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def bfloat16_batch():
  """(bf16 features of large values, float32 centers)."""
  features, centers = random_batch(seed=5)
  # Large values: bf16 arithmetic would be off.
  return jnp.asarray(features * 10.0, jnp.bfloat16), centers


def test_center_loss_of_bfloat16_features_is_float32(bfloat16_batch):
  features_bf16, centers = bfloat16_batch
  got = loss_lib.center_loss(features_bf16, LABELS, centers, WEIGHTS)
  assert got.dtype == jnp.float32, f'loss dtype is {got.dtype}, not float32.'


def test_center_loss_of_bfloat16_features_is_computed_in_float32(
    bfloat16_batch):
  features_bf16, centers = bfloat16_batch
  got = loss_lib.center_loss(features_bf16, LABELS, centers, WEIGHTS)
  # The f32 loss of the bf16-rounded values: only the input is rounded.
  want = reference_center_loss(np.asarray(features_bf16, np.float32), LABELS,
                               centers, WEIGHTS)
  np.testing.assert_allclose(
      got, want, rtol=1e-6,
      err_msg='center_loss of bf16 features is not computed in float32.')


def test_update_with_bfloat16_features_keeps_float32_centers(bfloat16_batch):
  features_bf16, centers = bfloat16_batch
  got = update(centers, features_bf16, LABELS, alpha=0.5, weights=WEIGHTS)
  assert got.dtype == jnp.float32, (
      f'update_centers turned float32 centers into {got.dtype}.')


def test_update_with_bfloat16_features_is_computed_in_float32(bfloat16_batch):
  features_bf16, centers = bfloat16_batch
  got = update(centers, features_bf16, LABELS, alpha=0.5, weights=WEIGHTS)
  want = reference_update_centers(
      centers, np.asarray(features_bf16, np.float32), LABELS, 0.5, WEIGHTS)
  np.testing.assert_allclose(
      got, want, rtol=1e-6, atol=1e-6,
      err_msg='update_centers with bf16 features is not computed in float32.')


# ---------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------

_B = 4  # Batch of the validation cases.

# name: (features, labels, centers, weights, error type, text in the message).
_BAD_INPUTS = {
    'features_3d': (((_B, DIM, 1), jnp.float32), ((_B,), jnp.int32),
                    ((NUM_CLASSES, DIM), jnp.float32), None,
                    ValueError, f'({_B}, {DIM}, 1)'),
    'labels_wrong_length': (((_B, DIM), jnp.float32), ((_B + 1,), jnp.int32),
                            ((NUM_CLASSES, DIM), jnp.float32), None,
                            ValueError, f'({_B + 1},)'),
    'labels_2d': (((_B, DIM), jnp.float32), ((_B, 1), jnp.int32),
                  ((NUM_CLASSES, DIM), jnp.float32), None,
                  ValueError, f'({_B}, 1)'),
    'float_labels': (((_B, DIM), jnp.float32), ((_B,), jnp.float32),
                     ((NUM_CLASSES, DIM), jnp.float32), None,
                     TypeError, 'float32'),
    'centers_other_dim': (((_B, DIM), jnp.float32), ((_B,), jnp.int32),
                          ((NUM_CLASSES, DIM + 1), jnp.float32), None,
                          ValueError, f'({NUM_CLASSES}, {DIM + 1})'),
    'weights_wrong_shape': (((_B, DIM), jnp.float32), ((_B,), jnp.int32),
                            ((NUM_CLASSES, DIM), jnp.float32),
                            ((_B - 1,), jnp.float32),
                            ValueError, f'({_B - 1},)'),
}


def _loss_fn(features, labels, centers, weights):
  return loss_lib.center_loss(features, labels, centers, weights)


def _update_fn(features, labels, centers, weights):
  return loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                 weights=weights)


@pytest.mark.parametrize('fn', [_loss_fn, _update_fn],
                         ids=['center_loss', 'update_centers'])
@pytest.mark.parametrize('case', sorted(_BAD_INPUTS))
def test_bad_input_raises_eagerly_naming_what_is_wrong(case, fn):
  *specs, error, text = _BAD_INPUTS[case]
  concrete = [None if s is None else jnp.zeros(*s) for s in specs]
  with pytest.raises(error, match=re.escape(text)):
    fn(*concrete)


@pytest.mark.parametrize('fn', [_loss_fn, _update_fn],
                         ids=['center_loss', 'update_centers'])
@pytest.mark.parametrize('case', sorted(_BAD_INPUTS))
def test_bad_input_raises_at_trace_time_naming_what_is_wrong(case, fn):
  *specs, error, text = _BAD_INPUTS[case]
  abstract = [None if s is None else jax.ShapeDtypeStruct(*s) for s in specs]
  # Lowering abstract values proves the check runs at trace time, under jit.
  with pytest.raises(error, match=re.escape(text)):
    jax.jit(fn).lower(*abstract)


@pytest.mark.parametrize('alpha', [-1.0, 1.5])
def test_alpha_outside_the_unit_interval_is_rejected(alpha):
  features, centers = random_batch()
  with pytest.raises(ValueError, match=rf'alpha .* \[0, 1\].*got {alpha}'):
    loss_lib.update_centers(centers, features, LABELS, alpha=alpha)


def test_unknown_update_rule_is_rejected():
  features, centers = random_batch()
  with pytest.raises(ValueError, match=r"rule .*'paper', 'ema'.*'adam'"):
    loss_lib.update_centers(centers, features, LABELS, alpha=0.3,
                            rule='adam')


_NEGATIVE_WEIGHTS = np.array([1.0, -3.5, 1.0, 1.0], np.float32)


def test_center_loss_rejects_concrete_negative_weights():
  features, centers = random_batch()
  with pytest.raises(ValueError, match=r'non-negative.*-3.5 at index 1'):
    loss_lib.center_loss(features[:4], LABELS[:4], centers, _NEGATIVE_WEIGHTS)


def test_update_centers_rejects_concrete_negative_weights():
  features, centers = random_batch()
  with pytest.raises(ValueError, match='non-negative'):
    loss_lib.update_centers(centers, features[:4], LABELS[:4], alpha=0.5,
                            weights=_NEGATIVE_WEIGHTS)


def test_traced_weights_need_no_host_check():
  # Under jit the weights are traced: no host check, no cost, still runs.
  features, centers = random_batch()
  ok = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
  assert np.isfinite(jax.jit(loss_lib.center_loss)(features[:4], LABELS[:4],
                                                   centers, ok))


def test_centers_without_a_class_are_rejected():
  features, _ = random_batch()
  with pytest.raises(ValueError, match=rf'num_classes >= 1.*\(0, {DIM}\)'):
    loss_lib.center_loss(features, LABELS, jnp.zeros((0, DIM)))


def test_center_loss_takes_python_lists():
  features, centers = random_batch()
  as_lists = loss_lib.center_loss(features.tolist(), LABELS.tolist(), centers)
  np.testing.assert_allclose(
      as_lists, loss_lib.center_loss(features, LABELS, centers), rtol=1e-6)


@pytest.mark.slow  # Eager: op-by-op dispatch compiles each of the update's ops.
def test_update_centers_takes_python_lists():
  # Eager, as lists come from a prompt; 4 rows keep the eager scan short.
  features, centers = random_batch()
  np.testing.assert_allclose(
      loss_lib.update_centers(centers, features[:4].tolist(),
                              LABELS[:4].tolist(), alpha=0.5),
      loss_lib.update_centers(centers, features[:4], LABELS[:4], alpha=0.5),
      rtol=1e-6)


# ---------------------------------------------------------------------------
# Out-of-range labels and padding.
# ---------------------------------------------------------------------------

VALID_LABELS = np.array([2, 5, 2, 3, 5, 2], np.int32)
VALID_WEIGHTS = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 1.0], np.float32)
# -1, NUM_CLASSES and NUM_CLASSES + 5 with weight 1; NUM_CLASSES + 1 with 0.
INVALID_LABELS = np.array([-1, NUM_CLASSES, NUM_CLASSES + 5, NUM_CLASSES + 1],
                          np.int32)
INVALID_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.0], np.float32)


@pytest.fixture(scope='module', params=[False, True],
                ids=['unit', 'weighted'])
def with_invalid_examples(request):
  """VALID_LABELS interleaved with INVALID_LABELS, and the valid rows alone:
  {'mixed': (features, labels, weights), 'valid': (...), 'centers': ...}."""
  labels = np.concatenate([VALID_LABELS, INVALID_LABELS])
  weights = np.concatenate([VALID_WEIGHTS, INVALID_WEIGHTS])
  order = np.random.default_rng(0).permutation(len(labels))
  features, centers = dyadic_batch(labels)
  valid = (labels >= 0) & (labels < NUM_CLASSES)
  if not request.param:
    weights = None
  pick = lambda rows: (features[rows], labels[rows],
                       None if weights is None else weights[rows])
  return {'mixed': pick(order), 'valid': pick(valid), 'centers': centers}


def test_out_of_range_labels_do_not_change_the_loss(with_invalid_examples):
  centers = with_invalid_examples['centers']
  x, y, w = with_invalid_examples['mixed']
  got = loss_lib.center_loss(x, y, centers, w)
  x, y, w = with_invalid_examples['valid']
  want = loss_lib.center_loss(x, y, centers, w)
  np.testing.assert_allclose(
      got, want, rtol=1e-6,
      err_msg='Out-of-range labels changed the center loss or its normaliser.')


def test_out_of_range_labels_do_not_change_the_update(with_invalid_examples):
  centers = with_invalid_examples['centers']
  x, y, w = with_invalid_examples['mixed']
  got = update(centers, x, y, alpha=0.5, weights=w)
  x, y, w = with_invalid_examples['valid']
  want = update(centers, x, y, alpha=0.5, weights=w)
  # Dyadic data makes every per-class sum exact, so equality is exact.
  np.testing.assert_array_equal(
      got, want,
      err_msg='Out-of-range labels moved a center (clip or wrap-around?).')


def test_out_of_range_labels_do_not_move_the_edge_classes(
    with_invalid_examples):
  centers = with_invalid_examples['centers']
  x, y, w = with_invalid_examples['mixed']
  got = update(centers, x, y, alpha=0.5, weights=w)
  for j in (0, NUM_CLASSES - 1):  # Where clip(-1) and clip(C + k) would land.
    np.testing.assert_array_equal(
        got[j], centers[j], err_msg=f'Absent class {j} moved.')


_NO_WEIGHT = np.zeros(len(LABELS), np.float32)


@pytest.fixture(scope='module')
def all_padding_loss():
  """(loss, feature gradient) of a batch whose weights are all 0."""
  features, centers = random_batch(seed=7)
  value, grad = jax.value_and_grad(loss_lib.center_loss)(
      jnp.asarray(features), LABELS, centers, _NO_WEIGHT)
  return value, grad


def test_all_padding_batch_has_zero_loss(all_padding_loss):
  value, _ = all_padding_loss
  assert not np.isnan(value), 'All-padding batch gives a NaN loss.'
  assert float(value) == 0.0, f'All-padding batch gives loss {value}, not 0.'


def test_all_padding_batch_has_zero_gradient(all_padding_loss):
  _, grad = all_padding_loss
  np.testing.assert_array_equal(
      grad, np.zeros((len(LABELS), DIM)),
      err_msg='All-padding batch gives a non-zero (or NaN) gradient.')


def test_all_padding_batch_moves_no_center():
  features, centers = random_batch(seed=7)
  np.testing.assert_array_equal(
      update(centers, features, LABELS, alpha=0.5, weights=_NO_WEIGHT),
      centers, err_msg='An all-padding batch moved centers.')


def test_batch_of_only_out_of_range_labels_has_zero_loss():
  features, centers = random_batch(seed=8)
  labels = np.full(len(LABELS), NUM_CLASSES, np.int32)
  value = loss_lib.center_loss(features, labels, centers)
  assert float(value) == 0.0, f'Got loss {value} for a batch of invalid labels.'


def test_uint8_labels_move_the_centers_as_int32_labels_do():
  # num_classes + batch > 256: the out-of-bounds rows num_classes + i of
  # the scatter would wrap onto real classes in uint8.
  num_classes, batch = 250, 16
  labels = np.ones(batch, np.uint8)  # Only class 1 is present.
  features, _ = dyadic_batch(labels, dim=2)
  centers = jnp.zeros((num_classes, 2), jnp.float32)
  got = update(centers, features, labels, alpha=0.5)
  want = update(centers, features, labels.astype(np.int32), alpha=0.5)
  np.testing.assert_array_equal(
      got, want, err_msg='uint8 labels moved absent classes\' centers.')


# Row 1: weight 0; row 2: invalid label. 0 * NaN is NaN: masked rows must be
# selected away, not multiplied.
NAN_FEATURES = np.array([[1.0, 1.0], [np.nan, np.inf], [np.nan, np.nan]],
                        np.float32)
NAN_LABELS = np.array([0, 0, 7], np.int32)
NAN_WEIGHTS = np.array([1.0, 0.0, 1.0], np.float32)
NAN_CENTERS = np.zeros((2, 2), np.float32)


def _masked_nan_loss(features):
  return loss_lib.center_loss(features, NAN_LABELS, NAN_CENTERS, NAN_WEIGHTS)


def test_non_finite_masked_rows_do_not_reach_the_loss():
  assert float(_masked_nan_loss(NAN_FEATURES)) == 1.0


def test_non_finite_masked_rows_do_not_reach_the_gradient():
  grad = jax.grad(_masked_nan_loss)(NAN_FEATURES)
  np.testing.assert_array_equal(grad, [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])


def test_non_finite_masked_rows_do_not_reach_the_update():
  updated = update(NAN_CENTERS, NAN_FEATURES, NAN_LABELS, alpha=0.5,
                   weights=NAN_WEIGHTS)
  np.testing.assert_array_equal(updated, [[0.25, 0.25], [0.0, 0.0]])


# ---------------------------------------------------------------------------
# The cosine form and the EMA rule.
# ---------------------------------------------------------------------------


def _unit(x):
  return np.asarray(x) / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosine_center_loss_is_one_minus_the_cosine():
  features, centers = random_batch(seed=9)
  cosines = np.sum(_unit(features) * _unit(centers[LABELS]), -1)
  loss = loss_lib.center_loss(features, LABELS, centers, normalize=True)
  np.testing.assert_allclose(loss, np.mean(1.0 - cosines), rtol=1e-5)


def test_cosine_center_loss_is_scale_free():
  features, centers = random_batch(seed=9)
  np.testing.assert_allclose(
      loss_lib.center_loss(10.0 * features, LABELS, 3.0 * centers,
                           normalize=True),
      loss_lib.center_loss(features, LABELS, centers, normalize=True),
      rtol=1e-5)


def test_cosine_center_loss_gradient_has_no_radial_part():
  # The gradient is tangent to the sphere: growing a feature changes
  # nothing, so it has no radial component.
  features, centers = random_batch(seed=9)
  grad = jax.grad(lambda x: loss_lib.center_loss(x, LABELS, centers,
                                                 normalize=True))(features)
  np.testing.assert_allclose(np.sum(grad * features, -1), 0.0, atol=1e-6)


@pytest.fixture(scope='module')
def cosine_update():
  """(unit centers, their cosine update by 5 x features, Eq. 4 of the
  unit features) under WEIGHTS."""
  features, centers = random_batch(seed=10)
  unit = loss_lib.l2_normalize(centers)
  new = update(unit, 5.0 * features, LABELS, alpha=0.5, weights=WEIGHTS,
               normalize=True)
  raw = update(unit, loss_lib.l2_normalize(features), LABELS, alpha=0.5,
               weights=WEIGHTS)
  return np.asarray(unit), np.asarray(new), np.asarray(raw)


def test_cosine_update_keeps_moved_centers_on_the_sphere(cosine_update):
  _, new, _ = cosine_update
  np.testing.assert_allclose(
      np.linalg.norm(new[list(WEIGHTED_PRESENT)], axis=-1), 1.0, rtol=1e-6)


def test_cosine_update_leaves_absent_classes(cosine_update):
  unit, new, _ = cosine_update
  np.testing.assert_array_equal(new[list(ABSENT)], unit[list(ABSENT)])


def test_cosine_update_is_eq4_of_unit_features_back_on_the_sphere(
    cosine_update):
  _, new, raw = cosine_update
  moved = list(WEIGHTED_PRESENT)
  np.testing.assert_allclose(new[moved], loss_lib.l2_normalize(raw[moved]),
                             rtol=1e-6, atol=1e-7)


def test_ema_rule_moves_each_center_alpha_of_the_way_to_its_batch_mean():
  features, centers = random_batch(seed=11)
  alpha = 0.3
  new = update(centers, features, LABELS, alpha=alpha, weights=WEIGHTS,
               rule='ema')
  for j in WEIGHTED_PRESENT:
    rows = LABELS == j
    w = WEIGHTS[rows]
    mean = np.sum(w[:, None] * features[rows], 0) / np.sum(w)
    np.testing.assert_allclose(
        new[j], centers[j] + alpha * (mean - centers[j]), rtol=1e-5,
        atol=1e-6)


# ---------------------------------------------------------------------------
# Convergence.
# ---------------------------------------------------------------------------


def test_repeated_updates_converge_to_the_class_means():
  grid = np.arange(4, dtype=np.float32)
  means = np.stack(np.meshgrid(grid, grid), -1).reshape(16, 2)  # 4x4 grid.
  rng = np.random.default_rng(0)
  steps, batch = 60, 256
  labels = rng.integers(0, 16, (steps, batch)).astype(np.int32)
  features = (means[labels] + 0.1 * rng.normal(size=(steps, batch, 2))
              ).astype(np.float32)

  @jax.jit
  def run(centers, features, labels):
    def step(centers, batch):
      return loss_lib.update_centers(centers, *batch, alpha=0.5), None
    return jax.lax.scan(step, centers, (features, labels))[0]

  centers = np.asarray(run(jnp.zeros((16, 2), jnp.float32), features, labels))
  errors = np.linalg.norm(centers - means, axis=-1)
  assert errors.max() < 0.05, (
      f'Centers did not converge to their class means: distances {errors}.')


# ---------------------------------------------------------------------------
# Data parallelism: jax.shard_map (default check_vma=True) and jax.pmap.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def data_parallel_batch():
  """(mesh, centers, features, labels): 4 dyadic rows per device."""
  mesh = jax.make_mesh((jax.device_count(),), ('batch',))
  labels = random_labels(12, 4 * jax.device_count())
  features, centers = dyadic_batch(labels, seed=12)
  return mesh, centers, features, labels


def _on_batch_axis(mesh, *arrays):
  return [jax.device_put(a, NamedSharding(mesh, P('batch'))) for a in arrays]


def test_update_under_shard_map_equals_jit(data_parallel_batch):
  mesh, centers, features, labels = data_parallel_batch
  sharded = jax.jit(jax.shard_map(
      functools.partial(loss_lib.update_centers, alpha=0.5,
                        axis_name='batch'),
      mesh=mesh, in_specs=(P(), P('batch'), P('batch')), out_specs=P()))
  got = sharded(jax.device_put(centers, NamedSharding(mesh, P())),
                *_on_batch_axis(mesh, features, labels))
  # Dyadic data: every order of the additions gives the same bits.
  np.testing.assert_array_equal(
      got, update(centers, features, labels, alpha=0.5))


def test_update_under_pmap_equals_jit_on_every_replica(data_parallel_batch):
  _, centers, features, labels = data_parallel_batch
  n = jax.local_device_count()
  replicas = jax.pmap(
      functools.partial(loss_lib.update_centers, alpha=0.5,
                        axis_name='batch'),
      axis_name='batch', in_axes=(None, 0, 0))(
          centers, features.reshape(n, -1, DIM), labels.reshape(n, -1))
  expected = update(centers, features, labels, alpha=0.5)
  for replica in replicas:
    np.testing.assert_array_equal(replica, expected)


@pytest.fixture(scope='module')
def statistics_under_shard_map(data_parallel_batch):
  """(statistics of the sharded batch, of the whole batch on one device)."""
  mesh, _, features, labels = data_parallel_batch
  sharded = jax.jit(jax.shard_map(
      functools.partial(loss_lib.center_statistics, num_classes=NUM_CLASSES,
                        axis_name='batch'),
      mesh=mesh, in_specs=(P('batch'), P('batch')), out_specs=P()))
  return (sharded(*_on_batch_axis(mesh, features, labels)),
          statistics(features, labels, num_classes=NUM_CLASSES))


def test_feature_sums_of_replicas_add_up_under_shard_map(
    statistics_under_shard_map):
  got, expected = statistics_under_shard_map
  np.testing.assert_array_equal(got.feature_sums, expected.feature_sums)


def test_counts_of_replicas_add_up_under_shard_map(statistics_under_shard_map):
  got, expected = statistics_under_shard_map
  np.testing.assert_array_equal(got.counts, expected.counts)


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


# ---------------------------------------------------------------------------
# Cost: no num_classes-sized temporaries; in-place update when donated.
# ---------------------------------------------------------------------------

_MANY_CLASSES, _COST_DIM, _COST_BATCH = 100_000, 8, 16


def _num_classes_sized_ops(hlo_text, num_classes=_MANY_CLASSES,
                           dim=_COST_DIM):
  """HLO instructions that make a num_classes-sized array other than in place.

  Allowed: the (num_classes, dim) centers as parameters, scatters into them
  and fusions whose root is such a scatter (XLA runs those in place on a
  donated buffer), and tuple references. Anything else with a dimension
  num_classes (a copy, a one-hot, a `[batch, C]` distance matrix, a `[C]`
  count vector) is returned as a violation.
  """
  violations = []
  for line, results, in_place in hlo_stats.ops_making(
      hlo_text, lambda dims: num_classes in dims):
    other_shape = any(num_classes in dims and dims != (num_classes, dim)
                      for _, dims in results)
    if other_shape or not in_place:
      violations.append(line[:160])
  return violations


def _abstract_inputs():
  return dict(
      centers=jax.ShapeDtypeStruct((_MANY_CLASSES, _COST_DIM), jnp.float32),
      features=jax.ShapeDtypeStruct((_COST_BATCH, _COST_DIM), jnp.float32),
      labels=jax.ShapeDtypeStruct((_COST_BATCH,), jnp.int32),
      weights=jax.ShapeDtypeStruct((_COST_BATCH,), jnp.float32))


def _update_fn_abstract(centers, features, labels, weights):
  return loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                 weights=weights)


def _naive_update_with_one_hot(centers, features, labels, weights):
  """Eq. 4 the costly way, to show the HLO check catches it."""
  one_hot = jax.nn.one_hot(labels, centers.shape[0]) * weights[:, None]
  counts = one_hot.sum(0)
  sums = one_hot.T @ features
  return centers + 0.5 * (sums - counts[:, None] * centers) / (
      1.0 + counts[:, None])


@functools.lru_cache(maxsize=None)
def _compiled_text(fn, donate):
  inputs = _abstract_inputs()
  jitted = jax.jit(fn, donate_argnums=0 if donate else ())
  return jitted.lower(inputs['centers'], inputs['features'], inputs['labels'],
                      inputs['weights']).compile().as_text()


def test_hlo_check_flags_a_one_hot_implementation():
  violations = _num_classes_sized_ops(
      _compiled_text(_naive_update_with_one_hot, donate=True))
  assert any(f'[{_COST_BATCH},{_MANY_CLASSES}]' in v for v in violations), (
      'The HLO check missed the batch x num_classes one-hot; it cannot protect '
      f'update_centers. Violations found: {violations}')


def test_update_centers_compiles_without_num_classes_sized_temporaries():
  violations = _num_classes_sized_ops(
      _compiled_text(_update_fn_abstract, donate=True))
  assert not violations, (
      'update_centers (donated centers) materialises arrays of size '
      f'num_classes={_MANY_CLASSES} besides its in-place scatter: {violations}')


def test_update_centers_jaxpr_has_no_num_classes_sized_intermediates():
  inputs = _abstract_inputs()
  jaxpr = jax.make_jaxpr(_update_fn_abstract)(**inputs).jaxpr
  offenders = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        if _MANY_CLASSES in getattr(var.aval, 'shape', ()) and (
            eqn.primitive.name != 'scatter'):
          offenders.append(f'{eqn.primitive.name}: {var.aval}')
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr)
  assert not offenders, (
      f'update_centers builds num_classes-sized intermediates: {offenders}')


def _loss_then_update(centers, features, labels, weights, axis_name=None):
  """Algorithm 1 in one program: the loss reads c^t, Eq. 4 writes c^t+1."""
  return (loss_lib.center_loss(features, labels, centers, weights),
          loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                  weights=weights, axis_name=axis_name))


@pytest.mark.parametrize('mode', ['jit', 'shard_map'])
def test_loss_and_update_in_one_donated_step_do_not_copy_centers(mode):
  # A train step (and the Flax modules) read the centers for the loss and
  # scatter into them for Eq. 4. If the scatter does not depend on that read,
  # XLA must finish the read first and copies all (C, D) centers to do so.
  inputs = _abstract_inputs()
  args = [inputs[k] for k in ('centers', 'features', 'labels', 'weights')]
  if mode == 'jit':
    step = jax.jit(_loss_then_update, donate_argnums=0)
  else:
    num_devices = len(jax.devices())
    mesh = jax.make_mesh((num_devices,), ('batch',))
    shardings = [NamedSharding(mesh, spec)
                 for spec in (P(), P('batch'), P('batch'), P('batch'))]
    args = [jax.ShapeDtypeStruct((a.shape[0] * (num_devices if i else 1),)
                                 + a.shape[1:], a.dtype, sharding=s)
            for i, (a, s) in enumerate(zip(args, shardings))]
    step = jax.jit(jax.shard_map(
        functools.partial(_loss_then_update, axis_name='batch'), mesh=mesh,
        in_specs=(P(),) + (P('batch'),) * 3, out_specs=P(), check_vma=False),
                   donate_argnums=0)
  text = step.lower(*args).compile().as_text()
  violations = _num_classes_sized_ops(text)
  assert not violations, (
      f'Loss + update under {mode} with donated centers materialises '
      f'num_classes-sized arrays (a copy of the centers?): {violations}')


@functools.lru_cache(maxsize=None)
def _center_loss_text():
  inputs = _abstract_inputs()
  return jax.jit(loss_lib.center_loss).lower(
      inputs['features'], inputs['labels'], inputs['centers'],
      inputs['weights']).compile().as_text()


def test_center_loss_compiles_without_num_classes_sized_temporaries():
  violations = _num_classes_sized_ops(_center_loss_text())
  assert not violations, (
      'center_loss materialises num_classes-sized arrays (a distance matrix?): '
      f'{violations}')


def test_center_loss_only_reads_the_centers():
  assert 'scatter' not in _center_loss_text(), (
      'center_loss should only read the centers.')


# JAX 0.10 prints `input_output_alias={ {}: (0, {}, may-alias) }` in the
# HloModule line: output {} (the single result) reuses parameter 0.
_ALIAS = re.compile(r'input_output_alias=\{\s*\{\}:\s*\(0,\s*\{\}')


def test_donated_centers_alias_the_output_buffer():
  donated = _compiled_text(_update_fn_abstract, donate=True)
  assert _ALIAS.search(donated), (
      'With donate_argnums=0 the centers input is not aliased to the output: '
      'the update is not in place. HLO header: '
      f'{donated.splitlines()[0][:300]}')


def test_alias_check_finds_no_alias_without_donation():
  not_donated = _compiled_text(_update_fn_abstract, donate=False)
  assert not _ALIAS.search(not_donated), (
      'Alias found without donation: the alias check cannot fail.')


def test_hlo_check_notices_the_copy_of_undonated_centers():
  # Without donation XLA must copy the centers; the cost check sees that.
  not_donated = _compiled_text(_update_fn_abstract, donate=False)
  assert _num_classes_sized_ops(not_donated), (
      'The HLO check does not notice the copy of undonated centers.')
