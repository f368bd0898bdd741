"""Tests for centerloss_jax.losses.center: Eq. 2 and Eq. 4 and their variants.

`center_loss` and `update_centers` (the paper's Eq. 4, the EMA rule, the
cosine form) against float64 references of the paper's formulas
(`center_data.py`), their gradients, precision, input checks, masking of
padding and out-of-range labels, and their use under `jit`, `pmap` and
`shard_map`. The gradient-accumulation functions are tested in
`test_center_statistics.py`, the cost of the compiled programs in
`test_center_cost.py`.

Comparisons between two programs are bit-for-bit only on dyadic data (all
values multiples of 1/8), where every sum and product is exact in float32
whatever the order of the additions; elsewhere they carry a tolerance.
"""

import functools
import re

import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from centerloss_jax import losses as loss_lib
from center_data import (
    NUM_CLASSES, DIM, LABELS, WEIGHTS, PRESENT, WEIGHTED_PRESENT, ABSENT,
    reference_center_loss, reference_update_centers, random_batch,
    dyadic_batch, random_labels, update, statistics)


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
