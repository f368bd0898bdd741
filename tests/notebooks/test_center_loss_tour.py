"""The tour notebook runs end to end (at a tiny size) and is committed clean."""

import os
import sys

import pytest

import notebook_util
import repo_paths

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO_ROOT = repo_paths.REPO_ROOT
NOTEBOOK_DIR = os.path.join(REPO_ROOT, 'notebooks')
TOUR = os.path.join(NOTEBOOK_DIR, 'center_loss_tour.ipynb')

# Seconds per cell: generous for a loaded 2-core machine; the whole tiny run
# takes well under a minute.
CELL_TIMEOUT = 300


def _tiny_parameters(data_dir, workdir):
  """Values for the notebook's `parameters` cell: two runs of 4 steps."""
  return {
      'TRAIN_SUBSET': 128,
      'TEST_SUBSET': 60,
      'NUM_STEPS': 4,
      'BATCH_SIZE': 32,
      'STAGE_CHANNELS': (4, 8, 8),
      'CENTER_LOSS_WEIGHTS': (0.0, 0.1),
      'DATA_DIR': data_dir,
      'WORKDIR': workdir,
  }


def _read_tour():
  return nbformat.read(TOUR, as_version=4)


def test_committed_notebook_has_no_outputs():
  notebook = _read_tour()
  notebook_util.assert_committed_clean(notebook)


def test_parameters_cell_is_plain_assignments():
  notebook_util.assert_parameters_are(_read_tour(), _tiny_parameters(None, None))

def test_tour_runs_at_tiny_size(tiny_idx_dir, tmp_path):
  notebook = _read_tour()
  parameters = _tiny_parameters(tiny_idx_dir, str(tmp_path / 'runs'))
  notebook_util.set_parameters(notebook, parameters)
  # Which interpreter and environment the kernel got: the venv running the
  # tests, with the fake-device CPU set-up of conftest.py.
  notebook.cells.append(nbformat.v4.new_code_cell(
      'import os, sys, jax\n'
      'print(sys.executable)\n'
      'print(os.environ.get("JAX_PLATFORMS"), jax.device_count())'))

  client = nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT, kernel_name='python3',
      resources={'metadata': {'path': NOTEBOOK_DIR}})
  client.execute()  # Raises CellExecutionError on any failing cell.

  for index, executed in enumerate(notebook.cells):
    for output in executed.get('outputs', []):
      assert output.output_type != 'error', f'cell {index}: {output}'

  kernel_check = ''.join(o.get('text', '') for o in notebook.cells[-1].outputs)
  assert kernel_check.split('\n')[:2] == [sys.executable, 'cpu 8'], (
      f'kernel ran {kernel_check!r}, expected {sys.executable} with the test '
      'environment')

  for tag in ('center-trajectories', 'feature-plots'):
    (cell,) = notebook_util.cells_tagged(notebook, tag)
    assert any('image/png' in output.get('data', {})
               for output in cell.outputs), f'no figure in cell {tag!r}'
  (table,) = notebook_util.cells_tagged(notebook, 'metrics-table')
  text = ''.join(output.get('data', {}).get('text/markdown', '')
                 for output in table.outputs)
  assert 'spread_to_separation' in text, f'no metrics table: {table.outputs}'
  assert text.count('\n| ') == len(parameters['CENTER_LOSS_WEIGHTS']), text
  for weight in parameters['CENTER_LOSS_WEIGHTS']:
    assert (tmp_path / 'runs' / f'lambda_{weight:g}' /
            f'features_step_{parameters["NUM_STEPS"]}.png').exists()
