"""Tests for centerloss_jax.losses.class_sharded: the losses with the classes
split over devices equal the replicated computation.

Mesh: the 8 fake CPU devices of conftest.py as ('batch', 'classes') = (2, 4)
(the reductions: 2 class shards alone).
The global batch of 16 is split over 'batch' (8 rows each) and replicated
over 'classes'; the 12 classes are split over 'classes' (3 each), classes
[3k, 3k + 3) on class shard k.

Every reference is the replicated computation on full arrays under jax.jit on
one device: `center.center_loss` / `center.update_centers` with the full
centers, `optax.softmax_cross_entropy_with_integer_labels` and `jnp.argmax`
with the full logits. Values that every class shard computes redundantly are
returned from each shard (an extra leading 'classes' axis) and each copy is
checked, so a shard that gets a wrong (say zero) gradient is caught.

The cost tests compile the sharded train step for C = 80,000 and 160,000
classes and read the collectives out of the compiled HLO.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from benchmarks import hlo_stats
from centerloss_jax import losses as loss_lib
from centerloss_jax.losses import class_sharded

BATCH_SHARDS, CLASS_SHARDS = 2, 4
GLOBAL_BATCH = 16
NUM_CLASSES = 12                       # 3 per class shard.
LOCAL_CLASSES = NUM_CLASSES // CLASS_SHARDS
DIM = 3
ALPHA = 0.5
LONE_CLASS = 7                         # Model shard 2; only in batch shard 1.
ABSENT_CLASS = 10                      # In no example: must not move.
LONE_ROWS = slice(8, 12)               # Rows of batch shard 1.

_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def mesh():
  assert len(jax.devices()) == BATCH_SHARDS * CLASS_SHARDS, (
      'conftest.py should fake 8 CPU devices.')
  return jax.make_mesh((BATCH_SHARDS, CLASS_SHARDS), ('batch', 'classes'))


def _run(fn, mesh, in_specs, out_specs, *args):
  """jit(shard_map(fn)) on `args`, placed with the shardings of `in_specs`."""
  placed = [jax.device_put(a, jax.tree.map(lambda s: NamedSharding(mesh, s),
                                           spec))
            for a, spec in zip(args, in_specs)]
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=tuple(in_specs),
                         out_specs=out_specs, check_vma=False)
  return jax.tree.map(np.asarray, jax.jit(mapped)(*placed))


def assert_each_copy_close(copies, expected, what, **tolerance):
  """Each copy along the leading axis within `tolerance` (default `_TOL`)
  of `expected`; a failure names `what` and the copy's index."""
  for index, copy in enumerate(copies):
    np.testing.assert_allclose(copy, expected, **(tolerance or _TOL),
                               err_msg=f'{what} {index}')


def _per_class_shard(x):
  """Adds a leading axis, so out_specs P('classes', ...) keeps every copy."""
  return x[None]


def global_batch(seed=0):
  """(features, labels, weights, centers) of the global batch, numpy.

  Duplicated classes, weight-0 rows, invalid labels -1 and NUM_CLASSES, a
  class present only on batch shard 1 and a class present nowhere.
  """
  rng = np.random.default_rng(seed)
  present = [c for c in range(NUM_CLASSES) if c not in (LONE_CLASS,
                                                        ABSENT_CLASS)]
  labels = rng.choice(present, size=GLOBAL_BATCH).astype(np.int32)
  weights = rng.choice([0.5, 1.0, 2.0], size=GLOBAL_BATCH).astype(np.float32)
  labels[LONE_ROWS] = LONE_CLASS
  weights[LONE_ROWS] = [1.0, 2.0, 0.0, 1.0]
  labels[[2, 3]] = labels[1]                  # Duplicates on one shard...
  labels[13] = labels[1]                      # ... and across batch shards.
  weights[4] = 0.0                            # Padding.
  labels[0] = -1                              # Invalid labels.
  labels[14] = NUM_CLASSES
  features = rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return features, labels, weights, centers


# ---------------------------------------------------------------------------
# Center loss and Eq. 4.
# ---------------------------------------------------------------------------

BATCH_SPECS = [P('batch'), P('batch'), P('batch'), P('classes')]


def test_class_shard_offset_is_axis_index_times_local_classes(mesh):
  def fn(x):
    del x
    return class_sharded.class_shard_offset(LOCAL_CLASSES, 'classes')[None]
  out = _run(fn, mesh, [P('classes')], P('classes'), np.zeros(CLASS_SHARDS))
  np.testing.assert_array_equal(out, [0, 3, 6, 9])


