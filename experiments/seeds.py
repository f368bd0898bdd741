"""Seeds as an axis of a study: resumable runs, their records, their spread.

A study (the lambda sweep, the face comparison) is a set of cells, one
config each, times a list of seeds. The seed is the config's `seed`: it
changes the initialisation, the data order and the augmentations, not the
data (a face config's identities have their own `input.seed`).

`run_cells` trains every (cell, seed) in its own workdir,
`<workdir>/<cell>/seed_<k>` (an interrupted run resumes from its checkpoint),
and keeps its result as a small JSON record,
`<records_dir>/<cell>/seed_<k>.json`: the config it ran, its final metrics,
what the study asks to keep of it (the ROC on a fixed grid, ...) and the
machine it ran on. The record, not the workdir, is what a study is reported
from: a (cell, seed) whose record exists is not trained again, so records
kept with the code let a long study continue on another machine or in
another session. A record of a config that differs from the cell's in a
field that changes its metrics (training or evaluation; not logging, data
paths or the parallel mode: `run_config.record_changes`) is refused, naming
the fields.

`keep_roc` is what a face run keeps: its final ROC read at fixed FARs, so
that `roc_bands` can average a cell's seeds point by point.

The statistics: each cell's mean and sample standard deviation over its
seeds (`Spread`), and each cell's difference from a baseline paired by seed
(`PairedDifference`): the same seed gives both runs the same initialisation
and data order, so the pairing removes what they share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
from scipy import stats

from centerloss_jax import reporting
from centerloss_jax.metrics import verification
from centerloss_jax import training
from centerloss_jax.training import run_config

Record = dict[str, Any]


def parse_seeds(values: Sequence[str]) -> list[int]:
  """Seeds from a flag's list of strings: distinct non-negative integers.

  Raises:
    ValueError: naming the bad value.
  """
  seeds = []
  for value in values:
    try:
      seed = int(value)
    except ValueError:
      seed = -1
    if seed < 0 or str(seed) != value.strip():
      raise ValueError(f'--seeds takes non-negative integers, got {value!r}.')
    if seed in seeds:
      raise ValueError(f'--seeds lists seed {seed} twice.')
    seeds.append(seed)
  if not seeds:
    raise ValueError('--seeds is empty; give at least one seed.')
  return seeds


def run_workdir(workdir: str, cell: str, seed: int) -> str:
  return os.path.join(workdir, cell, f'seed_{seed}')


def record_path(records_dir: str, cell: str, seed: int) -> str:
  return os.path.join(records_dir, cell, f'seed_{seed}.json')


# The widest x86 vector extension decides the code XLA:CPU emits, and with it
# the float rounding: two CPUs of one name can differ here (see
# docs/reproducibility.md).
_SIMD_FLAGS = ('avx512f', 'avx2', 'avx', 'sse4_2')


def cpu_info(cpuinfo: str) -> dict[str, Any]:
  """The first CPU of a `/proc/cpuinfo` text: name, family, model, SIMD.

  Args:
    cpuinfo: the file's text.

  Returns:
    `cpu` (the model name), `cpu_family` and `cpu_model` (as the file
    writes them) and `cpu_simd` (the widest of `_SIMD_FLAGS` in its flags);
    each None where the text lacks it (ARM's file has no model name).
  """
  fields = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break  # The first processor's block ends at its blank line.
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  flags = set(fields.get('flags', '').split())
  return {'cpu': fields.get('model name'),
          'cpu_family': fields.get('cpu family'),
          'cpu_model': fields.get('model'),
          'cpu_simd': next((f for f in _SIMD_FLAGS if f in flags), None)}


def machine() -> dict[str, Any]:
  """What a record says about where it ran (float rounding depends on it)."""
  try:
    with open('/proc/cpuinfo') as f:
      info = cpu_info(f.read())
  except OSError:  # Not Linux.
    info = cpu_info('')
  info['cpu'] = info['cpu'] or platform.processor() or platform.machine()
  device = jax.devices()[0]
  return {**info, 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(),
          'process_count': jax.process_count()}


def load_record(path: str, config: ml_collections.ConfigDict
                ) -> Optional[Record]:
  """The record at `path`, if there is one and it is of `config`'s run.

  Raises:
    run_config.ConfigChangedError: the record is of a config that trains or
      evaluates differently (`run_config.record_changes`), naming the
      fields.
  """
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  changes = run_config.record_changes(
      record['config'], json.loads(config.to_json(sort_keys=True)))
  if changes:
    raise run_config.ConfigChangedError(
        f'The record {path} is of another config: {"; ".join(changes)}. '
        'Move it away to train this config, or report the study with the '
        'config it was made with.')
  return record


def run_cells(cells: Mapping[str, ml_collections.ConfigDict],
              seeds: Sequence[int], *, workdir: str, records_dir: str,
              keep: Optional[Callable[[str], dict[str, Any]]] = None,
              keep_files: Sequence[str] = (),
              train: bool = True) -> dict[str, dict[int, Record]]:
  """Trains every cell at every seed that has no record yet; returns all.

  Seed by seed (all cells at the first seed, then the next): a study cut
  short has every cell at the same number of seeds.

  Args:
    cells: `{name: config}`; each config's `seed` is replaced by the seed.
    seeds: the seeds (see `parse_seeds`).
    workdir: the root of the runs' workdirs (`run_workdir`).
    records_dir: the root of the records (`record_path`).
    keep: `keep(run_workdir)` -> JSON-able extras for the record, e.g. the
      ROC from the workdir's `roc.npz`.
    keep_files: files of each run's workdir to copy beside its record as
      `seed_<k>.<name>` (`kept_file`), for figures of one run per cell.
    train: False to report from the records alone: a missing record is then
      a `FileNotFoundError` naming it, before any run starts.

  Returns:
    `{cell: {seed: record}}`, with the records' `metrics` (the final
    evaluation of `training.train_and_evaluate`) and `kept` extras.
  """
  records = {name: {} for name in cells}
  if not train:
    paths = [record_path(records_dir, name, seed)
             for seed in seeds for name in cells]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
      raise FileNotFoundError(
          f'{len(missing)} record(s) missing for a report from records '
          f'alone: {", ".join(missing)}')
  for seed in seeds:
    for name, base in cells.items():
      config = base.copy_and_resolve_references()
      with config.unlocked():
        config.seed = seed
      path = record_path(records_dir, name, seed)
      record = load_record(path, config)
      if record is None:
        logging.info('Study run %s, seed %d', name, seed)
        run_dir = run_workdir(workdir, name, seed)
        metrics = training.train_and_evaluate(config, run_dir)
        record = {'cell': name, 'seed': seed,
                  'config': json.loads(config.to_json(sort_keys=True)),
                  'metrics': metrics,
                  'kept': keep(run_dir) if keep else {},
                  'machine': machine()}
        if jax.process_index() == 0:
          _write_record(path, record, run_dir, keep_files)
      records[name][seed] = record
  return records


def _write_record(path: str, record: Record, run_dir: str,
                  keep_files: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # The files first: a record on disk means its run is complete.
  for name in keep_files:
    source = os.path.join(run_dir, name)
    if os.path.exists(source):
      with open(source, 'rb') as src, reporting.atomic_write(
          f'{path[:-len(".json")]}.{name}', 'wb') as dst:
        shutil.copyfileobj(src, dst)
  with reporting.atomic_write(path) as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write('\n')


# The ROC is kept in each record at these FARs (those a run's pairs can
# measure: from one false accept up), to average curves over seeds.
ROC_GRID = np.geomspace(1e-4, 1.0, 81)


def keep_roc(workdir: str) -> dict[str, Any]:
  """The run's final ROC on `ROC_GRID`, for its record."""
  path = os.path.join(workdir, 'roc.npz')
  if not os.path.exists(path):
    return {}
  with np.load(path) as roc:
    far, tar = roc['far'], roc['tar']
  measurable = ROC_GRID[ROC_GRID >= far[far > 0].min() * (1 - 1e-9)]
  return {'roc_far': measurable.tolist(),
          'roc_tar': verification.tar_on_far_grid(
              far, tar, measurable).tolist()}


