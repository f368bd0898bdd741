"""The tour notebook: committed with its outputs, and runs at a tiny size."""

import os
import sys

import pytest

import notebook_util
import repo_paths

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')

TOUR = os.path.join(repo_paths.REPO_ROOT, 'notebooks', 'center_loss_tour.ipynb')

# The cells that show figures, and how many each.
FIGURES = {'center-trajectories': 1, 'training-curves': 1, 'feature-plots': 1}


def _tiny_parameters(data_dir):
  """Values for the notebook's `parameters` cell: two runs of 4 steps."""
  return {
      'TRAIN_SUBSET': 128,
      'TEST_SUBSET': 60,
      'NUM_STEPS': 4,
      'BATCH_SIZE': 32,
      'STAGE_CHANNELS': (4, 8, 8),
      'CENTER_LOSS_WEIGHTS': (0.0, 0.1),
      'DATA_DIR': data_dir,
  }


def _read_tour():
  return nbformat.read(TOUR, as_version=4)


def _metrics_table(notebook):
  (cell,) = notebook_util.cells_tagged(notebook, 'metrics-table')
  return notebook_util.markdown_output(cell)


def test_committed_notebook_has_its_outputs():
  notebook = _read_tour()
  notebook_util.assert_committed_with_outputs(notebook, FIGURES)
  weights = notebook_util.committed_parameters(notebook)['CENTER_LOSS_WEIGHTS']
  table = _metrics_table(notebook)
  assert 'spread_to_separation' in table, table
  assert table.count('\n| ') == len(weights), table


def test_parameters_cell_is_plain_assignments():
  notebook_util.assert_parameters_are(_read_tour(), _tiny_parameters(None))


def test_tour_runs_at_tiny_size(tiny_idx_dir, tmp_path):
  notebook = _read_tour()
  parameters = _tiny_parameters(tiny_idx_dir)
  notebook_util.set_parameters(notebook, parameters)
  # Which interpreter and environment the kernel got: the venv running the
  # tests, with the fake-device CPU set-up of conftest.py.
  notebook.cells.append(nbformat.v4.new_code_cell(
      'import os, sys, jax\n'
      'print(sys.executable)\n'
      'print(os.environ.get("JAX_PLATFORMS"), jax.device_count())'))

  notebook_util.execute(notebook, tmp_path)  # Raises if a cell fails.

  notebook_util.assert_no_errors(notebook)
  kernel_check = ''.join(o.get('text', '') for o in notebook.cells[-1].outputs)
  assert kernel_check.split('\n')[:2] == [sys.executable, 'cpu 8'], (
      f'kernel ran {kernel_check!r}, expected {sys.executable} with the test '
      'environment')
  for tag, count in FIGURES.items():
    (cell,) = notebook_util.cells_tagged(notebook, tag)
    assert notebook_util.png_count(cell) == count, f'cell {tag!r}: {cell}'
  table = _metrics_table(notebook)
  assert 'spread_to_separation' in table, f'no metrics table: {table!r}'
  assert table.count('\n| ') == len(parameters['CENTER_LOSS_WEIGHTS']), table
  for weight in parameters['CENTER_LOSS_WEIGHTS']:
    assert f'\n| {weight:g} | ' in table, (weight, table)
  # The notebook writes no files.
  assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