def test_center_distances_equal_replicated_on_every_class_shard(mesh):
  features, labels, weights, centers = global_batch()

  def fn(x, y, w, c):
    return _per_class_shard(class_sharded.class_sharded_center_loss(
        x, y, c, w, class_axis='classes', reduction='none'))

  out = _run(fn, mesh, BATCH_SPECS, P('classes', 'batch'), features, labels,
             weights, centers)
  expected = np.asarray(jax.jit(functools.partial(
      loss_lib.center_loss, reduction='none'))(
          features, labels, centers, weights))
  assert expected[LONE_ROWS][0] > 0 and expected[0] == expected[14] == 0
  assert_each_copy_close(out, expected, 'center distances on class shard')


@pytest.fixture(scope='module')
def center_distance_gradients(mesh):
  """The sharded gradients to the features (every class shard's copy) and
  to the centers shards, and the replicated feature gradient."""
  features, labels, weights, centers = global_batch()

  def fn(x, y, w, c):
    def total(x, c):
      return jnp.sum(class_sharded.class_sharded_center_loss(
          x, y, c, w, class_axis='classes', reduction='none'))
    grad_x, grad_c = jax.grad(total, argnums=(0, 1))(x, c)
    return _per_class_shard(grad_x), grad_c

  grad_x, grad_c = _run(fn, mesh, BATCH_SPECS,
                        (P('classes', 'batch'), P('classes')),
                        features, labels, weights, centers)
  expected = np.asarray(jax.jit(jax.grad(
      lambda x: jnp.sum(loss_lib.center_loss(
          x, labels, centers, weights, reduction='none'))))(features))
  return dict(grad_x=grad_x, grad_c=grad_c, expected=expected,
              batch=(features, labels, weights, centers))


def test_replicated_feature_gradient_is_eq3(center_distance_gradients):
  # Eq. 3: w_i (x_i - c_{y_i}); rows 0 and 14 (invalid) and 4 (padding): 0.
  features, labels, weights, centers = center_distance_gradients['batch']
  np.testing.assert_allclose(
      center_distance_gradients['expected'][1],
      weights[1] * (features[1] - centers[labels[1]]), **_TOL)


def test_center_distance_feature_gradient_equals_replicated_on_every_shard(
    center_distance_gradients):
  # The owner of a center and the other shards must all get the full
  # gradient.
  assert_each_copy_close(center_distance_gradients['grad_x'],
                         center_distance_gradients['expected'],
                         'feature gradient on class shard')


def test_center_distances_pass_no_gradient_to_the_centers(
    center_distance_gradients):
  np.testing.assert_array_equal(center_distance_gradients['grad_c'], 0.0)


def _sharded_update(x, y, w, c, *, batch_axis):
  return _per_class_shard(class_sharded.class_sharded_update_centers(
      c, x, y, alpha=ALPHA, weights=w, class_axis='classes',
      batch_axis=batch_axis))[None]


def _sharded_update_on_every_replica(mesh, batch_axis):
  """(batch replica, NUM_CLASSES, DIM): each replica's updated centers."""
  out = _run(functools.partial(_sharded_update, batch_axis=batch_axis), mesh,
             BATCH_SPECS, P('batch', 'classes'), *global_batch())
  return out.reshape(BATCH_SHARDS, NUM_CLASSES, DIM)


@pytest.fixture(scope='module')
def sharded_update(mesh):
  """(every batch replica's updated centers, the replicated update)."""
  features, labels, weights, centers = global_batch()
  expected = np.asarray(jax.jit(functools.partial(
      loss_lib.update_centers, alpha=ALPHA))(
          centers, features, labels, weights=weights))
  assert not np.allclose(expected[LONE_CLASS], centers[LONE_CLASS])
  return _sharded_update_on_every_replica(mesh, 'batch'), expected


def test_update_centers_equals_replicated_update_on_every_batch_replica(
    sharded_update):
  replicas, expected = sharded_update
  assert_each_copy_close(replicas, expected,
                         'updated centers on batch replica')


def test_update_centers_leaves_the_absent_class_on_every_replica(
    sharded_update):
  replicas, _ = sharded_update
  centers = global_batch()[3]
  for copy in replicas:
    np.testing.assert_array_equal(copy[ABSENT_CLASS], centers[ABSENT_CLASS])


def test_update_without_the_batch_axis_misses_other_replicas_classes(mesh):
  # The set-up detects per-replica updates: without the batch axis, batch
  # replica 0 never sees the lone class.
  per_replica = _sharded_update_on_every_replica(mesh, None)
  np.testing.assert_array_equal(per_replica[0][LONE_CLASS],
                                global_batch()[3][LONE_CLASS])


# ---------------------------------------------------------------------------
# Softmax classifier.
# ---------------------------------------------------------------------------


def _classifier_inputs(seed=1):
  features, labels, weights, _ = global_batch(seed)
  kernel = np.random.default_rng(seed).normal(
      size=(DIM, NUM_CLASSES)).astype(np.float32)
  return features, labels, weights, kernel


