"""The sweep script: grid, table, figure, on tiny data."""

import json
import os
import subprocess
import sys

from experiments import sweep
import repo_paths

REPO_ROOT = repo_paths.REPO_ROOT


def test_sweep_points_share_the_common_run():
  points = sweep.sweep_points([0.0, 0.01], [0.1, 0.5], 0.5, 0.01)
  assert points == [(0.0, 0.5), (0.01, 0.5), (0.01, 0.1)]


def test_sweep_runs_and_writes_table_json_and_figure(tiny_idx_dir, tmp_path):
  subprocess.run(
      [sys.executable, '-m', 'experiments.sweep',
       '--config=configs/default.py:runlocal',
       f'--config.input.data_dir={tiny_idx_dir}', '--config.num_epochs=1',
       f'--workdir={tmp_path}', '--lambdas=0,0.1', '--alphas=0.5,1',
       '--alpha_sweep_lambda=0.1'],
      cwd=REPO_ROOT, check=True, capture_output=True, timeout=400)
  with open(tmp_path / 'results.md') as f:
    rows = [line for line in f if line.startswith('| 0')]
  assert [row.split('|')[1:3] for row in rows] == [
      [' 0 ', ' 0.5 '], [' 0.1 ', ' 0.5 '], [' 0.1 ', ' 1 ']]
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert set(results) == {'lambda_0_alpha_0.5', 'lambda_0.1_alpha_0.5',
                          'lambda_0.1_alpha_1'}
  assert all(r['num_examples'] == 100 for r in results.values())
  assert os.path.getsize(tmp_path / 'features_by_lambda.png') > 10_000
