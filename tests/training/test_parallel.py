"""Data parallelism: the modes and their layouts, and Eq. 4 under them.

Eq. 4 under data parallelism equals Eq. 4 on the global batch: the global
batch of 32 is split over the 8 fake CPU devices of conftest.py (4 examples
each). Class 3 appears only in the slice of device 5, so an
update computed from per-replica counts (the common multi-GPU bug) gives a
different answer from the single-device update on the whole batch.

The reference is `jax.jit(update_centers)` on one device, not an eager call:
eager execution runs op by op and differs from any compiled version in the
last bit (1 ulp seen on CPU), while every compiled path below reduces the
all-gathered batch in the same order and so agrees exactly.
"""

import functools
import importlib

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from centerloss_jax import losses as loss_lib
from centerloss_jax import training
from centerloss_jax.training import parallel

NUM_DEVICES = 8
PER_DEVICE = 4
NUM_CLASSES = 6
DIM = 3
ALPHA = 0.5
LONE_CLASS = 3     # Present only on one device.
LONE_DEVICE = 5


def global_batch():
  """(centers, features, labels, weights) of the global batch, numpy."""
  rng = np.random.default_rng(0)
  size = NUM_DEVICES * PER_DEVICE
  labels = rng.choice([0, 1, 2, 4, 5], size=size).astype(np.int32)
  weights = rng.choice([0.0, 0.5, 1.0, 2.0], size=size).astype(np.float32)
  lone = slice(LONE_DEVICE * PER_DEVICE, (LONE_DEVICE + 1) * PER_DEVICE)
  labels[lone] = LONE_CLASS
  weights[lone] = [1.0, 2.0, 0.0, 1.0]
  labels[3] = -1  # An out-of-range label, ignored everywhere.
  features = rng.normal(size=(size, DIM)).astype(np.float32)
  centers = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
  return centers, features, labels, weights


def _update(centers, features, labels, weights, *, axis_name):
  return loss_lib.update_centers(centers, features, labels, alpha=ALPHA,
                                 weights=weights, axis_name=axis_name)


@pytest.fixture(scope='module')
def batch():
  return global_batch()


@pytest.fixture(scope='module')
def expected(batch):
  """The single-device update on the whole global batch."""
  assert len(jax.devices()) == NUM_DEVICES, (
      'conftest.py should fake 8 CPU devices.')
  centers, features, labels, weights = batch
  out = np.asarray(jax.jit(functools.partial(_update, axis_name=None))(
      centers, features, labels, weights))
  assert not np.array_equal(out[LONE_CLASS], centers[LONE_CLASS]), (
      'Test set-up: the lone class should move.')
  return out


def _stack_per_device(x):
  return x.reshape((NUM_DEVICES, -1) + x.shape[1:])


def _run_pmap(batch, axis_name):
  centers, features, labels, weights = batch
  stacked_centers = np.broadcast_to(centers, (NUM_DEVICES,) + centers.shape)
  fn = jax.pmap(functools.partial(_update, axis_name=axis_name),
                axis_name='batch')
  return np.asarray(fn(stacked_centers, *map(_stack_per_device,
                                             (features, labels, weights))))


def test_pmap_update_equals_global_batch_update(batch, expected):
  per_replica = _run_pmap(batch, axis_name='batch')
  for device, centers in enumerate(per_replica):
    np.testing.assert_array_equal(
        centers, expected,
        err_msg=f'pmap replica {device} differs from the single-device '
        'update on the global batch.')


def test_pmap_replicas_stay_bit_identical(batch):
  per_replica = _run_pmap(batch, axis_name='batch')
  for device in range(1, NUM_DEVICES):
    np.testing.assert_array_equal(
        per_replica[device], per_replica[0],
        err_msg=f'pmap replica {device} drifted from replica 0.')