def _reference_ce(logits, labels):
  """optax on full logits; 0 for out-of-range labels (as the sharded CE)."""
  valid = loss_lib.valid_label_mask(labels, NUM_CLASSES)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.clip(labels, 0, NUM_CLASSES - 1))
  return jnp.where(valid, ce, 0.0)


@pytest.fixture(scope='module')
def sharded_cross_entropy(mesh):
  """The sharded CE (every class shard's copy) and its gradient to the
  logits shards, and the same from optax on the full logits."""
  features, labels, weights, kernel = _classifier_inputs()
  logits = 3.0 * features @ kernel
  logits[5, 4] = 40.0                      # A maximum far from shard 0.

  def fn(logits_shard, y, w):
    def total(logits_shard):
      ce = class_sharded.class_sharded_softmax_cross_entropy_loss(
          logits_shard, y, class_axis='classes', reduction='none')
      return jnp.sum(w * ce), ce
    grad, ce = jax.grad(total, has_aux=True)(logits_shard)
    return _per_class_shard(ce), grad

  ce, grad = _run(fn, mesh, [P('batch', 'classes'), P('batch'), P('batch')],
                  (P('classes', 'batch'), P('batch', 'classes')),
                  logits, labels, weights)
  expected_ce = np.asarray(jax.jit(_reference_ce)(logits, labels))
  expected_grad = np.asarray(jax.jit(jax.grad(
      lambda z: jnp.sum(weights * _reference_ce(z, labels))))(logits))
  assert expected_ce[0] == expected_ce[14] == 0.0
  return ce, grad, expected_ce, expected_grad


def test_cross_entropy_equals_optax_on_every_class_shard(
    sharded_cross_entropy):
  ce, _, expected_ce, _ = sharded_cross_entropy
  assert_each_copy_close(ce, expected_ce, 'cross-entropy on class shard')


def test_cross_entropy_logit_gradient_equals_optax(sharded_cross_entropy):
  _, grad, _, expected_grad = sharded_cross_entropy
  np.testing.assert_allclose(grad, expected_grad, **_TOL,
                             err_msg='gradient to the logits shards')


@pytest.fixture(scope='module')
def classifier_gradients(mesh):
  """The sharded CE's gradients to the features (every class shard's copy)
  and to the kernel (every batch replica's copy), and optax's."""
  features, labels, weights, kernel = _classifier_inputs()

  def fn(x, y, w, k):
    all_y, all_w = (jax.lax.all_gather(v, 'batch', tiled=True) for v in (y, w))

    def total(x, k):
      logits = class_sharded.class_sharded_logits(
          x, k, class_axis='classes', batch_axis='batch')
      ce = class_sharded.class_sharded_softmax_cross_entropy_loss(
          logits, all_y, class_axis='classes', reduction='none')
      return jnp.sum(all_w * ce)
    grad_x, grad_k = jax.grad(total, argnums=(0, 1))(x, k)
    return _per_class_shard(grad_x), grad_k[None]

  grad_x, grad_k = _run(
      fn, mesh, [P('batch'), P('batch'), P('batch'), P(None, 'classes')],
      (P('classes', 'batch'), P('batch', None, 'classes')),
      features, labels, weights, kernel)
  expected_x, expected_k = (np.asarray(g) for g in jax.jit(jax.grad(
      lambda x, k: jnp.sum(weights * _reference_ce(x @ k, labels)),
      argnums=(0, 1)))(features, kernel))
  return grad_x, grad_k, expected_x, expected_k


def test_cross_entropy_feature_gradient_equals_optax_on_every_class_shard(
    classifier_gradients):
  grad_x, _, expected_x, _ = classifier_gradients
  assert_each_copy_close(grad_x, expected_x, 'feature gradient, class shard')


def test_cross_entropy_kernel_gradient_is_complete_on_every_replica(
    classifier_gradients):
  # The kernel's gradient is complete on each batch replica, unreduced.
  _, grad_k, _, expected_k = classifier_gradients
  assert_each_copy_close(grad_k, expected_k, 'kernel gradient, replica')


_MARGINS = {'cosface': {'scale': 16.0, 'margin': 0.35},
            'arcface': {'scale': 16.0, 'margin': 0.5},
            'sphereface': {'margin': 4, 'blend': 1.0}}


def _reference_margin_terms(kind, x, k, labels, weights):
  """The replicated margin softmax on one device: (sum of weighted CE, CE)."""
  logits = loss_lib.margin_logits(kind, loss_lib.margin.cosine_scores(x, k),
                                  labels, x, **_MARGINS[kind])
  ce = loss_lib.softmax_cross_entropy_loss(logits, labels, weights,
                                           reduction='none')
  return jnp.sum(ce), ce


