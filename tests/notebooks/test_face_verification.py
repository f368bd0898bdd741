"""The face verification notebook runs (tiny) and is committed clean."""

import json
import os
import sys

import numpy as np
import pytest

import notebook_util
import repo_paths

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO_ROOT = repo_paths.REPO_ROOT
NOTEBOOK_DIR = os.path.join(REPO_ROOT, 'notebooks')
NOTEBOOK = os.path.join(NOTEBOOK_DIR, 'face_verification.ipynb')

# Seconds per cell: generous for a loaded 2-core machine; the whole tiny run
# takes about a minute, most of it compiling the two runs' steps.
CELL_TIMEOUT = 300

# Appended to the executed notebook: what the test reads back from the
# kernel, as one JSON line. The trainer's ROC (`roc.npz`, from its own
# feature extraction) must be the notebook's, and `hardest_pairs` must pick
# the extreme scores.
_CHECK_CELL = '''
import json, os, sys, jax
report = {'executable': sys.executable,
          'platform': os.environ.get('JAX_PLATFORMS'),
          'device_count': jax.device_count(), 'runs': {}}
for weight, run in runs.items():
  saved = np.load(os.path.join(run['workdir'], 'roc.npz'))
  far, tar = curves[f'lambda {weight:g}']
  highest, lowest = hardest_pairs(results[weight]['scores'], pairs.is_same, 3)
  report['runs'][f'{weight:g}'] = {
      'step': int(saved['step']),
      'notebook_auc': verification.roc_auc(far, tar),
      'trainer_auc': verification.roc_auc(saved['far'], saved['tar']),
      'notebook_accuracy': results[weight]['accuracy'],
      'trainer_accuracy': run['metrics'][pairs.name + '/accuracy'],
      'highest': [int(i) for i in highest],
      'lowest': [int(i) for i in lowest],
      'scores': [float(s) for s in results[weight]['scores']],
  }
report['is_same'] = [bool(s) for s in pairs.is_same]
print(json.dumps(report))
'''


def _tiny_parameters(workdir):
  """Values for the notebook's `parameters` cell: two runs of 2 steps."""
  return {
      'CONFIG_VARIANT': 'runlocal',
      'NUM_EPOCHS': 0.5,  # runlocal: 64 images / batch 16, so 2 steps.
      'CENTER_LOSS_WEIGHTS': (0.0, 0.003),
      'WORKDIR': workdir,
      'NUM_EXAMPLES_SHOWN': 3,
  }


def _read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def _png_count(cell):
  return sum('image/png' in output.get('data', {}) for output in cell.outputs)


def _markdown(cell):
  return ''.join(output.get('data', {}).get('text/markdown', '')
                 for output in cell.outputs)


def test_committed_notebook_has_no_outputs():
  notebook = _read_notebook()
  notebook_util.assert_committed_clean(notebook)
  assert notebook.cells[0].cell_type == 'markdown', 'starts with an intro'


def test_parameters_cell_is_plain_assignments():
  notebook_util.assert_parameters_are(_read_notebook(), _tiny_parameters(None))

def test_notebook_runs_at_tiny_size(tmp_path):
  notebook = _read_notebook()
  parameters = _tiny_parameters(str(tmp_path / 'runs'))
  notebook_util.set_parameters(notebook, parameters)
  notebook.cells.append(nbformat.v4.new_code_cell(_CHECK_CELL))

  client = nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT, kernel_name='python3',
      resources={'metadata': {'path': NOTEBOOK_DIR}})
  client.execute()  # Raises CellExecutionError on any failing cell.

  for index, executed in enumerate(notebook.cells):
    for output in executed.get('outputs', []):
      assert output.output_type != 'error', f'cell {index}: {output}'

  report = json.loads(''.join(
      o.get('text', '') for o in notebook.cells[-1].outputs).strip()
                      .split('\n')[-1])
  # The kernel is the venv running the tests, with conftest.py's 8 fake CPUs.
  assert (report['executable'], report['platform'],
          report['device_count']) == (sys.executable, 'cpu', 8)

  weights = parameters['CENTER_LOSS_WEIGHTS']
  table = _markdown(notebook_util.cells_tagged(notebook, 'metrics-table')[0])
  assert 'verification accuracy' in table, f'no metrics table: {table!r}'
  assert table.count('\n| ') == len(weights), table
  for weight in weights:
    assert f'\n| {weight:g} | ' in table, (weight, table)
  lambda_table = _markdown(notebook_util.cells_tagged(notebook, 'lambda-effect')[0])
  assert lambda_table.count('\n| ') == len(weights), lambda_table

  # One figure per plot, and one hardest-pairs figure per lambda.
  for tag, figures in (('roc', 1), ('score-histograms', 1),
                       ('hardest-pairs', len(weights)),
                       ('lambda-effect', 1)):
    (cell,) = notebook_util.cells_tagged(notebook, tag)
    assert _png_count(cell) == figures, f'cell {tag!r}: {cell.outputs}'

  is_same = np.array(report['is_same'])
  assert sorted(report['runs']) == sorted(f'{w:g}' for w in weights)
  for weight, run in report['runs'].items():
    assert run['step'] == 2, (weight, run['step'])  # 0.5 epoch of 4 steps.
    # The notebook's own feature extraction reproduces the trainer's metrics.
    assert run['notebook_auc'] == pytest.approx(run['trainer_auc'], abs=1e-6)
    assert run['notebook_accuracy'] == pytest.approx(run['trainer_accuracy'],
                                                     abs=1e-6)
    # The hardest pairs are the extremes: an independent sort of the scores.
    scores = np.array(run['scores'])
    assert not is_same[run['highest']].any()
    assert is_same[run['lowest']].all()
    np.testing.assert_array_equal(
        scores[run['highest']], np.sort(scores[~is_same])[::-1][:3])
    np.testing.assert_array_equal(
        scores[run['lowest']], np.sort(scores[is_same])[:3])
    assert (tmp_path / 'runs' / 'runlocal_0.5_epochs' / f'lambda_{weight}' /
            'checkpoints' / '2').is_dir()
