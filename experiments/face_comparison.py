"""The paper's loss comparison (its Tables 2-4) on any face config.

Trains the same backbone on the same identities with each objective, each
in its own workdir (an interrupted comparison resumes where it stopped),
and evaluates every run on identities unseen in training:

  softmax             softmax only (center_loss.weight = 0)
  softmax+contrastive softmax + contrastive loss (the paper's comparison),
                      on P x K batches
  softmax+center      softmax + center loss (the paper's method)
  arcface             ArcFace margin softmax, no center loss

and, when asked for with `--runs`, softmax+center-lambda-3e-4 (a tenth of
the paper's lambda), softmax+triplet (batch-hard, P x K) and
softmax+contrastive-random-batches (the contrastive loss on random batches).

then writes into `--workdir`:

* `results.md`: a markdown table (verification accuracy as mean +- std over
  the 10 folds, AUC, TAR at the smallest measurable FARs, identification
  rank-1, and closed-set accuracy on the training identities);
* `results.json`: every run's final metrics;
* `roc.png`: the verification ROC curves of all runs on one plot.

Launch (the README's table, offline, ~1 hour on a 2-core CPU):

  python -m experiments.face_comparison --config=configs/synthetic_faces.py \
      --workdir=runs/face_comparison

`--runs=softmax,softmax+center` picks a subset; any config field can be
overridden as usual (`--config.num_train_steps=...`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from centerloss_jax import reporting
from centerloss_jax import training
from configs import common

# Each run: the config overrides that define its objective. The center-loss
# weight and alpha of 'softmax+center' are the base config's. The pair
# losses get P x K batches (K = 4 images of each of batch / 4 identities):
# in random batches of many identities almost no pair is positive.
_PAIRS = {'center_loss.weight': 0.0, 'batch_images_per_identity': 4}
RUNS: dict[str, dict[str, Any]] = {
    'softmax': {'center_loss.weight': 0.0},
    'softmax+contrastive': {**_PAIRS, 'loss.pair': 'contrastive'},
    'softmax+center': {},
    'arcface': {'center_loss.weight': 0.0, 'loss.classifier': 'arcface'},
    # Not run by default:
    'softmax+center-lambda-3e-4': {'center_loss.weight': 3e-4},
    'softmax+contrastive-random-batches': {'center_loss.weight': 0.0,
                                           'loss.pair': 'contrastive'},
    'softmax+triplet': {**_PAIRS, 'loss.pair': 'triplet'},
}
DEFAULT_RUNS = ('softmax', 'softmax+contrastive', 'softmax+center', 'arcface')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Root of the runs.',
                               required=True)
_RUNS = flags.DEFINE_list('runs', list(DEFAULT_RUNS),
                          f'Runs, among {list(RUNS)}.')
config_flags.DEFINE_config_file('config', 'configs/synthetic_faces.py',
                                'Base face config.', lock_config=True)


def _percent(value: float | None) -> str:
  return '-' if value is None else f'{100 * value:.2f}%'


def results_table(results: dict[str, dict[str, float]],
                  verification_name: str | None,
                  identification_name: str | None) -> str:
  """Markdown table, one row per run."""
  far_keys = sorted(
      {k.split('/', 1)[1] for m in results.values() for k in m
       if verification_name
       and k.startswith(f'{verification_name}/tar_at_far')},
      key=lambda k: -float(k.rsplit('_', 1)[1]))
  header = ['run']
  if verification_name:
    header += ['verification accuracy', 'AUC']
    header += [f'TAR@FAR={k.rsplit("_", 1)[1]}' for k in far_keys]
  if identification_name:
    header += ['rank-1 identification']
  header += ['closed-set accuracy']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for name, m in results.items():
    row = [name]
    if verification_name:
      accuracy = m[f'{verification_name}/accuracy']
      std = m[f'{verification_name}/accuracy_std']
      row += [f'{100 * accuracy:.2f} +- {100 * std:.2f}%',
              f'{m[f"{verification_name}/auc"]:.4f}']
      row += [_percent(m.get(f'{verification_name}/{k}')) for k in far_keys]
    if identification_name:
      row += [_percent(m.get(f'{identification_name}/rank1'))]
    row += [_percent(m.get('accuracy'))]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  # A preempted or failed run stops the driver before it publishes
  # anything: the exit code says which (see centerloss_jax/main.py).
  training.lifecycle.run_main(functools.partial(_compare, argv))


def _compare(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = set(_RUNS.value) - set(RUNS)
  if unknown:
    raise app.UsageError(f'Unknown runs {sorted(unknown)}; expected some of '
                         f'{list(RUNS)}.')
  reporting.writers.quiet_orbax_logging()
  base = flags.FLAGS.config
  root = os.path.abspath(_WORKDIR.value)
  results, curves = {}, {}
  for name in _RUNS.value:
    logging.info('Comparison run %s', name)
    config = common.with_overrides(base, RUNS[name])
    workdir = os.path.join(root, name)
    results[name] = training.train_and_evaluate(config, workdir)
    roc = _final_roc(workdir)
    if roc is not None:
      curves[name] = roc
  verification_name = next(
      (k.split('/')[0] for m in results.values() for k in m
       if k.endswith('/auc')), None)
  identification_name = next(
      (k.split('/')[0] for m in results.values() for k in m
       if k.endswith('/rank1')), None)
  table = results_table(results, verification_name, identification_name)
  if jax.process_index() != 0:
    return
  with reporting.atomic_write(os.path.join(root, 'results.md')) as f:
    f.write(table + '\n')
  with reporting.atomic_write(os.path.join(root, 'results.json')) as f:
    json.dump(results, f, indent=2, sort_keys=True)
  if curves:
    reporting.plots.plot_roc(curves, path=os.path.join(root, 'roc.png'),
                             title=f'{base.input.name}: unseen identities')
  print(table)
  print(f'\nTable, JSON and ROC plot in {root}')


def _final_roc(workdir: str):
  """The (far, tar) of the run's final evaluation, from its `roc.npz`."""
  path = os.path.join(workdir, 'roc.npz')
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    return data['far'], data['tar']


if __name__ == '__main__':
  app.run(main, flags_parser=training.lifecycle.parse_flags)