# CosFace in the fast tier; ArcFace and SphereFace compile for seconds more.
@pytest.fixture(scope='module', params=[
    pytest.param(kind, marks=() if kind == 'cosface' else pytest.mark.slow)
    for kind in sorted(_MARGINS)])
def margin_softmax(request, mesh):
  """{'got': sharded (CE, cosines, feature and kernel gradients), 'want':
  the replicated ones} of one margin kind."""
  kind = request.param
  features, labels, weights, kernel = _classifier_inputs()
  # A cosine near -1 (ArcFace's other branch) and one exactly 1.
  features[6] = -kernel[:, labels[6]]
  features[9] = kernel[:, labels[9]]

  def fn(x, y, w, k):
    all_y, all_w = (jax.lax.all_gather(v, 'batch', tiled=True) for v in (y, w))

    def total(x, k):
      cosines, logits = class_sharded.class_sharded_margin_logits(
          kind, x, k, all_y, class_axis='classes', batch_axis='batch',
          **_MARGINS[kind])
      ce = class_sharded.class_sharded_softmax_cross_entropy_loss(
          logits, all_y, all_w, class_axis='classes', reduction='none')
      return jnp.sum(ce), (ce, cosines)
    (grad_x, grad_k), (ce, cosines) = jax.grad(
        total, argnums=(0, 1), has_aux=True)(x, k)
    return _per_class_shard(ce), cosines[None], _per_class_shard(grad_x), \
        grad_k[None]

  got = _run(
      fn, mesh, [P('batch'), P('batch'), P('batch'), P(None, 'classes')],
      (P('classes', None), P('batch', None, 'classes'),
       P('classes', 'batch'), P('batch', None, 'classes')),
      features, labels, weights, kernel)
  reference = jax.jit(functools.partial(_reference_margin_terms, kind))
  _, expected_ce = reference(features, kernel, labels, weights)
  expected_x, expected_k = jax.jit(jax.grad(
      lambda *a: reference(*a)[0], argnums=(0, 1)))(features, kernel, labels,
                                                    weights)
  expected_cosines = loss_lib.margin.cosine_scores(features, kernel)
  assert expected_ce[0] == expected_ce[14] == 0.0   # Invalid labels.
  assert np.abs(expected_x).max() > 0 and np.abs(expected_k).max() > 0
  return dict(kind=kind, got=got, want=tuple(np.asarray(a) for a in (
      expected_ce, expected_cosines, expected_x, expected_k)))


def test_margin_cross_entropy_equals_replicated_on_every_class_shard(
    margin_softmax):
  assert_each_copy_close(margin_softmax['got'][0], margin_softmax['want'][0],
                         f'{margin_softmax["kind"]} CE, class shard')


def test_margin_cosines_equal_replicated_on_every_batch_replica(
    margin_softmax):
  assert_each_copy_close(margin_softmax['got'][1], margin_softmax['want'][1],
                         f'{margin_softmax["kind"]} cosines, replica')


def _assert_gradient_copies_close(margin_softmax, index, what):
  """The margin's scale makes gradients of ~10 whose float32 sums are summed
  in another order per shard, and per CPU: their absolute tolerance is
  relative to the largest gradient."""
  want = margin_softmax['want'][index]
  assert_each_copy_close(margin_softmax['got'][index], want,
                         f'{margin_softmax["kind"]} {what}', rtol=1e-5,
                         atol=1e-6 * np.abs(want).max())


def test_margin_feature_gradient_equals_replicated_on_every_class_shard(
    margin_softmax):
  _assert_gradient_copies_close(margin_softmax, 2,
                                'feature gradient, class shard')


def test_margin_kernel_gradient_equals_replicated_on_every_batch_replica(
    margin_softmax):
  _assert_gradient_copies_close(margin_softmax, 3, 'kernel gradient, replica')


def test_argmax_accuracy_matches_jnp_argmax_with_ties_and_nan(mesh):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(GLOBAL_BATCH, NUM_CLASSES)).astype(np.float32)
  labels = np.argmax(logits, axis=-1).astype(np.int32)
  logits[0, [2, 7]] = 9.0; labels[0] = 7   # Tie across shards: 2 wins.
  logits[1, [7, 11]] = 9.0; labels[1] = 7  # Tie across shards: 7 wins.
  logits[2, [6, 8]] = 9.0; labels[2] = 8   # Tie inside a shard: 6 wins.
  logits[3, 10] = np.nan; labels[3] = 10   # NaN counts as the maximum.
  logits[4, [4, 9]] = np.nan; labels[4] = 4
  logits[5, :] = -np.inf; labels[5] = 0    # All -inf: class 0.
  labels[6] = -1                           # Invalid labels: never correct.
  labels[7] = NUM_CLASSES
  labels[9] = (labels[9] + 1) % NUM_CLASSES  # A plain miss.

  def fn(logits_shard, y):
    return _per_class_shard(class_sharded.class_sharded_argmax_accuracy(
        logits_shard, y, class_axis='classes'))

  out = _run(fn, mesh, [P('batch', 'classes'), P('batch')],
             P('classes', 'batch'), logits, labels)
  expected = np.asarray(jax.jit(
      lambda z, y: jnp.argmax(z, axis=-1) == y)(logits, labels))
  np.testing.assert_array_equal(expected[:10], [0, 1, 0, 1, 1, 1, 0, 0, 1, 0])
  for shard, copy in enumerate(out):
    np.testing.assert_array_equal(copy, expected,
                                  err_msg=f'accuracy on class shard {shard}')


