"""The face verification notebook: committed with its outputs, and runs at
a tiny size."""

import json
import os
import sys

import numpy as np
import pytest

import notebook_util
import repo_paths

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(repo_paths.REPO_ROOT, 'notebooks',
                        'face_verification.ipynb')

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
  """Values for the notebook's `parameters` cell: two runs of 2 steps of a
  tiny FaceResNet on 16 identities (64 images in batches of 16, half an
  epoch)."""
  return {
      'NUM_TRAIN_IDENTITIES': 16,
      'IMAGES_PER_IDENTITY': 4,
      'NUM_VERIFICATION_IDENTITIES': 20,
      'PAIRS_PER_FOLD': 4,
      'NUM_PROBE_IDENTITIES': 4,
      'NUM_DISTRACTORS': 8,
      'MODEL': {'stem_channels': (4, 8), 'stage_channels': (8, 8, 16, 16),
                'stage_blocks': (1, 1, 1, 1), 'feature_dim': 16},
      'BATCH_SIZE': 16,
      'NUM_EPOCHS': 0.5,
      'CENTER_LOSS_WEIGHTS': (0.0, 0.003),
      'WORKDIR': workdir,
      'NUM_EXAMPLES_SHOWN': 3,
  }


def _figures(num_weights):
  """The cells that show figures, and how many each: one per plot, and one
  hardest-pairs figure per lambda."""
  return {'roc': 1, 'score-histograms': 1, 'hardest-pairs': num_weights,
          'lambda-effect': 1}


def _read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def _assert_tables(notebook, weights):
  table = notebook_util.markdown_output(
      notebook_util.cells_tagged(notebook, 'metrics-table')[0])
  assert 'verification accuracy' in table, f'no metrics table: {table!r}'
  assert table.count('\n| ') == len(weights), table
  for weight in weights:
    assert f'\n| {weight:g} | ' in table, (weight, table)
  lambda_table = notebook_util.markdown_output(
      notebook_util.cells_tagged(notebook, 'lambda-effect')[0])
  assert lambda_table.count('\n| ') == len(weights), lambda_table


def test_committed_notebook_has_its_outputs():
  notebook = _read_notebook()
  assert notebook.cells[0].cell_type == 'markdown', 'starts with an intro'
  weights = notebook_util.committed_parameters(notebook)['CENTER_LOSS_WEIGHTS']
  notebook_util.assert_committed_with_outputs(notebook,
                                              _figures(len(weights)))
  _assert_tables(notebook, weights)


def test_parameters_cell_is_plain_assignments():
  notebook_util.assert_parameters_are(_read_notebook(), _tiny_parameters(None))


def test_notebook_runs_at_tiny_size(tmp_path, monkeypatch):
  notebook = _read_notebook()
  # WORKDIR None: the runs go to a new folder of `tempfile.mkdtemp()`,
  # which the kernel (inheriting this environment) makes under TMPDIR.
  parameters = _tiny_parameters(None)
  notebook_util.set_parameters(notebook, parameters)
  notebook.cells.append(nbformat.v4.new_code_cell(_CHECK_CELL))
  temporary, cwd = tmp_path / 'tmp', tmp_path / 'cwd'
  temporary.mkdir()
  cwd.mkdir()
  monkeypatch.setenv('TMPDIR', str(temporary))

  notebook_util.execute(notebook, cwd)  # Raises if a cell fails.

  notebook_util.assert_no_errors(notebook)
  report = json.loads(''.join(
      o.get('text', '') for o in notebook.cells[-1].outputs).strip()
                      .split('\n')[-1])
  # The kernel is the venv running the tests, with conftest.py's 8 fake CPUs.
  assert (report['executable'], report['platform'],
          report['device_count']) == (sys.executable, 'cpu', 8)

  weights = parameters['CENTER_LOSS_WEIGHTS']
  _assert_tables(notebook, weights)
  for tag, count in _figures(len(weights)).items():
    (cell,) = notebook_util.cells_tagged(notebook, tag)
    assert notebook_util.png_count(cell) == count, f'cell {tag!r}: {cell}'

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
  # The runs, in one new temporary folder; nothing in the working directory.
  (root,) = [path for path in temporary.iterdir()
             if path.name.startswith('face_verification_')]
  assert sorted(os.listdir(root)) == sorted(f'lambda_{w:g}' for w in weights)
  for weight in weights:
    assert (root / f'lambda_{weight:g}' / 'checkpoints' / '2').is_dir()
  assert os.listdir(cwd) == [], os.listdir(cwd)

