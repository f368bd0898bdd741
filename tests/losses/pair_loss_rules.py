"""The rules every pair loss here follows, for the contrastive and the
batch-hard triplet loss tests.

`PairLossRules` is a test class without tests of its own: each loss's test
file subclasses it as `TestPairLossRules`, naming the loss's `*_loss_sums`
and `*_loss` functions (with their margins) and the key of its normaliser,
and provides a fixture `sums_and_reference`; pytest runs the rules there
against that loss. The rules: the sums match the file's numpy reference;
padding rows and invalid labels change nothing; gradients stay finite at
zero distance; the anchor/candidate split of data-parallel trainers (each
replica's slice of anchors against the all-gathered batch) adds up to the
full batch, gradient included; plain `jit` on an explicit-sharding mesh
gives the unsharded loss.
"""

import functools

import jax
import numpy as np
import pytest

P = jax.sharding.PartitionSpec


def random_batch(seed, batch=8, dim=3, num_ids=3):
  """(features, labels, weights): Gaussian features, random identities."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, dim)).astype(np.float32)
  labels = rng.integers(0, num_ids, size=batch).astype(np.int32)
  weights = rng.uniform(0.5, 2.0, size=batch).astype(np.float32)
  return features, labels, weights


def _with_junk_rows(features, labels, weights):
  """The batch plus a NaN padding row (weight 0) and an invalid label (-1)."""
  junk_features = np.array([[np.nan, np.inf, 0], [0.1, 0.2, 0.3]], np.float32)
  return (np.concatenate([features, junk_features]),
          np.concatenate([labels, np.array([1, -1], np.int32)]),
          np.concatenate([weights, np.array([0.0, 1.0], np.float32)]))


def _loss_with_sums(sums_fn):
  """`f(...) -> (sums['loss'], sums)`, for `value_and_grad(has_aux=True)`."""
  def loss_with_sums(*args):
    sums = sums_fn(*args)
    return sums['loss'], sums
  return loss_with_sums


class PairLossRules:
  """Subclass as `TestPairLossRules` with the two functions of one loss, as
  `functools.partial` objects (which a class attribute leaves unbound)."""

  # `f(anchor x, y, w, candidate x, y, w, **options) -> sums`, margin bound.
  sums = None
  # `f(x, y, w) -> mean loss`, margin bound.
  loss = None
  # The key of the sum that 'mean' divides by ('num_pairs', 'num_anchors').
  normaliser = None

  @classmethod
  def full_batch_sums(cls, features, labels, weights):
    """The sums with every row both anchor and candidate."""
    return cls.sums(features, labels, weights, features, labels, weights)

  # --- the numpy reference: a fixture of each loss's file ------------------
  # `sums_and_reference` -> (sums, (reference loss sum, reference normaliser))

  def test_loss_sum_matches_the_numpy_reference(self, sums_and_reference):
    sums, (total, _) = sums_and_reference
    np.testing.assert_allclose(sums['loss'], total, rtol=1e-5)

  def test_normaliser_matches_the_numpy_reference(self, sums_and_reference):
    sums, (_, count) = sums_and_reference
    np.testing.assert_allclose(sums[self.normaliser], count, rtol=1e-6)

  # --- padding rows and invalid labels -------------------------------------

  @pytest.fixture(scope='class')
  @classmethod
  def junk_rows(cls):
    """{'clean'/'padded': (sums, feature gradient)} of a batch without and
    with a NaN padding row and an invalid label appended."""
    batch = random_batch(3)
    sums = jax.jit(cls.full_batch_sums)
    grad = jax.jit(jax.grad(lambda *b: cls.full_batch_sums(*b)['loss']))
    return {name: (sums(*b), np.asarray(grad(*b))) for name, b in (
        ('clean', batch), ('padded', _with_junk_rows(*batch)))}

  def test_junk_rows_do_not_change_the_sums(self, junk_rows):
    (clean, _), (padded, _) = junk_rows['clean'], junk_rows['padded']
    for key in clean:
      np.testing.assert_allclose(padded[key], clean[key], rtol=1e-6,
                                 err_msg=key)

  def test_gradient_is_finite_with_junk_rows(self, junk_rows):
    _, grad = junk_rows['padded']
    assert np.all(np.isfinite(grad)), grad

  def test_junk_rows_get_zero_gradient(self, junk_rows):
    _, grad = junk_rows['padded']
    np.testing.assert_array_equal(grad[-2:], 0.0)

  def test_junk_rows_leave_the_other_rows_gradient(self, junk_rows):
    (_, clean), (_, padded) = junk_rows['clean'], junk_rows['padded']
    np.testing.assert_allclose(padded[:-2], clean, rtol=1e-5, atol=1e-6)

  # --- zero distances ------------------------------------------------------

  @pytest.fixture(scope='class')
  @classmethod
  def coincident_points(cls):
    """(loss, gradient) where rows 0 and 1 coincide with the same identity,
    rows 2 and 3 with different identities: d = 0 for a positive and for a
    negative pair."""
    features = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.5], [0.5, 0.5],
                         [0.0, 3.0]], np.float32)
    labels = np.array([0, 0, 1, 2, 2], np.int32)
    return jax.jit(jax.value_and_grad(
        lambda x: cls.full_batch_sums(x, labels, None)['loss']))(features)

  def test_loss_with_coincident_points_is_finite_and_positive(
      self, coincident_points):
    value, _ = coincident_points
    assert np.isfinite(value) and value > 0

  def test_gradient_is_finite_at_zero_distance(self, coincident_points):
    _, grad = coincident_points
    assert np.all(np.isfinite(grad)), grad

  # --- the anchor/candidate split of data-parallel trainers ----------------

  @pytest.fixture(scope='class')
  @classmethod
  def four_anchor_slices(cls):
    """{'sharded': (psum of the sums, its feature gradient) over 4
    replicas, each with its contiguous slice of anchors (a traced offset)
    against the all-gathered batch; 'full': the same on the full batch}."""
    num_devices = 4
    features, labels, weights = random_batch(6)
    weights[6] = 0.0
    mesh = jax.make_mesh((num_devices,), ('batch',),
                         devices=jax.devices()[:num_devices])

    def per_replica(x, y, w):
      gather = functools.partial(jax.lax.all_gather, axis_name='batch',
                                 tiled=True)
      offset = jax.lax.axis_index('batch') * x.shape[0]
      sums = cls.sums(x, y, w, gather(x), gather(y), gather(w),
                       anchor_offset=offset)
      return jax.lax.psum(sums, 'batch')

    sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=P('batch'),
                            out_specs=P())

    # The gradient also flows back through the all-gather.
    (_, sums), grad = jax.jit(jax.value_and_grad(
        _loss_with_sums(sharded), has_aux=True))(*jax.device_put(
            (features, labels, weights),
            jax.sharding.NamedSharding(mesh, P('batch'))))
    (_, full_sums), full_grad = jax.jit(jax.value_and_grad(
        _loss_with_sums(functools.partial(cls.full_batch_sums,
                                          labels=labels, weights=weights)),
        has_aux=True))(features)
    return {'sharded': (sums, grad), 'full': (full_sums, full_grad)}

  def test_sums_over_4_anchor_slices_equal_the_full_batch(
      self, four_anchor_slices):
    (got, _), (expected, _) = (four_anchor_slices['sharded'],
                               four_anchor_slices['full'])
    for key in expected:
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5,
                                 err_msg=key)
    assert float(expected['loss']) > 0

  def test_gradient_over_4_anchor_slices_equals_the_full_batch(
      self, four_anchor_slices):
    (_, grad), (_, expected) = (four_anchor_slices['sharded'],
                                four_anchor_slices['full'])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)

  # --- plain jit on an explicit-sharding mesh ------------------------------

  def test_jit_on_an_explicit_sharding_mesh_equals_unsharded(self):
    # Under plain jit on `jax.make_mesh`'s default (explicit) mesh, a (b, B)
    # distance matrix sharded on both axes is illegal; the candidates must
    # be replicated.
    batch = random_batch(7)
    mesh = jax.make_mesh((4,), ('batch',), devices=jax.devices()[:4])
    expected = jax.jit(self.loss)(*batch)
    with jax.set_mesh(mesh):
      got = jax.jit(self.loss)(*jax.device_put(
          batch, jax.sharding.NamedSharding(mesh, P('batch'))))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