_UINT8_OUTPUTS = ('distances', 'centers', 'cross-entropy', 'accuracy')


@pytest.fixture(scope='module')
def int32_and_uint8_label_results(mesh):
  """{output: (with int32 labels, with uint8 labels)} beyond 256 classes."""
  # With 300 classes a uint8 comparison `label < 300` wraps to `label < 44`:
  # labels 100 and 250 would be dropped as invalid.
  num_classes = 300
  rng = np.random.default_rng(4)
  labels = rng.choice([1, 43, 100, 200, 250], size=GLOBAL_BATCH)
  features = rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)
  centers = rng.normal(size=(num_classes, DIM)).astype(np.float32)
  logits = rng.normal(size=(GLOBAL_BATCH, num_classes)).astype(np.float32)

  def fn(x, y, c, z):
    return (class_sharded.class_sharded_center_loss(
                x, y, c, class_axis='classes', reduction='none'),
            class_sharded.class_sharded_update_centers(
                c, x, y, alpha=ALPHA, class_axis='classes',
                batch_axis='batch'),
            class_sharded.class_sharded_softmax_cross_entropy_loss(
                z, y, class_axis='classes', reduction='none'),
            class_sharded.class_sharded_argmax_accuracy(
                z, y, class_axis='classes'))

  specs = [P('batch'), P('batch'), P('classes'), P('batch', 'classes')]
  out_specs = (P('batch'), P('classes'), P('batch'), P('batch'))
  wide = _run(fn, mesh, specs, out_specs, features, labels.astype(np.int32),
              centers, logits)
  narrow = _run(fn, mesh, specs, out_specs, features, labels.astype(np.uint8),
                centers, logits)
  assert np.all(wide[0] > 0) and np.all(wide[2] > 0)
  return dict(zip(_UINT8_OUTPUTS, zip(wide, narrow)))


@pytest.mark.parametrize('output', _UINT8_OUTPUTS)
def test_uint8_labels_give_the_int32_results_beyond_256_classes(
    int32_and_uint8_label_results, output):
  wide, narrow = int32_and_uint8_label_results[output]
  np.testing.assert_allclose(narrow, wide, **_TOL,
                             err_msg=f'{output}, uint8 labels')


@pytest.fixture(scope='module', params=loss_lib.REDUCTIONS)
def reduced_on_class_shards(request):
  """(sharded, replicated) center loss and CE under one reduction, on a
  2-device class mesh."""
  reduction = request.param
  features, labels, weights, centers = global_batch()
  kernel = np.random.default_rng(2).normal(
      size=(DIM, NUM_CLASSES)).astype(np.float32)
  mesh = jax.make_mesh((2,), ('classes',), devices=jax.devices()[:2])

  def per_shard(centers_shard, kernel_shard):
    logits = class_sharded.class_sharded_logits(
        features, kernel_shard, class_axis='classes')
    return (class_sharded.class_sharded_center_loss(
                features, labels, centers_shard, weights,
                class_axis='classes', reduction=reduction),
            class_sharded.class_sharded_softmax_cross_entropy_loss(
                logits, labels, weights, class_axis='classes',
                reduction=reduction))

  got = _run(per_shard, mesh, [P('classes'), P(None, 'classes')], P(),
             centers, kernel)
  want = (loss_lib.center_loss(features, labels, centers, weights,
                               reduction=reduction),
          loss_lib.softmax_cross_entropy_loss(features @ kernel, labels,
                                              weights, reduction=reduction))
  return got, want


def test_class_sharded_center_loss_reduces_as_the_replicated_one(
    reduced_on_class_shards):
  (got, _), (want, _) = reduced_on_class_shards
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_class_sharded_cross_entropy_reduces_as_the_replicated_one(
    reduced_on_class_shards):
  (_, got), (_, want) = reduced_on_class_shards
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# A tiny linear classifier with center loss: sharded vs replicated training.
# ---------------------------------------------------------------------------

