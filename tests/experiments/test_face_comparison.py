"""The face comparison driver: runs, table, records and ROC figure.

One comparison of two objectives at one seed on the synthetic faces
(`comparison`: one epoch of runlocal each) serves every test here.
"""

import json
import os
import subprocess
import sys

import pytest

import repo_paths

pytestmark = pytest.mark.slow

RUNS = ('softmax+triplet', 'arcface')


@pytest.fixture(scope='module')
def comparison(tmp_path_factory):
  """(workdir, the driver's stdout)."""
  workdir = tmp_path_factory.mktemp('face_comparison')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.face_comparison',
       '--config=configs/synthetic_faces.py:runlocal',
       '--config.num_epochs=1', f'--runs={",".join(RUNS)}',
       f'--workdir={workdir}'],
      cwd=repo_paths.REPO_ROOT, check=True, capture_output=True, text=True,
      timeout=300)
  return workdir, result.stdout


def _tables(workdir):
  """(spread table, comparison table) of results.md."""
  with open(workdir / 'results.md') as f:
    spread_table, comparison_table = f.read().split('\n\n')
  return spread_table, comparison_table


def test_the_spread_table_has_a_row_per_run_at_one_seed(comparison):
  workdir, _ = comparison
  spread_table, _ = _tables(workdir)
  rows = [line.split(' | ') for line in spread_table.splitlines()[2:]]
  assert [row[:2] for row in rows] == [['| softmax+triplet', '1'],
                                       ['| arcface', '1']]


def test_at_one_seed_the_comparison_says_the_spread_was_not_measured(
    comparison):
  workdir, _ = comparison
  _, comparison_table = _tables(workdir)
  assert comparison_table.splitlines()[2].startswith(
      '| arcface | verification')
  assert all(line.endswith('| spread not measured |')
             for line in comparison_table.splitlines()[2:])


def test_different_objectives_give_different_results(comparison):
  # Not one run reported twice.
  workdir, _ = comparison
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert (results['softmax+triplet']['synthetic_pairs/auc']['values']
          != results['arcface']['synthetic_pairs/auc']['values']
          or results['softmax+triplet']['accuracy']['values']
          != results['arcface']['accuracy']['values'])


def test_a_record_keeps_its_runs_config_and_roc(comparison):
  workdir, _ = comparison
  with open(workdir / 'records' / 'arcface' / 'seed_0.json') as f:
    record = json.load(f)
  assert record['config']['loss']['classifier'] == 'arcface'
  assert len(record['kept']['roc_far']) == len(record['kept']['roc_tar']) > 5


def test_p_x_k_batches_give_every_anchor_a_positive(comparison):
  # K = 4: every anchor has positives and takes part.
  workdir, _ = comparison
  with open(workdir / 'softmax+triplet' / 'seed_0' / 'metrics.jsonl') as f:
    train = [r for r in map(json.loads, f) if 'train/pair_positives' in r]
  assert train and all(r['train/pair_positives'] == 1.0 for r in train)


def test_the_roc_figure_is_drawn(comparison):
  workdir, _ = comparison
  assert os.path.getsize(workdir / 'roc.png') > 5_000


def test_the_tables_are_printed(comparison):
  _, stdout = comparison
  assert 'softmax+triplet' in stdout
