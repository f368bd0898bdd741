"""The tour notebook runs end to end (at a tiny size) and is committed clean."""

import ast
import os
import sys

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _cells_tagged(notebook, tag):
  return [cell for cell in notebook.cells
          if tag in cell.get('metadata', {}).get('tags', [])]


def _parameter_names(source):
  """Names assigned by a cell made only of plain `NAME = value` lines."""
  names = []
  for statement in ast.parse(source).body:
    assert isinstance(statement, ast.Assign), (
        f'parameters cell must only assign constants, found '
        f'{ast.dump(statement)[:80]}')
    for target in statement.targets:
      assert isinstance(target, ast.Name), ast.dump(target)
      names.append(target.id)
  return names


def test_committed_notebook_has_no_outputs():
  notebook = _read_tour()
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type != 'code':
      continue
    assert cell.outputs == [], f'code cell {index} has committed outputs'
    assert cell.execution_count is None, (
        f'code cell {index} has execution_count {cell.execution_count}')


def test_parameters_cell_is_plain_assignments():
  notebook = _read_tour()
  cells = _cells_tagged(notebook, 'parameters')
  assert len(cells) == 1, 'exactly one cell tagged "parameters"'
  names = _parameter_names(cells[0].source)
  assert sorted(names) == sorted(_tiny_parameters(None, None)), (
      'the notebook\'s parameters and the tiny values this test sets differ')


def test_tour_runs_at_tiny_size(tiny_idx_dir, tmp_path):
  notebook = _read_tour()
  parameters = _tiny_parameters(tiny_idx_dir, str(tmp_path / 'runs'))
  (cell,) = _cells_tagged(notebook, 'parameters')
  cell.source = '\n'.join(f'{name} = {value!r}'
                          for name, value in parameters.items())
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
    (cell,) = _cells_tagged(notebook, tag)
    assert any('image/png' in output.get('data', {})
               for output in cell.outputs), f'no figure in cell {tag!r}'
  (table,) = _cells_tagged(notebook, 'metrics-table')
  text = ''.join(output.get('data', {}).get('text/markdown', '')
                 for output in table.outputs)
  assert 'spread_to_separation' in text, f'no metrics table: {table.outputs}'
  assert text.count('\n| ') == len(parameters['CENTER_LOSS_WEIGHTS']), text
  for weight in parameters['CENTER_LOSS_WEIGHTS']:
    assert (tmp_path / 'runs' / f'lambda_{weight:g}' /
            f'features_step_{parameters["NUM_STEPS"]}.png').exists()