IN_DIM, LR, CENTER_WEIGHT = 5, 0.5, 0.5
PARAM_SPECS = {'w_feat': P(), 'kernel': P(None, 'classes')}
STEP_IN_SPECS = (PARAM_SPECS, P('classes', None), P('batch'), P('batch'),
                 P('batch'))
STEP_OUT_SPECS = (PARAM_SPECS, P('classes', None), P())


def sharded_train_step(params, centers, x, labels, weights,
                       margin_kind=None):
  """Per device: SGD on CE + lambda * center loss, then Eq. 4 (sharded);
  with `margin_kind`, the CE of that margin softmax on cosines."""
  num_classes = centers.shape[0] * jax.lax.axis_size('classes')
  w = weights * loss_lib.valid_label_mask(labels, num_classes)
  all_labels, all_w = (jax.lax.all_gather(v, 'batch', tiled=True)
                       for v in (labels, w))
  total_weight = jnp.maximum(jnp.sum(all_w), 1e-12)

  def loss_fn(params):
    features = x @ params['w_feat']
    if margin_kind is None:
      logits = class_sharded.class_sharded_logits(
          features, params['kernel'], class_axis='classes', batch_axis='batch')
    else:
      _, logits = class_sharded.class_sharded_margin_logits(
          margin_kind, features, params['kernel'], all_labels,
          class_axis='classes', batch_axis='batch')
    ce = jnp.sum(all_w * class_sharded.class_sharded_softmax_cross_entropy_loss(
        logits, all_labels, class_axis='classes',
        reduction='none'))                                # Global batch.
    center = jnp.sum(class_sharded.class_sharded_center_loss(
        features, labels, centers, w, class_axis='classes',
        reduction='none'))                                # This replica's.
    return (ce + CENTER_WEIGHT * center) / total_weight, (features, ce, center)

  grads, (features, ce, center) = jax.grad(loss_fn, has_aux=True)(params)
  # The trunk's gradient is summed over batch replicas; the kernel's is
  # already complete on each (see sharded_logits).
  grads['w_feat'] = jax.lax.psum(grads['w_feat'], 'batch')
  loss = (ce + CENTER_WEIGHT * jax.lax.psum(center, 'batch')) / total_weight
  new_centers = class_sharded.class_sharded_update_centers(
      centers, features, labels, alpha=ALPHA, weights=w, class_axis='classes',
      batch_axis='batch')
  params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
  return params, new_centers, loss


def reference_train_step(params, centers, x, labels, weights):
  """The same step on one device with full centers, kernel and logits."""
  num_classes = centers.shape[0]
  w = weights * loss_lib.valid_label_mask(labels, num_classes)
  total_weight = jnp.maximum(jnp.sum(w), 1e-12)

  def loss_fn(params):
    features = x @ params['w_feat']
    ce = optax.softmax_cross_entropy_with_integer_labels(
        features @ params['kernel'], jnp.clip(labels, 0, num_classes - 1))
    center = jnp.sum(loss_lib.center_loss(features, labels, centers, w,
                                          reduction='none'))
    return (jnp.sum(w * ce) + CENTER_WEIGHT * center) / total_weight, features

  (loss, features), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  new_centers = loss_lib.update_centers(centers, features, labels,
                                        alpha=ALPHA, weights=w)
  params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
  return params, new_centers, loss


