"""Class-sharded center-loss step vs num_classes: time, memory, communication.

The centers are split along the classes over a `'classes'` mesh axis of
`--class_shards` devices (`centerloss_jax.losses.class_sharded`); each step computes Eq. 2
for the batch and applies Eq. 4 with the centers donated. For every size it
prints the median step time, the per-device centers and XLA scratch memory,
and the bytes the compiled program's collectives deliver per device per step
(read from the HLO), which must not grow with num_classes.

Run from the repository root, on as many devices as `--class_shards`; on a
CPU-only machine fake them:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      .venv/bin/python -m benchmarks.scaling_benchmark

The replicated (single-device) step and the distance-matrix baseline are in
`benchmarks/center_loss_benchmark.py`. Sizes whose centers would not fit in
`--max_centers_gib` of host memory (fake CPU devices share it) are skipped.
"""

from __future__ import annotations

import os
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

from benchmarks import common
from benchmarks import hlo_stats
from centerloss_jax.losses import class_sharded

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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  shards = _CLASS_SHARDS.value
  if jax.device_count() < shards:
    raise app.UsageError(
        f'--class_shards={shards} needs {shards} devices, found '
        f'{jax.device_count()}; on CPU set XLA_FLAGS='
        f'--xla_force_host_platform_device_count={shards}.')
  mesh = jax.make_mesh((1, shards), ('batch', 'classes'),
                       devices=jax.devices()[:shards])
  print('# Class-sharded center-loss step\n')
  print(f'- jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{shards} devices ({jax.devices()[0].device_kind}), '
        f'{os.cpu_count()} CPUs')
  print(f'- batch {_BATCH.value}, alpha 0.5, centers donated; mesh (1 batch x '
        f'{shards} classes); medians of up to {_ITERS.value} timed steps\n')
  header = ['classes', 'dim', 'median ms', 'n', 'x smallest',
            'centers MiB / device', 'temp MiB / device',
            'collective bytes / device', 'collectives',
            'largest collective dim', 'centers copies']
  # Rows print as they are measured, so a size that exhausts host memory
  # still leaves the smaller ones on screen.
  print(common.table(header, []), flush=True)
  start = time.perf_counter()
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
  print(f'\nTotal wall time: {time.perf_counter() - start:.0f} s.')


if __name__ == '__main__':
  app.run(main)
