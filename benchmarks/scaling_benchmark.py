"""Class-sharded training vs num_classes: time, memory, communication.

Two tables, the classes split over a `'classes'` mesh axis of
`--class_shards` devices (`centerloss_jax.losses.class_sharded`):

1. The center-loss step alone: Eq. 2 for the batch and Eq. 4 with the
   centers donated, at every `--num_classes` x `--dims`: the median step
   time, the per-device centers and XLA scratch memory, and the bytes the
   compiled program's collectives deliver per device per step (read from
   the HLO), which must not grow with num_classes.
2. The trainer's own path at `--train_num_classes` x `--train_dim`: the
   train state (classifier kernel, its SGD momentum, the centers) created
   already split (`DataParallel.create_state`: its wall time, compile
   included, its compiled per-device memory and the process's peak resident
   memory after it), then the full train step (`trainer.step_functions`) of
   a narrow LeNet++ with softmax + center loss and with ArcFace + center
   loss: median time, scratch memory and collective bytes of each.

Run from the repository root, on as many devices as `--class_shards`; on a
CPU-only machine fake them:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      .venv/bin/python -m benchmarks.scaling_benchmark

The replicated (single-device) step and the distance-matrix baseline are in
`benchmarks/center_loss_benchmark.py`. Sizes whose centers would not fit in
`--max_centers_gib` of host memory (fake CPU devices share it) are skipped.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from benchmarks import common
from benchmarks import hlo_stats
from centerloss_jax.losses import class_sharded
from centerloss_jax.training import parallel
from centerloss_jax.training import state as state_lib
from centerloss_jax.training import trainer
from configs import default

_NUM_CLASSES = flags.DEFINE_list(
    'num_classes', ['1000', '131000', '1000000', '5000000', '10000000'],
    'Class counts to measure.')
_DIMS = flags.DEFINE_list('dims', ['128', '512'], 'Feature dimensions.')
_BATCH = flags.DEFINE_integer('batch', 256, 'Global batch.')
_CLASS_SHARDS = flags.DEFINE_integer('class_shards', 8,
                                     'Devices the classes are split over.')
_ITERS = flags.DEFINE_integer('iters', 20, 'Timed steps per size.')
_MAX_CENTERS_GIB = flags.DEFINE_float(
    'max_centers_gib', 20.0,
    'Skip sizes whose float32 centers exceed this many GiB (fake CPU devices '
    'share the host memory).')
_TRAIN_NUM_CLASSES = flags.DEFINE_list(
    'train_num_classes', ['1000', '131072', '1048576', '4194304'],
    'Class counts of the train-state and train-step table (multiples of '
    '--class_shards); empty: skip that table.')
_TRAIN_DIM = flags.DEFINE_integer('train_dim', 128,
                                  'Feature dimension of that table.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 64,
                                    'Global batch of that table\'s steps.')
_TRAIN_ITERS = flags.DEFINE_integer('train_iters', 5,
                                    'Timed train steps per size and loss.')
_MAX_STATE_GIB = flags.DEFINE_float(
    'max_state_gib', 8.0,
    'Skip train-table sizes whose state (3 x classes x dim float32) exceeds '
    'this many GiB.')

_GIB = 2.0**30


def _step(centers, features, labels):
  """Per device: Eq. 2 over the batch, Eq. 4 on this device's classes."""
  loss = class_sharded.class_sharded_center_loss(features, labels, centers,
                                               class_axis='classes')
  new_centers = class_sharded.class_sharded_update_centers(
      centers, features, labels, alpha=0.5, class_axis='classes',
      batch_axis='batch')
  return loss, new_centers