def roc_bands(records) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """`{run: (far grid, tars (seeds, grid))}` of the runs that kept a ROC."""
  curves = {}
  for name, by_seed in records.items():
    kept = [r['kept'] for r in by_seed.values() if 'roc_far' in r['kept']]
    if kept:
      grids = {tuple(k['roc_far']) for k in kept}
      if len(grids) != 1:
        raise ValueError(f'The seeds of {name} kept ROCs on different FAR '
                         'grids (different verification pairs?).')
      curves[name] = (np.array(kept[0]['roc_far']),
                      np.array([k['roc_tar'] for k in kept]))
  return curves


def kept_file(records_dir: str, cell: str, seed: int, name: str) -> str:
  """Where `run_cells(keep_files=[name])` put a run's file."""
  return f'{record_path(records_dir, cell, seed)[:-len(".json")]}.{name}'


@dataclasses.dataclass(frozen=True)
class Spread:
  """Mean and sample standard deviation (ddof 1) of a cell over its seeds."""
  mean: float
  std: float  # NaN with a single seed: its spread was not measured.
  n: int

  def format(self, scale: float = 1.0, digits: int = 2) -> str:
    if self.n < 2:
      return f'{scale * self.mean:.{digits}f}'
    return f'{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}'


def spread(values: Sequence[float]) -> Spread:
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError('spread needs at least one value, got none.')
  std = float(values.std(ddof=1)) if values.size > 1 else math.nan
  return Spread(float(values.mean()), std, int(values.size))


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """A cell minus its baseline, seed by seed.

  Attributes:
    mean: the mean of the per-seed differences.
    std: their sample standard deviation (NaN with one seed).
    n: the number of seeds both have.
    same_sign: how many of the n differences have the sign of `mean`.
    p_value: the two-sided paired t-test's (NaN below two seeds); with three
      seeds only a large, consistent difference reaches 0.05.
    exceeds_spread: whether |mean| is larger than the seed-to-seed
      standard deviation of both cells, i.e. than the difference one seed
      makes to either; False below two seeds (not measured).
  """
  mean: float
  std: float
  n: int
  same_sign: int
  p_value: float
  exceeds_spread: bool

  def verdict(self, higher_is_better: bool = True) -> str:
    """'better' or 'worse' only with 3+ seeds, if the difference exceeds the
    seed spread and has the same sign at every seed; else 'within seed
    spread'."""
    if self.n < 2:
      return 'spread not measured'
    if self.n < 3:  # Two seeds agree by chance one time in two.
      return 'too few seeds for a verdict'
    if not self.exceeds_spread or self.same_sign < self.n:
      return 'within seed spread'
    better = (self.mean > 0) == higher_is_better
    return 'better' if better else 'worse'


