"""Benchmarks the training input: images/s and CPU per image, by source.

Run from the repository root:

  .venv/bin/python -m benchmarks.input_pipeline_benchmark

Writes (once, kept in `--workdir` for reruns) a tree of synthetic face JPEGs
of `--image_size` pixels, one folder per identity, with a 5-landmark list,
packs it (`centerloss_jax.pack`'s code, aligned to 112x96x3), and prints one
markdown table of batch production alone (no training step): batches of
`--batch_size` for `--num_batches` steps, shuffled, flipped, as the CASIA
config's training reads them, from

* the identity folders through `epoch_batches` (decode + align in the
  training process, no pipeline);
* the folders through the grain pipeline, with 0, 1, 2, 4 worker processes;
* the pack through the pipeline (no decode, no alignment);
* the Fashion-MNIST IDX arrays through the pipeline, for scale.

Images/s is wall time after the first batch (worker start-up excluded);
CPU ms per image is the user + system time of this process and its worker
processes over the same span, divided by the images. Medians of
`--repeats` runs. On a shared machine compare rows of one run.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

from absl import app
from absl import flags
import psutil

from benchmarks import face_tree
from centerloss_jax.data import batching
from centerloss_jax.data import face_folders
from centerloss_jax.data import mnist
from centerloss_jax.data import pipeline

_WORKDIR = flags.DEFINE_string('workdir', 'runs/input_benchmark',
                               'Where the JPEG tree and its pack are kept.')
_IDENTITIES = flags.DEFINE_integer('num_identities', 200, 'Identities.')
_IMAGES_EACH = flags.DEFINE_integer('images_per_identity', 25,
                                    'Images per identity.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 250, 'Source JPEG size.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
# More batches than the workers buffer ahead (prefetch 2 per worker), so the
# rate is the steady state, not a drained buffer.
_BATCHES = flags.DEFINE_integer('num_batches', 40, 'Batches timed per run.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2', '4'],
                             'Worker-process counts of the pipeline rows.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs per row (median).')

def _cpu_seconds_by_process() -> dict[int, float]:
  """User + system seconds of this process and each live child, by pid."""
  processes = [psutil.Process()] + psutil.Process().children(recursive=True)
  seconds = {}
  for process in processes:
    try:
      times = process.cpu_times()
      seconds[process.pid] = times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return seconds


def measure(make_batches) -> tuple[float, float]:
  """(images/s, CPU ms per image) after the first batch, one run.

  The CPU time is each process's own difference over the timed span (a
  process started meanwhile counts from 0), so worker start-up is not in it.
  """
  batches = make_batches()
  try:
    next(batches)  # Start-up (worker processes, first decode) not timed.
    wall, before = time.perf_counter(), _cpu_seconds_by_process()
    for _ in range(_BATCHES.value):
      next(batches)
    after = _cpu_seconds_by_process()
    wall = time.perf_counter() - wall
    cpu = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
  finally:
    getattr(batches, 'close', lambda: None)()
  images = _BATCHES.value * _BATCH.value
  return images / wall, 1000 * cpu / images


def main(argv):
  del argv
  root = os.path.join(_WORKDIR.value, 'jpeg_tree')
  landmarks = face_tree.write_tree(
      root, num_identities=_IDENTITIES.value,
      images_per_identity=_IMAGES_EACH.value, image_size=_IMAGE_SIZE.value)
  pack_dir = os.path.join(_WORKDIR.value, 'pack')
  start = time.perf_counter()
  face_tree.pack_tree(root, landmarks, pack_dir)
  print(f'pack ready in {time.perf_counter() - start:.1f} s '
        '(0 if it was already packed)\n')
  steps = _BATCHES.value + 1
  splits = {
      'folders (JPEG, aligned)': face_folders.load_identity_folders(
          train_dir=root, landmarks=landmarks, image_shape=face_tree.SHAPE,
          num_classes=_IDENTITIES.value, test_images_per_identity=0).train,
      'packed records': face_folders.load_identity_folders(
          train_dir=root, landmarks=landmarks, image_shape=face_tree.SHAPE,
          num_classes=_IDENTITIES.value, test_images_per_identity=0,
          packed_dir=pack_dir).train,
      'IDX arrays (28x28x1)': mnist.load_idx_dataset(num_classes=10).train,
  }
  flip = batching.make_augment_fn(flip=True)

  def reader(split):
    return batching.BatchReader(split, global_batch_size=_BATCH.value,
                                seed=0, shuffle=True, drop_remainder=True,
                                augment_fn=flip)

  def loop_batches(split):  # The plain epoch loop, without grain.
    for epoch in itertools.count():
      yield from batching.epoch_batches(
          split, global_batch_size=_BATCH.value, epoch=epoch, seed=0,
          shuffle=True, drop_remainder=True, augment_fn=flip)

  rows = [('folders (JPEG, aligned)', 'epoch_batches loop (no grain)',
           lambda: loop_batches(splits['folders (JPEG, aligned)']))]
  for source in splits:
    for workers in map(int, _WORKERS.value):
      rows.append((source, f'grain, {workers} workers',
                   lambda s=source, w=workers: pipeline.batch_iterator(
                       reader(splits[s]), first_step=0, num_steps=steps,
                       num_workers=w)))
  print('| source | reader | images/s | CPU ms / image | images/s vs the '
        'loop on folders |')
  print('|---|---|---|---|---|')
  baseline = None
  for source, name, make in rows:
    runs = [measure(make) for _ in range(_REPEATS.value)]
    rate = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    baseline = baseline or rate
    print(f'| {source} | {name} | {rate:,.0f} | {cpu:.3f} | '
          f'{rate / baseline:.1f}x |', flush=True)


if __name__ == '__main__':
  app.run(main)