def _measure(mesh, num_classes, dim):
  centers_sharding = NamedSharding(mesh, P('classes', None))
  batch_sharding = NamedSharding(mesh, P('batch'))
  # Zeros, made on the devices shard by shard: random centers would need
  # several centers-sized temporaries on the (shared) host memory of fake CPU
  # devices, and the step's cost does not depend on the values.
  centers = jax.block_until_ready(jax.jit(
      lambda: jnp.zeros((num_classes, dim), jnp.float32),
      out_shardings=centers_sharding)())
  k_x, k_y = jax.random.split(jax.random.key(1))
  features = jax.device_put(
      jax.random.normal(k_x, (_BATCH.value, dim)), batch_sharding)
  labels = jax.device_put(
      jax.random.randint(k_y, (_BATCH.value,), 0, num_classes), batch_sharding)
  step = jax.jit(jax.shard_map(
      _step, mesh=mesh, in_specs=(P('classes', None), P('batch'), P('batch')),
      out_specs=(P(), P('classes', None)), check_vma=False), donate_argnums=0)
  compiled = step.lower(centers, features, labels).compile()
  hlo = compiled.as_text()
  times, centers, donated = common.time_threaded(
      compiled, centers, (features, labels), warmup=3, iters=_ITERS.value,
      min_iters=5, max_seconds=20.0)
  del centers
  found = hlo_stats.collectives(hlo)
  return {
      'median': statistics.median(times), 'n': len(times),
      'temp': compiled.memory_analysis().temp_size_in_bytes,
      'collective_bytes': hlo_stats.collective_bytes(found),
      'collectives': len(found),
      'largest_collective_dim': max(
          (d for _, results, operands in found
           for _, dims in results + operands for d in dims), default=0),
      'donated': donated,
      'centers_copies': hlo_stats.class_sized_ops(
          hlo, num_classes // _CLASS_SHARDS.value).count('copy'),
  }


_IMAGE_SHAPE = (28, 28, 1)
_LOSSES = ('softmax', 'arcface')


def _train_config(num_classes: int, classifier: str):
  """A narrow LeNet++ (`default:runlocal`) with `classifier` + center loss,
  its classes split over `--class_shards` devices."""
  config = default.get_config('runlocal')
  config.input.num_classes = num_classes
  config.model.feature_dim = _TRAIN_DIM.value
  config.loss.classifier = classifier
  config.parallel = 'shard_map'
  config.class_shards = _CLASS_SHARDS.value
  config.batch_size = _TRAIN_BATCH.value
  config.schedule = 'constant'
  return config


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB


def _measure_training(dp: parallel.DataParallel, num_classes: int) -> dict:
  """Init of the split train state, then each loss's train step."""
  config = _train_config(num_classes, 'softmax')
  init = functools.partial(
      state_lib.create_train_state, config, jax.random.key(0),
      image_shape=_IMAGE_SHAPE, num_classes=num_classes,
      learning_rate_fn=optax.constant_schedule(0.01))
  start = time.perf_counter()
  state = jax.block_until_ready(dp.create_state(init))
  result = {'init_s': time.perf_counter() - start,
            'init_rss': _peak_rss_gib(),
            'state_device_bytes': sum(
                leaf.addressable_shards[0].data.nbytes
                for leaf in jax.tree.leaves(state)
                if isinstance(leaf, jax.Array))}
  rng = np.random.default_rng(0)
  batch = dp.put_batch({
      'image': rng.normal(size=(_TRAIN_BATCH.value,) + _IMAGE_SHAPE).astype(
          np.float32),
      'label': rng.integers(0, num_classes, _TRAIN_BATCH.value).astype(
          np.int32),
      'weight': np.ones(_TRAIN_BATCH.value, np.float32)})
  for loss in _LOSSES:
    train_step, _ = trainer.step_functions(_train_config(num_classes, loss))
    # The trainer's step, lowered for its HLO and memory analysis.
    compiled = dp.compile_train_step(train_step).lower(state, batch).compile()
    for _ in range(2):  # Warm-up.
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(_TRAIN_ITERS.value):
      t0 = time.perf_counter()
      state, metrics = jax.block_until_ready(compiled(state, batch))
      times.append(time.perf_counter() - t0)
    found = hlo_stats.collectives(compiled.as_text())
    result[loss] = {
        'median': statistics.median(times), 'n': len(times),
        'temp': compiled.memory_analysis().temp_size_in_bytes,
        'collective_bytes': hlo_stats.collective_bytes(found),
        'largest_collective_dim': max(
            (d for _, results, operands in found
             for _, dims in results + operands for d in dims), default=0)}
  result['train_rss'] = _peak_rss_gib()
  return result


def _training_table(dp: parallel.DataParallel) -> None:
  dim = _TRAIN_DIM.value
  print(f'\n# Class-sharded train state and train step (dim {dim})\n')
  print(f'- narrow LeNet++ (default:runlocal widths), {dim}-d features, '
        f'SGD + momentum, center loss lambda 0.01; batch {_TRAIN_BATCH.value}; '
        f'mesh (1 batch x {dp.class_shards} classes); medians of '
        f'{_TRAIN_ITERS.value} timed steps after 2 warm-up steps; peak RSS '
        'is the whole process\'s so far (sizes run in increasing order)\n')
  header = ['classes', 'state GiB', 'state MiB / device', 'init s',
            'peak RSS after init GiB', 'softmax step ms', 'arcface step ms',
            'arcface / softmax', 'softmax temp MiB / device',
            'arcface temp MiB / device', 'collective bytes / device '
            '(softmax, arcface)', 'largest collective dim',
            'peak RSS after steps GiB']
  print(common.table(header, []), flush=True)
  for num_classes in sorted(int(c) for c in _TRAIN_NUM_CLASSES.value):
    state_bytes = 3 * 4 * num_classes * dim
    if state_bytes > _MAX_STATE_GIB.value * _GIB:
      row = [f'{num_classes:,}', f'{state_bytes / _GIB:.2f}',
             'skipped (--max_state_gib)'] + ['-'] * (len(header) - 3)
    else:
      r = _measure_training(dp, num_classes)
      logging.info('train table, %d classes: %s', num_classes, r)
      softmax, arcface = r['softmax'], r['arcface']
      row = [
          f'{num_classes:,}', f'{state_bytes / _GIB:.2f}',
          f'{r["state_device_bytes"] / 2**20:.1f}', f'{r["init_s"]:.1f}',
          f'{r["init_rss"]:.2f}', common.ms(softmax['median']),
          common.ms(arcface['median']),
          f'{arcface["median"] / softmax["median"]:.2f}',
          f'{softmax["temp"] / 2**20:.1f}', f'{arcface["temp"] / 2**20:.1f}',
          f'{softmax["collective_bytes"]:,}, '
          f'{arcface["collective_bytes"]:,}',
          max(softmax['largest_collective_dim'],
              arcface['largest_collective_dim']),
          f'{r["train_rss"]:.2f}']
    print('| ' + ' | '.join(str(c) for c in row) + ' |', flush=True)
  print('\n`state`: the classifier kernel, its momentum and the centers, '
        'whole; `MiB / device`: one device\'s share of the whole train state '
        '(the backbone replicated). `init s`: `DataParallel.create_state`, '
        'compile and run. `temp`: XLA\'s scratch per device of the compiled '
        'step. The collectives must not grow with the classes.')


def _center_step_table(mesh: jax.sharding.Mesh, shards: int) -> None:
  print('# Class-sharded center-loss step\n')
  print(f'- batch {_BATCH.value}, alpha 0.5, centers donated; mesh (1 batch x '
        f'{shards} classes); medians of up to {_ITERS.value} timed steps\n')
  header = ['classes', 'dim', 'median ms', 'n', 'x smallest',
            'centers MiB / device', 'temp MiB / device',
            'collective bytes / device', 'collectives',
            'largest collective dim', 'centers copies']
  # Rows print as they are measured, so a size that exhausts host memory
  # still leaves the smaller ones on screen.
  print(common.table(header, []), flush=True)
  for dim in (int(d) for d in _DIMS.value):
    smallest = None
    for num_classes in sorted(int(c) for c in _NUM_CLASSES.value):
      centers_bytes = 4 * num_classes * dim
      if centers_bytes > _MAX_CENTERS_GIB.value * _GIB:
        row = [f'{num_classes:,}', dim, 'skipped (host memory: '
               f'{centers_bytes / _GIB:.1f} GiB of centers)'] + ['-'] * (
                   len(header) - 3)
      else:
        r = _measure(mesh, num_classes, dim)
        logging.info('%d classes, dim %d: %s', num_classes, dim, r)
        smallest = smallest or r['median']
        row = [
            f'{num_classes:,}', dim, common.ms(r['median']), r['n'],
            f'{r["median"] / smallest:.2f}',
            f'{centers_bytes / shards / 2**20:.0f}',
            f'{r["temp"] / 2**20:.2f}', f'{r["collective_bytes"]:,}',
            r['collectives'], r['largest_collective_dim'],
            r['centers_copies']]
      print('| ' + ' | '.join(str(c) for c in row) + ' |', flush=True)
  print('\n`collective bytes / device`: sum of the result sizes of the '
        'compiled program\'s collectives (all-gather, all-reduce, ...), what '
        'arrives on each device per step. `largest collective dim`: the '
        'largest dimension of any collective\'s operand or result (the batch, '
        'never the classes). `centers copies`: copies of the centers shard in '
        'the compiled program (0: updated in place).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  shards = _CLASS_SHARDS.value
  if jax.device_count() < shards:
    raise app.UsageError(
        f'--class_shards={shards} needs {shards} devices, found '
        f'{jax.device_count()}; on CPU set XLA_FLAGS='
        f'--xla_force_host_platform_device_count={shards}.')
  print(f'- jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{shards} devices ({jax.devices()[0].device_kind}), '
        f'{os.cpu_count()} CPUs\n')
  start = time.perf_counter()
  # An empty list (`--num_classes=`) skips its table.
  if any(_NUM_CLASSES.value):
    _center_step_table(jax.make_mesh((1, shards), ('batch', 'classes'),
                                     devices=jax.devices()[:shards]), shards)
  if any(_TRAIN_NUM_CLASSES.value):
    _training_table(parallel.DataParallel.create(
        'shard_map', devices=jax.devices()[:shards], class_shards=shards))
  print(f'\nTotal wall time: {time.perf_counter() - start:.0f} s.')


if __name__ == '__main__':
  app.run(main)