def paired_difference(values: Mapping[int, float],
                      baseline: Mapping[int, float]) -> PairedDifference:
  """`values - baseline` over the seeds both have (`{seed: value}` each).

  Raises:
    ValueError: if they have no seed in common.
  """
  common = sorted(set(values) & set(baseline))
  if not common:
    raise ValueError(f'No common seed: {sorted(values)} vs '
                     f'{sorted(baseline)}.')
  a = np.array([values[s] for s in common], np.float64)
  b = np.array([baseline[s] for s in common], np.float64)
  diff = a - b
  mean = float(diff.mean())
  if len(common) < 2:
    return PairedDifference(mean, math.nan, 1, 1, math.nan, False)
  std = float(diff.std(ddof=1))
  sign = np.sign(mean)
  same_sign = int(np.count_nonzero(np.sign(diff) == sign)) if sign else 0
  if std > 1e-12 * max(abs(mean), 1e-300):
    p_value = float(stats.ttest_rel(a, b).pvalue)
  else:  # Every seed moved by the same amount: the t statistic is infinite.
    p_value = 0.0 if mean else 1.0
  exceeds = abs(mean) > max(a.std(ddof=1), b.std(ddof=1))
  return PairedDifference(mean, std, len(common), same_sign, p_value,
                          bool(exceeds))


