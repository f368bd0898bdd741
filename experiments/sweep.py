"""The paper's lambda and alpha sweeps (Fig. 3 and Fig. 5) on any config.

Runs `train_and_evaluate` for lambda in {0, 1e-4, 1e-3, 1e-2, 1e-1} at
alpha 0.5, and for alpha in {0.01, 0.1, 0.5, 1} at `--alpha_sweep_lambda`,
each in its own workdir (so an interrupted sweep resumes where it stopped),
then writes into `--workdir`:

* `results.md`: a markdown table of the final test metrics of every run;
* `results.json`: the same, for scripts;
* `features_by_lambda.png`: the final 2-D test-feature plots of the lambda
  sweep side by side (the paper's Fig. 3).

Launch (the README's sweep, on the offline Fashion-MNIST):

  python -m experiments.sweep --config=configs/default.py \
      --workdir=runs/sweep

Any config field can be overridden as usual, e.g.
`--config.num_train_steps=200` for a quicker sweep.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from centerloss_jax import reporting
from centerloss_jax import training

_WORKDIR = flags.DEFINE_string('workdir', None, 'Root of the sweep\'s runs.',
                               required=True)
_LAMBDAS = flags.DEFINE_list('lambdas', ['0', '1e-4', '1e-3', '1e-2', '1e-1'],
                             'Center-loss weights of the lambda sweep.')
_ALPHAS = flags.DEFINE_list('alphas', ['0.01', '0.1', '0.5', '1'],
                            'Center update rates of the alpha sweep.')
_LAMBDA_SWEEP_ALPHA = flags.DEFINE_float(
    'lambda_sweep_alpha', 0.5, 'alpha during the lambda sweep (the paper: 0.5).')
_ALPHA_SWEEP_LAMBDA = flags.DEFINE_float(
    'alpha_sweep_lambda', 1e-2, 'lambda during the alpha sweep.')
config_flags.DEFINE_config_file('config', 'configs/default.py',
                                'Base experiment config.', lock_config=True)

_COLUMNS = ('accuracy', 'intra_class_spread', 'inter_class_min_distance',
            'inter_class_mean_distance', 'spread_to_separation', 'center_loss')


def run_name(weight: float, alpha: float) -> str:
  return f'lambda_{weight:g}_alpha_{alpha:g}'


def sweep_points(lambdas: Sequence[float], alphas: Sequence[float],
                 lambda_sweep_alpha: float,
                 alpha_sweep_lambda: float) -> list[tuple[float, float]]:
  """(lambda, alpha) pairs of both sweeps, without repeating a shared run."""
  points = [(w, lambda_sweep_alpha) for w in lambdas]
  points += [(alpha_sweep_lambda, a) for a in alphas
             if (alpha_sweep_lambda, a) not in points]
  return points


def results_table(results: dict[str, dict[str, float]],
                  points: Sequence[tuple[float, float]]) -> str:
  """Markdown table, one row per run."""
  lines = ['| lambda | alpha | test accuracy | intra-class spread | '
           'min center distance | mean center distance | spread / separation '
           '| center loss |',
           '|---|---|---|---|---|---|---|---|']
  for weight, alpha in points:
    m = results[run_name(weight, alpha)]
    lines.append(
        f'| {weight:g} | {alpha:g} | {100 * m["accuracy"]:.2f}% | '
        f'{m["intra_class_spread"]:.3f} | {m["inter_class_min_distance"]:.3f}'
        f' | {m["inter_class_mean_distance"]:.3f} | '
        f'{m["spread_to_separation"]:.3f} | {m["center_loss"]:.4f} |')
  return '\n'.join(lines)


def _latest_plot(workdir: str) -> str | None:
  plots = [f for f in os.listdir(workdir)
           if f.startswith('features_step_') and f.endswith('.png')]
  if not plots:
    return None
  return os.path.join(workdir, max(plots, key=lambda f: int(f[14:-4])))


def features_figure(path: str, workdirs: Sequence[str],
                    titles: Sequence[str]) -> None:
  """Tiles the runs' final feature plots side by side into one PNG."""
  plots = [_latest_plot(w) for w in workdirs]
  fig, axes = plt.subplots(1, len(plots), figsize=(4 * len(plots), 4.3))
  for ax, plot, title in zip(axes, plots, titles):
    ax.axis('off')
    if plot is not None:
      ax.imshow(plt.imread(plot))
    ax.set_title(title)
  fig.tight_layout()
  with reporting.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  # A preempted or failed run stops the driver before it publishes
  # anything: the exit code says which (see centerloss_jax/main.py).
  training.lifecycle.run_main(functools.partial(_sweep, argv))


def _sweep(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  reporting.writers.quiet_orbax_logging()
  base = flags.FLAGS.config
  root = os.path.abspath(_WORKDIR.value)
  lambdas = [float(x) for x in _LAMBDAS.value]
  points = sweep_points(lambdas, [float(x) for x in _ALPHAS.value],
                        _LAMBDA_SWEEP_ALPHA.value, _ALPHA_SWEEP_LAMBDA.value)
  results = {}
  for weight, alpha in points:
    config = base.copy_and_resolve_references()
    with config.unlocked():
      config.center_loss.weight = weight
      config.center_loss.alpha = alpha
    name = run_name(weight, alpha)
    logging.info('Sweep run %s', name)
    results[name] = training.train_and_evaluate(config, os.path.join(root, name))

  table = results_table(results, points)
  with reporting.atomic_write(os.path.join(root, 'results.md')) as f:
    f.write(table + '\n')
  with reporting.atomic_write(os.path.join(root, 'results.json')) as f:
    json.dump(results, f, indent=2, sort_keys=True)
  features_figure(
      os.path.join(root, 'features_by_lambda.png'),
      [os.path.join(root, run_name(w, _LAMBDA_SWEEP_ALPHA.value))
       for w in lambdas],
      [f'lambda = {w:g}' for w in lambdas])
  print(table)
  print(f'\nTable, JSON and figure in {root}')


if __name__ == '__main__':
  app.run(main, flags_parser=training.lifecycle.parse_flags)
