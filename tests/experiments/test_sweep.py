"""The sweep script over seeds: grid, records, tables, figures, on tiny data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import seeds as seeds_lib
from experiments import sweep
import repo_paths

REPO_ROOT = repo_paths.REPO_ROOT


def test_sweep_points_share_the_common_run():
  points = sweep.sweep_points([0.0, 0.01], [0.1, 0.5], 0.5, 0.01)
  assert points == [(0.0, 0.5), (0.01, 0.5), (0.01, 0.1)]


def _sweep(tiny_idx_dir, workdir, *extra):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.sweep',
       '--config=configs/default.py:runlocal',
       f'--config.input.data_dir={tiny_idx_dir}', '--config.num_epochs=1',
       f'--workdir={workdir}', '--seeds=0,1', '--lambdas=0,0.1',
       '--alphas=0.5,1', '--alpha_sweep_lambda=0.1', *extra],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=500)


@pytest.fixture(scope='module')
def sweep_run(tiny_idx_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep')
  result = _sweep(tiny_idx_dir, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_sweep_records_every_cell_at_every_seed(sweep_run):
  cells = {'lambda_0_alpha_0.5', 'lambda_0.1_alpha_0.5', 'lambda_0.1_alpha_1'}
  records_dir = sweep_run / 'records'
  assert set(os.listdir(records_dir)) == cells
  for cell in cells:
    assert sorted(os.listdir(records_dir / cell)) == [
        'seed_0.features.npz', 'seed_0.json', 'seed_1.features.npz',
        'seed_1.json']
    seed_runs = []
    for seed in (0, 1):
      with open(records_dir / cell / f'seed_{seed}.json') as f:
        record = json.load(f)
      assert record['seed'] == seed and record['config']['seed'] == seed
      assert record['metrics']['num_examples'] == 100
      assert record['machine']['jax']
      with open(sweep_run / cell / f'seed_{seed}' / 'config.json') as f:
        assert json.load(f)['seed'] == seed  # The run trained that seed.
      seed_runs.append(record['metrics']['cross_entropy'])
    assert seed_runs[0] != seed_runs[1]  # Another seed, another run.
  with np.load(records_dir / 'lambda_0_alpha_0.5' / 'seed_0.features.npz'
               ) as kept:
    assert kept['features'].shape == (100, 2)
    assert kept['centers'].shape == (10, 2)
    assert len(kept['class_names']) == 10


def test_sweep_tables_give_the_spread_over_seeds(sweep_run):
  with open(sweep_run / 'results.json') as f:
    results = json.load(f)
  accuracy = results['lambda_0.1_alpha_1']['accuracy']
  assert accuracy['n'] == 2 and set(accuracy['values']) == {'0', '1'}
  values = list(accuracy['values'].values())
  assert accuracy['mean'] == pytest.approx(np.mean(values))
  assert accuracy['std'] == pytest.approx(np.std(values, ddof=1))
  with open(sweep_run / 'results.md') as f:
    report = f.read()
  spread_rows = [line.split(' | ') for line in report.splitlines()
                 if line.startswith('| 0')]
  assert [row[:3] for row in spread_rows] == [
      ['| 0', '0.5', '2'], ['| 0.1', '0.5', '2'], ['| 0.1', '1', '2']]
  comparisons = [line for line in report.splitlines()
                 if line.startswith('| lambda_0.1')]
  # Two cells against lambda 0, on accuracy and spread / separation.
  assert len(comparisons) == 4
  assert all(line.count('/2 |') == 1 for line in comparisons)
  assert all(line.endswith('| too few seeds for a verdict |')
             for line in comparisons)
  for name in ('sweep.png', 'features_by_lambda.png'):
    assert os.path.getsize(sweep_run / name) > 10_000


def test_sweep_reports_from_its_records_alone(sweep_run, tiny_idx_dir,
                                              tmp_path):
  # Another machine or session: the records only, no run workdirs, the
  # report into a folder that does not exist yet.
  records = tmp_path / 'kept_records'
  shutil.copytree(sweep_run / 'records', records)
  report_dir = tmp_path / 'report'
  result = _sweep(tiny_idx_dir, report_dir, f'--records_dir={records}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Study run' not in result.stderr  # Nothing was trained again.
  assert sorted(os.listdir(report_dir)) == [
      'features_by_lambda.png', 'results.json', 'results.md', 'sweep.png']
  for name in ('results.md', 'results.json'):
    assert (report_dir / name).read_text() == (sweep_run / name).read_text()


def test_sweep_refuses_a_record_of_another_config(sweep_run, tiny_idx_dir,
                                                  tmp_path):
  shutil.copytree(sweep_run / 'records', tmp_path / 'records')
  result = _sweep(tiny_idx_dir, tmp_path, '--config.learning_rate=0.5')
  assert result.returncode != 0
  assert 'is of another config: learning_rate: 0.01 -> 0.5' in result.stderr
  assert not (tmp_path / 'results.md').exists()
  assert not (tmp_path / 'lambda_0_alpha_0.5').exists()  # Nothing trained.


def test_bad_seeds_are_refused_naming_them():
  with pytest.raises(ValueError, match="non-negative integers, got '-1'"):
    seeds_lib.parse_seeds(['0', '-1'])
  with pytest.raises(ValueError, match='lists seed 2 twice'):
    seeds_lib.parse_seeds(['2', '2'])
  with pytest.raises(ValueError, match="got 'x'"):
    seeds_lib.parse_seeds(['x'])
  assert seeds_lib.parse_seeds(['3', '0']) == [3, 0]