@dataclasses.dataclass(frozen=True)
class Metric:
  """A metric of the study's tables: its record key and how to show it."""
  key: str
  label: str
  scale: float = 1.0  # 100: shown in percent.
  digits: int = 2
  higher_is_better: bool = True


def metric_values(records: Mapping[int, Record], key: str
                  ) -> dict[int, float]:
  """`{seed: value}` of a metric over a cell's records that have it."""
  return {seed: float(r['metrics'][key]) for seed, r in records.items()
          if r['metrics'].get(key) is not None}


def summary(records: Mapping[str, Mapping[int, Record]],
            metrics: Sequence[Metric]) -> dict[str, dict[str, Any]]:
  """`{cell: {metric: {mean, std, n, values: {seed: value}}}}`, for JSON."""
  out = {}
  for cell, by_seed in records.items():
    out[cell] = {}
    for metric in metrics:
      values = metric_values(by_seed, metric.key)
      if values:
        cell_spread = spread(list(values.values()))
        out[cell][metric.key] = {
            'mean': cell_spread.mean,
            # None, not NaN (which is not JSON), when one seed has it.
            'std': None if cell_spread.n < 2 else cell_spread.std,
            'n': cell_spread.n,
            'values': {str(s): v for s, v in values.items()}}
  return out


def spread_table(records: Mapping[str, Mapping[int, Record]],
                 metrics: Sequence[Metric],
                 row_labels: Mapping[str, Sequence[str]],
                 label_header: Sequence[str]) -> str:
  """Markdown: one row per cell, mean ± std over its seeds per metric."""
  header = [*label_header, 'seeds', *(m.label for m in metrics)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for cell, by_seed in records.items():
    row = [*row_labels[cell], str(len(by_seed))]
    for metric in metrics:
      values = metric_values(by_seed, metric.key)
      row.append(spread(list(values.values())).format(
          metric.scale, metric.digits) if values else '-')
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def comparison_table(records: Mapping[str, Mapping[int, Record]],
                     baseline: str, metrics: Sequence[Metric]) -> str:
  """Markdown: each cell against `baseline`, paired by seed, per metric.

  Each row's columns are over the seeds both cells have (`same sign`'s
  denominator): a seed of one cell alone is in `spread_table`, not here.
  """
  lines = ['| run | metric | baseline | run | paired difference | '
           'same sign | p (paired t) | verdict |',
           '|---|---|---|---|---|---|---|---|']
  base = records[baseline]
  for cell, by_seed in records.items():
    if cell == baseline:
      continue
    for metric in metrics:
      values = metric_values(by_seed, metric.key)
      base_values = metric_values(base, metric.key)
      # Both columns over the seeds the difference pairs, so that it is
      # their difference and `exceeds_spread` is tested against their stds.
      common = set(values) & set(base_values)
      if not common:
        continue
      values = {s: v for s, v in values.items() if s in common}
      base_values = {s: v for s, v in base_values.items() if s in common}
      diff = paired_difference(values, base_values)
      scale, digits = metric.scale, metric.digits
      std = '' if diff.n < 2 else f' ± {scale * diff.std:.{digits}f}'
      p_value = '-' if math.isnan(diff.p_value) else f'{diff.p_value:.3f}'
      lines.append(
          f'| {cell} | {metric.label} | '
          f'{spread(list(base_values.values())).format(scale, digits)} | '
          f'{spread(list(values.values())).format(scale, digits)} | '
          f'{scale * diff.mean:+.{digits}f}{std} | '
          f'{diff.same_sign}/{diff.n} | {p_value} | '
          f'{diff.verdict(metric.higher_is_better)} |')
  return '\n'.join(lines)
