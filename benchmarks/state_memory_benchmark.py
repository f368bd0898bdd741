"""Peak host memory of a class-sharded training run, train and resume.

Run from the repository root (8 fake CPU devices are set for the runs):

  .venv/bin/python -m benchmarks.state_memory_benchmark \\
      --num_classes=1048576,4194304 --workdir=<a scratch directory>

For each size, the CLI (`python -m centerloss_jax.main`) runs the face-scale
config's runlocal variant (a narrow FaceResNet on the synthetic identities,
with `input.num_classes` raised to the size: the classes past its 16
identities are padding) at `--feature_dim` with `class_shards` 8 on 8 fake
CPU devices, batch 16, SGD with momentum: `--steps` steps and a checkpoint,
then a resume of the same workdir for `--steps` more
(`--allow_config_change`: the run is longer), each followed by the final
evaluation (the closed-set test split and the open-set protocols). Each
run's peak resident memory (its `ru_maxrss`, read by a wrapper process that
waits for it) is printed next to the state's size (the classifier kernel,
its SGD momentum and the centers, `3 * num_classes * feature_dim * 4`
bytes) and the target: at most 1.5x the state plus 3 GiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags

_NUM_CLASSES = flags.DEFINE_list('num_classes', ['1048576', '4194304'],
                                 'Class counts to run.')
_FEATURE_DIM = flags.DEFINE_integer('feature_dim', 128, 'Feature size.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Steps per run.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/state_memory',
                               'Where the runs write (removed after).')

GIB = 1024**3
# Reports the peak RSS of the command it runs (in KiB on Linux).
_PEAK_RSS = ('import resource, subprocess, sys; '
             'code = subprocess.run(sys.argv[1:]).returncode; '
             'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); '
             'sys.exit(code)')


def _peak_rss_gib(command: list[str]) -> float:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run([sys.executable, '-c', _PEAK_RSS, *command],
                          capture_output=True, text=True, env=env)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return int(result.stdout.strip().splitlines()[-1]) * 1024 / GIB


def main(argv):
  del argv
  print('| classes | state (kernel + centers + momentum) | train run peak RSS '
        '| resume run peak RSS | target (1.5x state + 3 GiB) |')
  print('|---|---|---|---|---|')
  for num_classes in map(int, _NUM_CLASSES.value):
    workdir = os.path.join(_WORKDIR.value, str(num_classes))
    shutil.rmtree(workdir, ignore_errors=True)
    state = 3 * num_classes * _FEATURE_DIM.value * 4 / GIB

    def command(num_steps):
      return [sys.executable, '-m', 'centerloss_jax.main',
              '--config=configs/face_scale.py:runlocal', f'--workdir={workdir}',
              f'--config.input.num_classes={num_classes}',
              f'--config.model.feature_dim={_FEATURE_DIM.value}',
              '--config.class_shards=8', '--config.optimizer=sgd',
              '--config.schedule=constant',
              f'--config.num_train_steps={num_steps}',
              f'--config.checkpoint_every_steps={_STEPS.value}',
              f'--config.eval_every_steps={2 * _STEPS.value}',
              '--config.log_every_steps=1']

    train = _peak_rss_gib(command(_STEPS.value))
    # Longer than the run it resumes: a change of the run's length.
    resume = _peak_rss_gib(command(2 * _STEPS.value) +
                           ['--allow_config_change'])
    shutil.rmtree(workdir, ignore_errors=True)
    print(f'| {num_classes:,} | {state:.2f} GiB | {train:.2f} GiB '
          f'({train / state:.2f}x) | {resume:.2f} GiB ({resume / state:.2f}x) '
          f'| {1.5 * state + 3:.2f} GiB |', flush=True)


if __name__ == '__main__':
  app.run(main)