def test_per_replica_update_without_axis_name_is_detected(batch, expected):
  """The bug this file guards against: counts from the local batch only."""
  per_replica = _run_pmap(batch, axis_name=None)
  assert not any(np.array_equal(c, expected) for c in per_replica), (
      'A per-replica update matched the global one: the batch does not '
      'exercise cross-replica counts, so the tests above prove nothing.')
  assert not all(np.array_equal(c, per_replica[0]) for c in per_replica), (
      'Per-replica updates agreed across replicas: the batch does not put a '
      'class on one replica only.')
  # Only the device holding the lone class moves it.
  centers = batch[0]
  for device, out in enumerate(per_replica):
    moved = not np.array_equal(out[LONE_CLASS], centers[LONE_CLASS])
    assert moved == (device == LONE_DEVICE), (
        f'Per-replica update on device {device}: lone class moved={moved}.')


def test_shard_map_update_equals_global_batch_update(batch, expected):
  centers, features, labels, weights = batch
  mesh = jax.make_mesh((NUM_DEVICES,), ('batch',))
  batch_sharding = NamedSharding(mesh, P('batch'))
  fn = jax.jit(jax.shard_map(
      functools.partial(_update, axis_name='batch'), mesh=mesh,
      in_specs=(P(), P('batch'), P('batch'), P('batch')), out_specs=P(),
      check_vma=False))
  out = fn(jax.device_put(centers, NamedSharding(mesh, P())),
           *jax.device_put((features, labels, weights), batch_sharding))
  np.testing.assert_array_equal(
      out, expected,
      err_msg='jit(shard_map) update differs from the global-batch update.')
  for shard in out.addressable_shards:
    np.testing.assert_array_equal(
        shard.data, expected,
        err_msg=f'shard_map output on {shard.device} differs.')


def test_jit_with_batch_sharded_on_auto_mesh_equals_global_update(
    batch, expected):
  centers, features, labels, weights = batch
  mesh = jax.make_mesh((NUM_DEVICES,), ('batch',),
                       axis_types=(AxisType.Auto,))
  out = jax.jit(functools.partial(_update, axis_name=None))(
      jax.device_put(centers, NamedSharding(mesh, P())),
      *jax.device_put((features, labels, weights),
                      NamedSharding(mesh, P('batch'))))
  np.testing.assert_array_equal(
      out, expected,
      err_msg='jit with a sharded batch differs from the global update.')


def test_jit_with_batch_sharded_on_default_explicit_mesh(batch, expected):
  centers, features, labels, weights = batch
  mesh = jax.make_mesh((NUM_DEVICES,), ('batch',))
  out = jax.jit(functools.partial(_update, axis_name=None))(
      jax.device_put(centers, NamedSharding(mesh, P())),
      *jax.device_put((features, labels, weights),
                      NamedSharding(mesh, P('batch'))))
  np.testing.assert_array_equal(out, expected)


# --- the modes and their layouts ----------------------------------------------


def test_an_unknown_parallel_mode_is_refused_naming_the_modes():
  with pytest.raises(ValueError, match="'bogus'.*'jit', 'pmap', 'shard_map'"):
    parallel.DataParallel.create('bogus')


def test_a_batch_not_divisible_by_the_devices_is_refused():
  dp = parallel.DataParallel.create('pmap')
  with pytest.raises(ValueError, match='12 is not divisible by the 8'):
    dp.check_batch_size(12)


def test_a_config_with_class_shards_needs_shard_map(tmp_path):
  config = importlib.import_module('configs.face_scale').get_config(
      'runlocal')
  config.parallel = 'jit'
  with pytest.raises(ValueError, match=r"class_shards=4.*'shard_map'.*'jit'"):
    training.train_and_evaluate(config, str(tmp_path))


def test_pmap_refuses_class_shards():
  with pytest.raises(ValueError, match=r"class_shards=4.*'pmap'"):
    parallel.DataParallel.create('pmap', class_shards=4)


def test_class_shards_must_divide_the_devices():
  with pytest.raises(ValueError, match='class_shards=3 does not divide the 8'):
    parallel.DataParallel.create('shard_map', class_shards=3)
