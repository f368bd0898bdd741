"""The paper's lambda and alpha sweeps (Fig. 3 and Fig. 5) over seeds.

Runs `train_and_evaluate` for lambda in {0, 1e-4, 1e-3, 1e-2, 1e-1} at
alpha 0.5, and for alpha in {0.01, 0.1, 0.5, 1} at `--alpha_sweep_lambda`,
each at every seed of `--seeds` (see `experiments/seeds.py`: a run's
workdir is `<workdir>/<cell>/seed_<k>`, its record
`<records_dir>/<cell>/seed_<k>.json`; a cell and seed with a record is not
trained again, an interrupted run resumes from its checkpoint), then writes
into `--workdir`:

* `results.md`: the final test metrics of every cell, mean ± standard
  deviation over its seeds, and each center-loss cell against softmax alone
  (lambda 0), paired by seed, with whether the difference exceeds the
  seed-to-seed spread;
* `results.json`: the same, with every seed's value, for scripts;
* `sweep.png`: accuracy and spread / separation against lambda and alpha
  with error bars (the paper's Fig. 5);
* `features_by_lambda.png`: one seed's 2-D test features per lambda (the
  first of `--seeds` whose runs all kept them), one legend, centers marked
  (the paper's Fig. 3).

Launch (docs/results.md, on the offline Fashion-MNIST):

  python -m experiments.sweep --config=configs/default.py \
      --workdir=runs/sweep --seeds=0,1,2 \
      --records_dir=experiments/results/fashion_mnist_one_epoch

Any config field can be overridden as usual, e.g.
`--config.num_train_steps=200` for a quicker sweep; `--alphas=` (empty)
skips the alpha sweep.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from centerloss_jax import reporting
from centerloss_jax import training
from experiments import seeds as seeds_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Root of the sweep\'s runs '
                               'and of its report.', required=True)
_RECORDS_DIR = flags.DEFINE_string(
    'records_dir', None, 'Where the runs\' records are kept and looked up '
    '(default: <workdir>/records).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds of every cell.')
_LAMBDAS = flags.DEFINE_list('lambdas', ['0', '1e-4', '1e-3', '1e-2', '1e-1'],
                             'Center-loss weights of the lambda sweep.')
_ALPHAS = flags.DEFINE_list('alphas', ['0.01', '0.1', '0.5', '1'],
                            'Center update rates of the alpha sweep.')
_LAMBDA_SWEEP_ALPHA = flags.DEFINE_float(
    'lambda_sweep_alpha', 0.5, 'alpha during the lambda sweep (the paper: 0.5).')
_ALPHA_SWEEP_LAMBDA = flags.DEFINE_float(
    'alpha_sweep_lambda', 1e-2, 'lambda during the alpha sweep.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Report from the records alone: fail, naming '
    'them, if any record is missing, instead of training it.')
config_flags.DEFINE_config_file('config', 'configs/default.py',
                                'Base experiment config.', lock_config=True)

METRICS = (
    seeds_lib.Metric('accuracy', 'test accuracy (%)', scale=100),
    seeds_lib.Metric('intra_class_spread', 'intra-class spread', digits=3,
                     higher_is_better=False),
    seeds_lib.Metric('inter_class_min_distance', 'min center distance',
                     digits=3),
    seeds_lib.Metric('inter_class_mean_distance', 'mean center distance',
                     digits=3),
    seeds_lib.Metric('spread_to_separation', 'spread / separation',
                     digits=3, higher_is_better=False),
    seeds_lib.Metric('center_loss', 'center loss', digits=3,
                     higher_is_better=False),
)
# What the comparison with softmax alone is about.
COMPARED = ('accuracy', 'spread_to_separation')


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


def sweep_figure(path: str, records, *, lambdas, alphas, lambda_sweep_alpha,
                 alpha_sweep_lambda) -> None:
  """Accuracy and spread / separation against lambda and alpha (Fig. 5)."""
  # Each sweep: its axis label, its (lambda, alpha) cells, the swept values.
  sweeps = [(f'lambda (alpha = {lambda_sweep_alpha:g})',
             [(w, lambda_sweep_alpha) for w in lambdas], lambdas)]
  if len(alphas) > 1:
    sweeps.append((f'alpha (lambda = {alpha_sweep_lambda:g})',
                   [(alpha_sweep_lambda, a) for a in alphas], alphas))
  rows = []
  for key in COMPARED:
    metric = next(m for m in METRICS if m.key == key)
    row = []
    for x_label, cells, swept in sweeps:
      values = [list(seeds_lib.metric_values(records[run_name(*p)],
                                              key).values()) for p in cells]
      # A cell without the metric is a gap in the curve, not a crash.
      spreads = [seeds_lib.spread(v) if v else seeds_lib.Spread(
          np.nan, np.nan, 0) for v in values]
      row.append(reporting.plots.SweepSeries(
          x_label=x_label,
          x_ticks=[f'{x:g}' for x in swept],
          y_label=metric.label, means=[metric.scale * s.mean for s in spreads],
          stds=[metric.scale * s.std for s in spreads],
          counts=[s.n for s in spreads],
          values=[[metric.scale * x for x in v] for v in values]))
    rows.append(row)
  reporting.plots.plot_sweeps(rows, path=path,
                              title='mean ± std over seeds (n per point)')


def features_figure(path: str, records_dir: str, records, *, lambdas,
                    alpha: float, seeds: Sequence[int]) -> None:
  """One seed's 2-D test features per lambda, one shared legend (Fig. 3).

  The seed is the first of `seeds` whose runs all kept their features (a
  study's records may keep them for some seeds only).
  """
  def kept(weight, seed):
    return seeds_lib.kept_file(records_dir, run_name(weight, alpha), seed,
                               'features.npz')
  seed = next((s for s in seeds
               if all(os.path.exists(kept(w, s)) for w in lambdas)), seeds[0])
  panels, titles = [], []
  for weight in lambdas:
    cell = run_name(weight, alpha)
    if not os.path.exists(kept(weight, seed)):
      logging.warning('No kept features for %s seed %d; left out of %s.',
                      cell, seed, path)
      continue
    with np.load(kept(weight, seed)) as archive:
      panels.append(dict(archive))
    metrics = records[cell][seed]['metrics']
    ratio = metrics.get('spread_to_separation')
    titles.append(f'lambda = {weight:g}\ntest acc. '
                  f'{100 * metrics["accuracy"]:.2f}%, spread / sep. '
                  + ('-' if ratio is None else f'{ratio:.3f}'))
  if panels:
    reporting.plots.plot_feature_panel(
        panels, titles, [str(n) for n in panels[0]['class_names']], path=path,
        title=f'2-D test features, seed {seed}, step {int(panels[0]["step"])}'
              ' (centers: X)')


def main(argv: Sequence[str]) -> None:
  # A preempted or failed run stops the driver before it publishes
  # anything: the exit code says which (see centerloss_jax/main.py).
  training.lifecycle.run_main(functools.partial(_sweep, argv))


def _sweep(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  seeds = seeds_lib.parse_seeds(_SEEDS.value)
  reporting.writers.quiet_orbax_logging()
  base = flags.FLAGS.config
  root = os.path.abspath(_WORKDIR.value)
  records_dir = os.path.abspath(_RECORDS_DIR.value
                                or os.path.join(root, 'records'))
  lambdas = [float(x) for x in _LAMBDAS.value]
  alphas = [float(x) for x in _ALPHAS.value]
  lambda_alpha, alpha_lambda = (_LAMBDA_SWEEP_ALPHA.value,
                                _ALPHA_SWEEP_LAMBDA.value)
  points = sweep_points(lambdas, alphas, lambda_alpha, alpha_lambda)
  names = [run_name(*p) for p in points]
  if len(set(names)) < len(names):  # `:g` keeps 6 significant digits.
    raise app.UsageError(f'Two sweep points share a run name: {names}; '
                         'give lambdas and alphas that differ within 6 '
                         'significant digits.')
  cells = {}
  for weight, alpha in points:
    config = base.copy_and_resolve_references()
    with config.unlocked():
      config.center_loss.weight = weight
      config.center_loss.alpha = alpha
    training.run_config.check_config(config)  # Every cell, before any run.
    cells[run_name(weight, alpha)] = config
  records = seeds_lib.run_cells(cells, seeds, workdir=root,
                                records_dir=records_dir,
                                keep_files=('features.npz',),
                                train=not _REPORT_ONLY.value)
  if jax.process_index() != 0:  # One host writes the report.
    return

  tables = [seeds_lib.spread_table(
      records, METRICS, {run_name(*p): (f'{p[0]:g}', f'{p[1]:g}')
                         for p in points}, ('lambda', 'alpha'))]
  baseline = run_name(0.0, lambda_alpha)
  if baseline in records:
    tables.append(seeds_lib.comparison_table(
        records, baseline, [m for m in METRICS if m.key in COMPARED]))
  report = '\n\n'.join(tables)
  os.makedirs(root, exist_ok=True)  # A report from records alone.
  with reporting.atomic_write(os.path.join(root, 'results.md')) as f:
    f.write(report + '\n')
  with reporting.atomic_write(os.path.join(root, 'results.json')) as f:
    json.dump(seeds_lib.summary(records, METRICS), f, indent=2,
              sort_keys=True)
  sweep_figure(os.path.join(root, 'sweep.png'), records, lambdas=lambdas,
               alphas=alphas, lambda_sweep_alpha=lambda_alpha,
               alpha_sweep_lambda=alpha_lambda)
  features_figure(os.path.join(root, 'features_by_lambda.png'), records_dir,
                  records, lambdas=lambdas, alpha=lambda_alpha, seeds=seeds)
  print(report)
  print(f'\nTables, JSON and figures in {root}')


if __name__ == '__main__':
  app.run(main, flags_parser=training.lifecycle.parse_flags)
