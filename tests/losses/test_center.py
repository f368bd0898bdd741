"""Tests for centerloss_jax.losses.center against the formulas of Wen et al. (2016).

The reference below is written straight from the paper, in float64 numpy
with explicit loops over classes, and shares no code with the library:

  Eq. 2 (weighted mean): L = 0.5 * sum_i w_i ||x_i - c_{y_i}||^2 / sum_i w_i
  Eq. 4: n_j = sum_i w_i [y_i = j],
         delta_c_j = sum_i w_i [y_i = j] (c_j - x_i) / (1 + n_j),
         c_j <- c_j - alpha * delta_c_j
"""

import functools
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo_stats
from centerloss_jax import losses as loss_lib

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


def random_batch(seed=0):
  """(features, centers) float32 for LABELS; centers non-zero, distinct."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(len(LABELS), DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return features, centers


def dyadic_batch(labels, seed=0):
  """Features and centers in multiples of 1/8: their sums are exact."""
  rng = np.random.default_rng(seed)
  features = rng.integers(-16, 16, (len(labels), DIM)).astype(np.float32) / 8
  centers = rng.integers(-16, 16, (NUM_CLASSES, DIM)).astype(np.float32) / 8
  return features, centers


# Compiled once per input signature (eager dispatch of the scan is slow); alpha
# is traced, so the four alphas share one compilation.
_jitted_update_centers = jax.jit(loss_lib.update_centers)


def update(centers, features, labels, **kwargs):
  return _jitted_update_centers(centers, features, labels, **kwargs)


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


@pytest.mark.parametrize('alpha', [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize('weighted', [False, True], ids=['unit', 'weighted'])
def test_update_centers_matches_eq4_reference(alpha, weighted):
  features, centers = random_batch(seed=1)
  weights = WEIGHTS if weighted else None
  got = np.asarray(update(centers, features, LABELS, alpha=alpha,
                          weights=weights))
  want = reference_update_centers(centers, features, LABELS, alpha, weights)
  assert got.dtype == np.float32
  moved = WEIGHTED_PRESENT if weighted else PRESENT
  for j in range(NUM_CLASSES):
    if j in moved:
      np.testing.assert_allclose(
          got[j], want[j], rtol=1e-6, atol=1e-6,
          err_msg=f'Eq. 4 update of class {j} (present in the batch) is wrong.')
      assert not np.array_equal(got[j], centers[j]), (
          f'Center of class {j} is present in the batch but did not move.')
    else:
      np.testing.assert_array_equal(
          got[j], centers[j],
          err_msg=f'Center of class {j} moved although the class has no '
          'example of non-zero weight in the batch; it must stay bit-for-bit.')


def test_update_centers_hand_computed_eq4():
  # One class, two samples at x=1 and x=3, center 0, alpha 0.5:
  # delta = ((0 - 1) + (0 - 3)) / (1 + 2) = -4/3, c_new = 0 - 0.5 * -4/3 = 2/3.
  centers = jnp.array([[0.0], [5.0]], jnp.float32)
  features = jnp.array([[1.0], [3.0]], jnp.float32)
  labels = jnp.array([0, 0], jnp.int32)
  got = update(centers, features, labels, alpha=0.5)
  np.testing.assert_allclose(
      got, [[2.0 / 3.0], [5.0]], rtol=1e-7,
      err_msg='Eq. 4 by hand: expected c_0 = 0.5 * 4/3 (the 1 + n_j '
      'normalisation), c_1 untouched.')
  # Weights 1 and 3: delta = (-1 - 9) / (1 + 4) = -2, c_new = 0.5 * 2 = 1.
  got = update(centers, features, labels, alpha=0.5,
               weights=jnp.array([1.0, 3.0]))
  np.testing.assert_allclose(
      got, [[1.0], [5.0]], rtol=1e-7,
      err_msg='Weighted Eq. 4 by hand: expected n_j = sum of weights.')


def test_center_loss_hand_computed_eq2():
  # 0.5 * (1^2 + 3^2) / 2 = 2.5 for x = 1, 3 around c = 0.
  got = loss_lib.center_loss(jnp.array([[1.0], [3.0]]), jnp.array([0, 0]),
                             jnp.zeros((2, 1)))
  np.testing.assert_allclose(got, 2.5, rtol=1e-7,
                             err_msg='Eq. 2 by hand: 0.5 * mean of 1 and 9.')


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


def test_center_loss_gradient_to_features_is_eq3_over_total_weight():
  features, centers = random_batch(seed=2)
  labels = LABELS.copy()
  labels[1] = -1  # An invalid label must get exactly zero gradient.
  grad = jax.grad(loss_lib.center_loss)(jnp.asarray(features), labels,
                                        centers, WEIGHTS)
  valid = (labels >= 0) & (labels < NUM_CLASSES)
  w = np.where(valid, WEIGHTS, 0.0).astype(np.float64)
  own = centers[np.clip(labels, 0, NUM_CLASSES - 1)]
  want = w[:, None] * (features - own) / w.sum()
  np.testing.assert_allclose(
      grad, want, rtol=1e-5, atol=1e-7,
      err_msg='d center_loss / d x_i must be w_i (x_i - c_yi) / sum w (Eq. 3 '
      'with the mean).')
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


def test_center_loss_of_bfloat16_features_is_computed_in_float32():
  features, centers = random_batch(seed=5)
  features = features * 10.0  # Large values: bf16 arithmetic would be off.
  features_bf16 = jnp.asarray(features, jnp.bfloat16)
  got = loss_lib.center_loss(features_bf16, LABELS, centers, WEIGHTS)
  assert got.dtype == jnp.float32, f'loss dtype is {got.dtype}, not float32.'
  # The f32 loss of the bf16-rounded values: only the input is rounded.
  want = reference_center_loss(np.asarray(features_bf16, np.float32), LABELS,
                               centers, WEIGHTS)
  np.testing.assert_allclose(
      got, want, rtol=1e-6,
      err_msg='center_loss of bf16 features is not computed in float32.')


def test_update_centers_with_bfloat16_features_keeps_float32_centers():
  features, centers = random_batch(seed=6)
  features_bf16 = jnp.asarray(features * 10.0, jnp.bfloat16)
  got = update(centers, features_bf16, LABELS, alpha=0.5, weights=WEIGHTS)
  assert got.dtype == jnp.float32, (
      f'update_centers turned float32 centers into {got.dtype}.')
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
def test_bad_input_raises_with_offending_shape_eagerly_and_at_trace_time(
    case, fn):
  *specs, error, text = _BAD_INPUTS[case]
  abstract = [None if s is None else jax.ShapeDtypeStruct(*s) for s in specs]
  concrete = [None if s is None else jnp.zeros(*s) for s in specs]
  with pytest.raises(error, match=re.escape(text)):
    fn(*concrete)
  # Lowering abstract values proves the check runs at trace time, under jit.
  with pytest.raises(error, match=re.escape(text)):
    jax.jit(fn).lower(*abstract)


# ---------------------------------------------------------------------------
# Out-of-range labels and padding.
# ---------------------------------------------------------------------------

VALID_LABELS = np.array([2, 5, 2, 3, 5, 2], np.int32)
VALID_WEIGHTS = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 1.0], np.float32)
# -1, NUM_CLASSES and NUM_CLASSES + 5 with weight 1; NUM_CLASSES + 1 with 0.
INVALID_LABELS = np.array([-1, NUM_CLASSES, NUM_CLASSES + 5, NUM_CLASSES + 1],
                          np.int32)
INVALID_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.0], np.float32)


def _with_invalid_examples(seed=0):
  """A batch of VALID_LABELS interleaved with INVALID_LABELS."""
  labels = np.concatenate([VALID_LABELS, INVALID_LABELS])
  weights = np.concatenate([VALID_WEIGHTS, INVALID_WEIGHTS])
  order = np.random.default_rng(seed).permutation(len(labels))
  features, centers = dyadic_batch(labels, seed=seed)
  is_valid = (labels >= 0) & (labels < NUM_CLASSES)
  return features, labels, weights, centers, order, is_valid


@pytest.mark.parametrize('weighted', [False, True], ids=['unit', 'weighted'])
def test_out_of_range_labels_do_not_change_loss_or_normaliser(weighted):
  features, labels, weights, centers, order, valid = _with_invalid_examples()
  weights = weights if weighted else None
  got = loss_lib.center_loss(features[order], labels[order], centers,
                             None if weights is None else weights[order])
  want = loss_lib.center_loss(features[valid], labels[valid], centers,
                              None if weights is None else weights[valid])
  np.testing.assert_allclose(
      got, want, rtol=1e-6,
      err_msg='Out-of-range labels changed the center loss or its normaliser.')


@pytest.mark.parametrize('weighted', [False, True], ids=['unit', 'weighted'])
def test_out_of_range_labels_move_no_center(weighted):
  features, labels, weights, centers, order, valid = _with_invalid_examples()
  weights = weights if weighted else None
  got = update(centers, features[order], labels[order], alpha=0.5,
               weights=None if weights is None else weights[order])
  want = update(centers, features[valid], labels[valid], alpha=0.5,
                weights=None if weights is None else weights[valid])
  # Dyadic data makes every per-class sum exact, so equality is exact.
  np.testing.assert_array_equal(
      got, want,
      err_msg='Out-of-range labels moved a center (clip or wrap-around?).')
  for j in (0, NUM_CLASSES - 1):  # Where clip(-1) and clip(C + k) would land.
    np.testing.assert_array_equal(
        got[j], centers[j], err_msg=f'Absent class {j} moved.')


def test_invalid_label_count_counts_out_of_range_labels_of_nonzero_weight():
  _, labels, weights, _, _, _ = _with_invalid_examples()
  assert int(loss_lib.invalid_label_count(labels, NUM_CLASSES)) == 4, (
      'Without weights every out-of-range label counts.')
  assert int(loss_lib.invalid_label_count(labels, NUM_CLASSES, weights)) == 3, (
      'An out-of-range label of weight 0 (padding) must not be counted.')


def test_all_padding_batch_has_zero_loss_and_leaves_centers_unchanged():
  features, centers = random_batch(seed=7)
  zeros = np.zeros(len(LABELS), np.float32)
  value, grad = jax.value_and_grad(loss_lib.center_loss)(
      jnp.asarray(features), LABELS, centers, zeros)
  assert not np.isnan(value), 'All-padding batch gives a NaN loss.'
  assert float(value) == 0.0, f'All-padding batch gives loss {value}, not 0.'
  np.testing.assert_array_equal(
      grad, np.zeros_like(features),
      err_msg='All-padding batch gives a non-zero (or NaN) gradient.')
  np.testing.assert_array_equal(
      update(centers, features, LABELS, alpha=0.5, weights=zeros), centers,
      err_msg='An all-padding batch moved centers.')


def test_batch_of_only_out_of_range_labels_has_zero_loss():
  features, centers = random_batch(seed=8)
  labels = np.full(len(LABELS), NUM_CLASSES, np.int32)
  value = loss_lib.center_loss(features, labels, centers)
  assert float(value) == 0.0, f'Got loss {value} for a batch of invalid labels.'


def test_update_centers_with_uint8_labels_equals_int32_labels():
  num_classes, batch = 10, 250  # num_classes + batch > 256.
  rng = np.random.default_rng(0)
  features = rng.normal(size=(batch, 2)).astype(np.float32)
  labels = np.ones(batch, np.uint8)  # Only class 1 is present.
  centers = jnp.zeros((num_classes, 2), jnp.float32)
  got = update(centers, features, labels, alpha=0.5)
  want = update(centers, features, labels.astype(np.int32), alpha=0.5)
  np.testing.assert_array_equal(
      got, want, err_msg='uint8 labels moved absent classes\' centers.')


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
# Cost: no num_classes-sized temporaries; in-place update when donated.
# ---------------------------------------------------------------------------

_MANY_CLASSES, _COST_DIM, _COST_BATCH = 100_000, 8, 16

# An HLO instruction: `[ROOT] %name = <shape> opcode(...)`.
def _num_classes_sized_ops(hlo_text, num_classes, dim):
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


def _abstract_inputs(centers_dtype=jnp.float32):
  return dict(
      centers=jax.ShapeDtypeStruct((_MANY_CLASSES, _COST_DIM), centers_dtype),
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


def _compiled_text(fn, donate):
  inputs = _abstract_inputs()
  jitted = jax.jit(fn, donate_argnums=0 if donate else ())
  return jitted.lower(inputs['centers'], inputs['features'], inputs['labels'],
                      inputs['weights']).compile().as_text()


def test_hlo_check_flags_a_one_hot_implementation():
  violations = _num_classes_sized_ops(
      _compiled_text(_naive_update_with_one_hot, donate=True), _MANY_CLASSES,
      _COST_DIM)
  assert any(f'[{_COST_BATCH},{_MANY_CLASSES}]' in v for v in violations), (
      'The HLO check missed the batch x num_classes one-hot; it cannot protect '
      f'update_centers. Violations found: {violations}')


def test_update_centers_compiles_without_num_classes_sized_temporaries():
  text = _compiled_text(_update_fn_abstract, donate=True)
  violations = _num_classes_sized_ops(text, _MANY_CLASSES, _COST_DIM)
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
    batch_spec = jax.sharding.PartitionSpec('batch')
    shardings = [jax.sharding.NamedSharding(mesh, spec) for spec in (
        jax.sharding.PartitionSpec(), batch_spec, batch_spec, batch_spec)]
    args = [jax.ShapeDtypeStruct((a.shape[0] * (num_devices if i else 1),)
                                 + a.shape[1:], a.dtype, sharding=s)
            for i, (a, s) in enumerate(zip(args, shardings))]
    step = jax.jit(jax.shard_map(
        functools.partial(_loss_then_update, axis_name='batch'), mesh=mesh,
        in_specs=(jax.sharding.PartitionSpec(),) + (batch_spec,) * 3,
        out_specs=jax.sharding.PartitionSpec(), check_vma=False),
                   donate_argnums=0)
  text = step.lower(*args).compile().as_text()
  violations = _num_classes_sized_ops(text, _MANY_CLASSES, _COST_DIM)
  assert not violations, (
      f'Loss + update under {mode} with donated centers materialises '
      f'num_classes-sized arrays (a copy of the centers?): {violations}')


def test_center_loss_compiles_without_num_classes_sized_temporaries():
  inputs = _abstract_inputs()
  text = jax.jit(loss_lib.center_loss).lower(
      inputs['features'], inputs['labels'], inputs['centers'],
      inputs['weights']).compile().as_text()
  violations = _num_classes_sized_ops(text, _MANY_CLASSES, _COST_DIM)
  assert not violations, (
      'center_loss materialises num_classes-sized arrays (a distance matrix?): '
      f'{violations}')
  assert 'scatter' not in text, 'center_loss should only read the centers.'


def test_donated_centers_alias_the_output_buffer():
  # JAX 0.10 prints `input_output_alias={ {}: (0, {}, may-alias) }` in the
  # HloModule line: output {} (the single result) reuses parameter 0.
  alias = re.compile(r'input_output_alias=\{\s*\{\}:\s*\(0,\s*\{\}')
  donated = _compiled_text(_update_fn_abstract, donate=True)
  assert alias.search(donated), (
      'With donate_argnums=0 the centers input is not aliased to the output: '
      'the update is not in place. HLO header: '
      f'{donated.splitlines()[0][:300]}')
  not_donated = _compiled_text(_update_fn_abstract, donate=False)
  assert not alias.search(not_donated), (
      'Alias found without donation: the alias check cannot fail.')
  # Without donation XLA must copy the centers; the cost check sees that.
  assert _num_classes_sized_ops(not_donated, _MANY_CLASSES, _COST_DIM), (
      'The HLO check does not notice the copy of undonated centers.')


def test_non_finite_padding_rows_leak_into_nothing():
  """0 * NaN is NaN: masked rows must be selected away, not multiplied."""
  features = jnp.array([[1.0, 1.0], [np.nan, np.inf], [np.nan, np.nan]])
  labels = jnp.array([0, 0, 7])  # Row 1: weight 0; row 2: invalid label.
  weights = jnp.array([1.0, 0.0, 1.0])
  centers = jnp.zeros((2, 2))
  loss_fn = lambda x: loss_lib.center_loss(x, labels, centers, weights)
  assert float(loss_fn(features)) == 1.0
  grad = jax.grad(loss_fn)(features)
  np.testing.assert_array_equal(grad, [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
  updated = loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                    weights=weights)
  np.testing.assert_array_equal(updated, [[0.25, 0.25], [0.0, 0.0]])