@pytest.fixture(scope='module')
def three_training_steps(mesh):
  """{'losses', 'params', 'centers'} after 3 sharded steps, and 'reference':
  the same from 3 replicated steps."""
  rng = np.random.default_rng(3)
  params = {
      'w_feat': rng.normal(size=(IN_DIM, DIM)).astype(np.float32),
      'kernel': rng.normal(size=(DIM, NUM_CLASSES)).astype(np.float32)}
  centers = np.zeros((NUM_CLASSES, DIM), np.float32)
  batches = []
  for step in range(3):
    _, labels, weights, _ = global_batch(seed=10 + step)
    x = rng.normal(size=(GLOBAL_BATCH, IN_DIM)).astype(np.float32)
    batches.append((x, labels, weights))

  ref_step = jax.jit(reference_train_step)
  ref = (params, centers)
  ref_losses = []
  for batch in batches:
    *ref, loss = ref_step(*ref, *batch)
    ref_losses.append(float(loss))

  to_mesh = lambda tree, specs: jax.device_put(
      tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  step = jax.jit(jax.shard_map(
      sharded_train_step, mesh=mesh, in_specs=STEP_IN_SPECS,
      out_specs=STEP_OUT_SPECS, check_vma=False), donate_argnums=(0, 1))
  state = (to_mesh(params, PARAM_SPECS), to_mesh(centers, P('classes', None)))
  losses = []
  for batch in batches:
    *state, loss = step(*state, *to_mesh(batch, STEP_IN_SPECS[2:]))
    losses.append(float(loss))
  return dict(losses=losses, params=state[0], centers=state[1],
              reference=dict(losses=ref_losses, params=ref[0],
                             centers=ref[1]))


def test_sharded_training_losses_equal_replicated(three_training_steps):
  np.testing.assert_allclose(three_training_steps['losses'],
                             three_training_steps['reference']['losses'],
                             **_TOL)


def test_sharded_training_centers_equal_replicated(three_training_steps):
  reference = three_training_steps['reference']['centers']
  assert not np.allclose(reference, 0.0), 'Set-up: the centers should move.'
  np.testing.assert_allclose(three_training_steps['centers'], reference,
                             **_TOL, err_msg='centers after 3 steps')


@pytest.mark.parametrize('name', ['w_feat', 'kernel'])
def test_sharded_training_params_equal_replicated(three_training_steps,
                                                  name):
  np.testing.assert_allclose(
      three_training_steps['params'][name],
      three_training_steps['reference']['params'][name], **_TOL,
      err_msg=f'{name} after 3 steps')


@pytest.mark.parametrize('name', ['w_feat', 'kernel'])
def test_replicas_of_a_parameter_block_stay_identical(three_training_steps,
                                                      name):
  by_index = {}
  for shard in three_training_steps['params'][name].addressable_shards:
    by_index.setdefault(str(shard.index), []).append(np.asarray(shard.data))
  for index, copies in by_index.items():
    for copy in copies[1:]:
      np.testing.assert_array_equal(
          copy, copies[0], err_msg=f'{name}{index}: replicas differ')


# ---------------------------------------------------------------------------
# Cost: communication independent of the number of classes; no copies.
# ---------------------------------------------------------------------------

_BIG_CLASSES = (80_000, 160_000)
_COST_DIM, _COST_IN_DIM = 16, 8



def _class_sized(found, num_classes):
  """Collectives with an operand or result dimension >= num_classes / 4."""
  return [(opcode, results, operands) for opcode, results, operands in found
          if any(d >= num_classes // CLASS_SHARDS
                 for _, dims in results + operands for d in dims)]


def _abstract_step_args(mesh, num_classes):
  def spec(shape, dtype, partition):
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=NamedSharding(mesh, partition))
  params = {
      'w_feat': spec((_COST_IN_DIM, _COST_DIM), jnp.float32, P()),
      'kernel': spec((_COST_DIM, num_classes), jnp.float32, P(None, 'classes'))}
  return (params,
          spec((num_classes, _COST_DIM), jnp.float32, P('classes', None)),
          spec((GLOBAL_BATCH, _COST_IN_DIM), jnp.float32, P('batch')),
          spec((GLOBAL_BATCH,), jnp.int32, P('batch')),
          spec((GLOBAL_BATCH,), jnp.float32, P('batch')))


@functools.lru_cache(maxsize=None)
def _compiled_step_text(num_classes, step_fn=sharded_train_step,
                        donate=(0, 1)):
  mesh = jax.make_mesh((BATCH_SHARDS, CLASS_SHARDS), ('batch', 'classes'))
  step = jax.jit(jax.shard_map(
      step_fn, mesh=mesh, in_specs=STEP_IN_SPECS, out_specs=STEP_OUT_SPECS,
      check_vma=False), donate_argnums=donate)
  return step.lower(*_abstract_step_args(mesh, num_classes)).compile(
  ).as_text()


# Module-level, so that `_compiled_step_text`'s cache recognises it.
arcface_train_step = functools.partial(sharded_train_step,
                                       margin_kind='arcface')


# Each (step, C) compiles for a second or two: the fast tier takes the
# softmax step at the smaller C.
_STEPS = pytest.mark.parametrize('step_fn', [
    pytest.param(sharded_train_step, id='softmax'),
    pytest.param(arcface_train_step, id='arcface', marks=pytest.mark.slow)])


@_STEPS
@pytest.mark.parametrize('num_classes', [
    _BIG_CLASSES[0], pytest.param(_BIG_CLASSES[1], marks=pytest.mark.slow)])
def test_train_step_collectives_move_no_class_sized_arrays(step_fn,
                                                           num_classes):
  found = hlo_stats.collectives(_compiled_step_text(num_classes, step_fn))
  assert found, 'No collectives parsed: the HLO parser is broken.'
  class_sized = _class_sized(found, num_classes)
  assert not class_sized, (
      f'At C={num_classes}, collectives move num_classes-sized arrays: '
      f'{class_sized}')


