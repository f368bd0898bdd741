"""The paper's loss comparison (its Tables 2-4) on any face config, over seeds.

Trains the same backbone on the same identities with each objective, at
every seed of `--seeds` (see `experiments/seeds.py`: a run's workdir is
`<workdir>/<run>/seed_<k>`, its record `<records_dir>/<run>/seed_<k>.json`;
a run and seed with a record is not trained again, an interrupted run
resumes from its checkpoint), and evaluates every run on identities unseen
in training:

  softmax             softmax only (center_loss.weight = 0)
  softmax+contrastive softmax + contrastive loss (the paper's comparison),
                      on P x K batches
  softmax+center      softmax + center loss (the paper's method)
  arcface             ArcFace margin softmax, no center loss

and, when asked for with `--runs`, softmax+center-lambda-3e-4 (a tenth of
the paper's lambda), softmax+triplet (batch-hard, P x K) and
softmax+contrastive-random-batches (the contrastive loss on random batches).

then writes into `--workdir`:

* `results.md`: the open-set metrics (verification accuracy, AUC, TAR at
  the smallest measurable FARs, identification rank-1) and the closed-set
  accuracy of every run, mean ± standard deviation over its seeds, and each
  run against the first one (softmax alone by default), paired by seed,
  with whether the difference exceeds the seed-to-seed spread;
* `results.json`: the same, with every seed's value;
* `roc.png`: the verification ROC curves, the mean over seeds and the band
  from the lowest to the highest seed.

Launch (docs/results.md: three runs at three seeds, offline, about two
and a half hours on a 2-core CPU):

  python -m experiments.face_comparison --config=configs/synthetic_faces.py \
      --workdir=runs/face_comparison --seeds=0,1,2 \
      --runs=softmax,softmax+center,softmax+center-lambda-3e-4 \
      --records_dir=experiments/results/synthetic_faces

`--runs` picks the runs (the first is the baseline of the comparison); any
config field can be overridden as usual (`--config.num_train_steps=...`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from centerloss_jax import reporting
from centerloss_jax import training
from configs import common
from experiments import seeds as seeds_lib

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
                          f'Runs, among {list(RUNS)}; the first is the '
                          'baseline of the paired comparison.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds of every run.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Report from the records alone: fail, naming '
    'them, if any record is missing, instead of training it.')
_RECORDS_DIR = flags.DEFINE_string(
    'records_dir', None, 'Where the runs\' records are kept and looked up '
    '(default: <workdir>/records).')
config_flags.DEFINE_config_file('config', 'configs/synthetic_faces.py',
                                'Base face config.', lock_config=True)


def table_metrics(records) -> list[seeds_lib.Metric]:
  """The columns: the open-set metrics the runs report, then closed-set."""
  keys = {k for by_seed in records.values() for r in by_seed.values()
          for k in r['metrics']}
  verification = next((k.split('/')[0] for k in sorted(keys)
                       if k.endswith('/auc')), None)
  identification = next((k.split('/')[0] for k in sorted(keys)
                         if k.endswith('/rank1')), None)
  columns = []
  if verification:
    columns += [
        seeds_lib.Metric(f'{verification}/accuracy', 'verification accuracy '
                         '(%)', scale=100),
        seeds_lib.Metric(f'{verification}/auc', 'AUC', digits=4)]
    far_keys = sorted((k for k in keys
                       if k.startswith(f'{verification}/tar_at_far')),
                      key=lambda k: -float(k.rsplit('_', 1)[1]))
    columns += [seeds_lib.Metric(k, f'TAR@FAR={k.rsplit("_", 1)[1]} (%)',
                                 scale=100) for k in far_keys]
  if identification:
    columns.append(seeds_lib.Metric(f'{identification}/rank1',
                                    'rank-1 identification (%)', scale=100))
  columns.append(seeds_lib.Metric('accuracy', 'closed-set accuracy (%)',
                                  scale=100))
  return columns


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
  seeds = seeds_lib.parse_seeds(_SEEDS.value)
  reporting.writers.quiet_orbax_logging()
  base = flags.FLAGS.config
  root = os.path.abspath(_WORKDIR.value)
  records_dir = os.path.abspath(_RECORDS_DIR.value
                                or os.path.join(root, 'records'))
  cells = {name: common.with_overrides(base, RUNS[name])
           for name in _RUNS.value}
  for config in cells.values():  # Every run, before any trains.
    training.run_config.check_config(config)
  records = seeds_lib.run_cells(cells, seeds, workdir=root,
                                records_dir=records_dir,
                                keep=seeds_lib.keep_roc,
                                train=not _REPORT_ONLY.value)
  if jax.process_index() != 0:
    return
  columns = table_metrics(records)
  compared = [m for m in columns if m.key != 'accuracy'
              and not m.key.endswith('/auc')]
  report = '\n\n'.join([
      seeds_lib.spread_table(records, columns,
                             {name: (name,) for name in records}, ('run',)),
      seeds_lib.comparison_table(records, _RUNS.value[0], compared)])
  os.makedirs(root, exist_ok=True)  # A report from records alone.
  with reporting.atomic_write(os.path.join(root, 'results.md')) as f:
    f.write(report + '\n')
  with reporting.atomic_write(os.path.join(root, 'results.json')) as f:
    json.dump(seeds_lib.summary(records, columns), f, indent=2,
              sort_keys=True)
  curves = seeds_lib.roc_bands(records)
  if curves:
    reporting.plots.plot_roc_bands(
        curves, path=os.path.join(root, 'roc.png'),
        title=f'{base.input.name}: unseen identities')
  print(report)
  print(f'\nTables, JSON and ROC plot in {root}')


if __name__ == '__main__':
  app.run(main, flags_parser=training.lifecycle.parse_flags)
