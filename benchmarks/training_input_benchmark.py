"""What the input costs a training run: the CLI on folders and packs vs memory.

Run from the repository root:

  .venv/bin/python -m benchmarks.training_input_benchmark

The data are `input_pipeline_benchmark`'s (`benchmarks/face_tree.py`): 5,000
synthetic 250x250 JPEGs of 200 identities with landmarks and their pack,
written into `--bench_dir` unless an earlier run of either left them there.

Trains the same deliberately tiny `FaceResNet` (CASIA config, 112x96x3,
batch 128, float32) through `python -m centerloss_jax.main` on

* the JPEG identity folders (decode + 5-landmark alignment per image);
* their pack (`--config.input.packed_dir`), with 0 and 2 worker processes;
* the same images already in memory: the pack read into one numpy array
  before training (this script's `--in_memory` child, otherwise the CLI).

Each variant runs twice, `--short_steps` and `--long_steps` long, in a
fresh workdir, and the table gives the difference per extra image: the CPU
(user + system of the run and every process it started) and the wall time
the extra steps cost, so start-up, compilation, the final evaluation and
the checkpoint cancel out. "Input CPU ms / image" is a variant's CPU per
image minus the in-memory run's: what its input adds to a training step.
Medians of `--repeats`; on a shared machine compare rows of one run.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import face_tree

_WORKDIR = flags.DEFINE_string(
    'bench_dir', 'runs/input_benchmark',
    'Where the JPEG tree and its pack are kept (input_pipeline_benchmark\'s '
    '--workdir).')
_SHORT = flags.DEFINE_integer('short_steps', 8, 'Steps of the short run.')
_LONG = flags.DEFINE_integer('long_steps', 40, 'Steps of the long run.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs per variant (median).')
_VARIANTS = flags.DEFINE_list(
    'variants', ['memory', 'folders', 'packed', 'packed_2_workers'],
    'Which runs (the in-memory one is always first: the others are '
    'compared with it).')
_IN_MEMORY = flags.DEFINE_bool(
    'in_memory', False, 'Internal: be the in-memory child run (the rest of '
    'the command line is the CLI\'s).')

BATCH = 128
NUM_IDENTITIES = 200
# The tiny model: what is left of a step's cost is the input's to compare.
MODEL_FLAGS = ('--config.model.stem_channels=(4,4)',
               '--config.model.stage_channels=(4,4,4,4)',
               '--config.model.stage_blocks=(1,1,1,1)',
               '--config.model.feature_dim=32',
               '--config.model.dtype=float32')


def _cli_flags(root: str, num_steps: int, workdir: str) -> list[str]:
  return ['--config=configs/casia_webface_face_resnet.py',
          f'--workdir={workdir}',
          f'--config.input.train_dir={root}',
          f'--config.input.landmarks={os.path.join(root, "landmarks.txt")}',
          f'--config.input.num_classes={NUM_IDENTITIES}',
          f'--config.batch_size={BATCH}', f'--config.num_train_steps={num_steps}',
          f'--config.eval_every_steps={num_steps}',
          f'--config.checkpoint_every_steps={num_steps}',
          '--config.lr_boundaries=(1000000,)', *MODEL_FLAGS]


def _run(command: list[str]) -> tuple[float, float]:
  """(CPU seconds of the run and its descendants, wall seconds)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return cpu, wall


def _per_image(command_of_steps) -> tuple[float, float]:
  """(CPU ms, wall ms) per image of the steps between the short and the long
  run, medians of the repeats."""
  cpu, wall = [], []
  extra_images = (_LONG.value - _SHORT.value) * BATCH
  for _ in range(_REPEATS.value):
    short = _run(command_of_steps(_SHORT.value))
    long = _run(command_of_steps(_LONG.value))
    cpu.append(1000 * (long[0] - short[0]) / extra_images)
    wall.append(1000 * (long[1] - short[1]) / extra_images)
  return statistics.median(cpu), statistics.median(wall)


def _in_memory_child(argv: list[str]) -> None:
  """The CLI, with the training images read into memory before the run."""
  from centerloss_jax import main as cli  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import lifecycle  # pylint: disable=g-import-not-at-top
  from centerloss_jax.training import trainer  # pylint: disable=g-import-not-at-top

  load_dataset = trainer.load_dataset

  def load_into_memory(input_config):
    dataset = load_dataset(input_config)
    images = np.asarray(dataset.train.images)
    return dataclasses.replace(
        dataset, train=dataclasses.replace(dataset.train, images=images))

  trainer.load_dataset = load_into_memory
  app.run(cli.main, argv=argv, flags_parser=lifecycle.parse_flags)


def main(argv):
  del argv
  root = os.path.join(_WORKDIR.value, 'jpeg_tree')
  pack_dir = os.path.join(_WORKDIR.value, 'pack')
  landmarks = face_tree.write_tree(root, num_identities=NUM_IDENTITIES,
                                   images_per_identity=25, image_size=250)
  face_tree.pack_tree(root, landmarks, pack_dir)
  scratch = os.path.join(_WORKDIR.value, 'training_runs')
  cli = [sys.executable, '-m', 'centerloss_jax.main']
  child = [sys.executable, '-m', 'benchmarks.training_input_benchmark',
           '--in_memory']
  packed = f'--config.input.packed_dir={pack_dir}'
  known = {
      'memory': ('in memory (the pack read into RAM)', child, [packed]),
      'folders': ('folders (JPEG, aligned), 0 workers', cli, []),
      'packed': ('packed records, 0 workers', cli, [packed]),
      'packed_2_workers': ('packed records, 2 workers', cli,
                           [packed, '--config.pipeline.num_workers=2']),
  }
  unknown = set(_VARIANTS.value) - set(known)
  if unknown:
    raise app.UsageError(f'Unknown --variants {sorted(unknown)}; expected '
                         f'some of {sorted(known)}.')
  names = ['memory'] + [name for name in _VARIANTS.value if name != 'memory']
  variants = {known[name][0]: known[name][1:] for name in names}
  results = {}
  for name, (program, extra) in variants.items():
    def command(num_steps, program=program, extra=extra):
      workdir = os.path.join(scratch, f'{len(results)}_{num_steps}')
      shutil.rmtree(workdir, ignore_errors=True)
      return program + _cli_flags(root, num_steps, workdir) + extra
    results[name] = _per_image(command)
    print(f'{name}: {results[name][0]:.3f} CPU ms, {results[name][1]:.3f} '
          'wall ms per image', flush=True)
  shutil.rmtree(scratch, ignore_errors=True)
  base_cpu, base_wall = next(iter(results.values()))
  print(f'\nTiny FaceResNet, batch {BATCH}, steps {_SHORT.value} -> '
        f'{_LONG.value}, medians of {_REPEATS.value}\n')
  print('| input | CPU ms / image | input CPU ms / image | wall ms / image '
        '| wall vs in memory |')
  print('|---|---|---|---|---|')
  for name, (cpu, wall) in results.items():
    print(f'| {name} | {cpu:.3f} | {cpu - base_cpu:+.3f} | {wall:.3f} | '
          f'{wall / base_wall:.2f}x |')


if __name__ == '__main__':
  if '--in_memory' in sys.argv:
    _in_memory_child([arg for arg in sys.argv if arg != '--in_memory'])
  else:
    app.run(main)