@_STEPS
@pytest.mark.slow  # Compiles at both numbers of classes.
def test_train_step_collectives_do_not_grow_with_num_classes(step_fn):
  sizes = {}
  for num_classes in _BIG_CLASSES:
    found = hlo_stats.collectives(_compiled_step_text(num_classes, step_fn))
    sizes[num_classes] = (hlo_stats.collective_bytes(found), sorted(
        (o, r) for o, r, _ in found))
  (bytes_a, ops_a), (bytes_b, ops_b) = sizes.values()
  assert (bytes_a, ops_a) == (bytes_b, ops_b), (
      f'Collectives differ between C={_BIG_CLASSES[0]} ({bytes_a} bytes: '
      f'{ops_a}) and C={_BIG_CLASSES[1]} ({bytes_b} bytes: {ops_b}).')


def _gathered_logits_step(params, centers, x, labels, weights):
  """The costly way: all-gather the logits over the classes, then optax."""
  del weights
  logits = jax.lax.all_gather(x @ params['w_feat'] @ params['kernel'],
                              'classes', axis=1, tiled=True)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels))
  return params, centers, jax.lax.pmean(loss, 'batch')


def _replicated_kernel_gradient_step(params, centers, x, labels, weights):
  """Data-parallel habit: every gradient psum-ed over 'batch', kernel too."""
  del weights

  def loss_fn(params):
    logits = class_sharded.class_sharded_logits(
        x @ params['w_feat'], params['kernel'], class_axis='classes')
    return jnp.mean(class_sharded.class_sharded_softmax_cross_entropy_loss(
        logits, labels, class_axis='classes', reduction='none'))
  loss, grads = jax.value_and_grad(loss_fn)(params)
  grads = jax.lax.psum(grads, 'batch')
  params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
  return params, centers, jax.lax.pmean(loss, 'batch')


@pytest.mark.parametrize('costly_step', [_gathered_logits_step,
                                         _replicated_kernel_gradient_step])
def test_communication_check_flags_num_classes_sized_collectives(costly_step):
  num_classes = _BIG_CLASSES[0]
  found = hlo_stats.collectives(_compiled_step_text(num_classes, costly_step))
  assert _class_sized(found, num_classes), (
      f'{costly_step.__name__} moves num_classes-sized arrays, but the '
      f'communication check did not notice. Collectives: {found}')


def _centers_copies(hlo_text, local_classes, dim):
  """Non-in-place HLO ops that produce a (local_classes, dim) array."""
  return [line[:160] for line, _, in_place in hlo_stats.ops_making(
      hlo_text, lambda dims: dims == (local_classes, dim)) if not in_place]


def test_train_step_with_donated_centers_copies_no_centers_shard():
  num_classes = _BIG_CLASSES[0]
  local = num_classes // CLASS_SHARDS
  copies = _centers_copies(_compiled_step_text(num_classes), local, _COST_DIM)
  assert not copies, (
      'The sharded step copies the (C/M, D) centers shard (Eq. 4 not in '
      f'place?): {copies}')


def test_copy_check_notices_the_copy_of_undonated_centers():
  # Without donation XLA must copy the shard: the check sees it.
  num_classes = _BIG_CLASSES[0]
  undonated = _compiled_step_text(num_classes, donate=(0,))
  assert _centers_copies(undonated, num_classes // CLASS_SHARDS, _COST_DIM), (
      'The copy check does not notice the copy of undonated centers.')


# ---------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('call, error, pattern', [
    (lambda: class_sharded.class_sharded_center_loss(
        jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32), jnp.zeros((3, 2)),
        class_axis='classes', reduction='none'), ValueError, r'\(3, 2\)'),
    (lambda: class_sharded.class_sharded_update_centers(
        jnp.zeros((3, 3)), jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32),
        alpha=0.5, class_axis='classes'), ValueError, r'\(5,\)'),
    (lambda: class_sharded.class_sharded_softmax_cross_entropy_loss(
        jnp.zeros((4,)), jnp.zeros((4,), jnp.int32), class_axis='classes',
        reduction='none'),
     ValueError, r'logits_shard.*\(4,\)'),
    (lambda: class_sharded.class_sharded_softmax_cross_entropy_loss(
        jnp.zeros((4, 3)), jnp.zeros((4,)), class_axis='classes',
        reduction='none'),
     TypeError, r'labels must be integers.*float32'),
    (lambda: class_sharded.class_sharded_argmax_accuracy(
        jnp.zeros((4, 3), jnp.int32), jnp.zeros((4,), jnp.int32),
        class_axis='classes'), TypeError, r'logits_shard.*int32'),
    (lambda: class_sharded.class_sharded_logits(
        jnp.zeros((4, 3)), jnp.zeros((2, 6)), class_axis='classes'),
     ValueError, r'\(4, 3\).*\(2, 6\)'),
], ids=['centers_dim', 'labels_shape', 'logits_rank', 'float_labels',
        'int_logits', 'kernel_dim'])
def test_bad_inputs_raise_with_offending_shape_or_dtype(call, error, pattern):
  # Checked before any collective, so no mesh is needed to see the error.
  with pytest.raises(error, match=pattern):
    call()
