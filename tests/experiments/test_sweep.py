"""The sweep script over seeds: grid, records, tables, figures, on tiny data.

One sweep (`sweep_run`: 3 cells x 2 seeds of one runlocal epoch each) serves
the checks of what it writes; one more is preempted in its first run. Every
process runs under a hard timeout and is killed at the end.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import multiprocess_util
import repo_paths
from experiments import sweep

REPO_ROOT = repo_paths.REPO_ROOT
CELLS = ('lambda_0_alpha_0.5', 'lambda_0.1_alpha_0.5', 'lambda_0.1_alpha_1')


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


def _record(sweep_run, cell, seed):
  with open(sweep_run / 'records' / cell / f'seed_{seed}.json') as f:
    return json.load(f)


@pytest.mark.slow
def test_sweep_records_every_cell_at_every_seed(sweep_run):
  records_dir = sweep_run / 'records'
  assert set(os.listdir(records_dir)) == set(CELLS)
  for cell in CELLS:
    assert sorted(os.listdir(records_dir / cell)) == [
        'seed_0.features.npz', 'seed_0.json', 'seed_1.features.npz',
        'seed_1.json']


@pytest.mark.slow
@pytest.mark.parametrize('cell', CELLS)
@pytest.mark.parametrize('seed', [0, 1])
def test_each_record_is_of_a_run_of_its_seed(sweep_run, cell, seed):
  record = _record(sweep_run, cell, seed)
  assert record['seed'] == seed and record['config']['seed'] == seed
  with open(sweep_run / cell / f'seed_{seed}' / 'config.json') as f:
    assert json.load(f)['seed'] == seed  # The run trained that seed.


@pytest.mark.slow
@pytest.mark.parametrize('cell', CELLS)
@pytest.mark.parametrize('seed', [0, 1])
def test_each_record_holds_the_final_metrics_and_the_machine(sweep_run, cell,
                                                             seed):
  record = _record(sweep_run, cell, seed)
  assert record['metrics']['num_examples'] == 100
  assert record['machine']['jax']


@pytest.mark.slow
@pytest.mark.parametrize('cell', CELLS)
def test_another_seed_is_another_run(sweep_run, cell):
  seed_runs = [_record(sweep_run, cell, seed)['metrics']['cross_entropy']
               for seed in (0, 1)]
  assert seed_runs[0] != seed_runs[1]


@pytest.mark.slow
def test_a_record_keeps_its_runs_test_features(sweep_run):
  with np.load(sweep_run / 'records' / 'lambda_0_alpha_0.5' /
               'seed_0.features.npz') as kept:
    assert kept['features'].shape == (100, 2)
    assert kept['centers'].shape == (10, 2)
    assert len(kept['class_names']) == 10


@pytest.mark.slow
def test_results_json_gives_the_mean_and_std_over_seeds(sweep_run):
  with open(sweep_run / 'results.json') as f:
    results = json.load(f)
  accuracy = results['lambda_0.1_alpha_1']['accuracy']
  assert accuracy['n'] == 2 and set(accuracy['values']) == {'0', '1'}
  values = list(accuracy['values'].values())
  assert accuracy['mean'] == pytest.approx(np.mean(values))
  assert accuracy['std'] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_the_spread_table_has_a_row_per_cell_with_its_seed_count(sweep_run):
  report = (sweep_run / 'results.md').read_text()
  spread_rows = [line.split(' | ') for line in report.splitlines()
                 if line.startswith('| 0')]
  assert [row[:3] for row in spread_rows] == [
      ['| 0', '0.5', '2'], ['| 0.1', '0.5', '2'], ['| 0.1', '1', '2']]


@pytest.mark.slow
def test_each_center_loss_cell_is_compared_with_lambda_0_by_seed(sweep_run):
  report = (sweep_run / 'results.md').read_text()
  comparisons = [line for line in report.splitlines()
                 if line.startswith('| lambda_0.1')]
  # Two cells against lambda 0, on accuracy and spread / separation.
  assert len(comparisons) == 4
  assert all(line.count('/2 |') == 1 for line in comparisons)
  assert all(line.endswith('| too few seeds for a verdict |')
             for line in comparisons)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['sweep.png', 'features_by_lambda.png'])
def test_the_sweeps_figures_are_drawn(sweep_run, name):
  assert os.path.getsize(sweep_run / name) > 10_000


@pytest.mark.slow
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


@pytest.mark.slow
def test_sweep_refuses_a_record_of_another_config(sweep_run, tiny_idx_dir,
                                                  tmp_path):
  shutil.copytree(sweep_run / 'records', tmp_path / 'records')
  result = _sweep(tiny_idx_dir, tmp_path, '--config.learning_rate=0.5')
  assert result.returncode != 0
  assert 'is of another config: learning_rate: 0.01 -> 0.5' in result.stderr
  assert not (tmp_path / 'results.md').exists()
  assert not (tmp_path / 'lambda_0_alpha_0.5').exists()  # Nothing trained.


# --- a preempted run stops the sweep ------------------------------------------

TIMEOUT = 120  # Seconds the preempted sweep may take, hang or not.


@pytest.fixture(scope='module')
def preempted_sweep(tiny_idx_dir, tmp_path_factory):
  """(exit code, stderr, root) of a sweep stopped with SIGTERM once its
  first run has saved step 4."""
  root = tmp_path_factory.mktemp('preempted_sweep')
  command = [
      sys.executable, '-m', 'experiments.sweep',
      '--config=configs/default.py:runlocal',
      f'--config.input.data_dir={tiny_idx_dir}',
      '--config.num_train_steps=100000', '--config.checkpoint_every_steps=4',
      f'--workdir={root}', '--lambdas=0,0.1', '--alphas=0.5',
      '--alpha_sweep_lambda=0.1']
  first_step = root / 'lambda_0_alpha_0.5' / 'seed_0' / 'checkpoints' / '4'
  env = multiprocess_util.env_without_device_count(JAX_PLATFORMS='cpu')
  with multiprocess_util.Child(command, timeout=TIMEOUT, cwd=REPO_ROOT,
                               env=env) as run:
    run.wait_until(first_step.is_dir, 'checkpoint 4 of the first run')
    code = run.stop(signal.SIGTERM)
    return code, run.stderr(), root


@pytest.mark.slow
def test_a_preempted_run_stops_the_sweep_with_its_exit_code(
    preempted_sweep):
  code, stderr, _ = preempted_sweep
  assert code == 143, stderr[-2000:]
  assert 'preempted at step' in multiprocess_util.last_line(stderr)


@pytest.mark.slow
def test_a_sweep_stopped_by_preemption_publishes_nothing(preempted_sweep):
  # The second run never started; no record, table, JSON or figure.
  _, _, root = preempted_sweep
  assert sorted(os.listdir(root)) == ['lambda_0_alpha_0.5']
  assert os.listdir(root / 'lambda_0_alpha_0.5') == ['seed_0']
