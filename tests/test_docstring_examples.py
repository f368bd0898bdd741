"""The `Examples:` of the package's docstrings run as written.

Every module of `centerloss_jax` is one test: its doctests (the `>>>` lines of
its docstrings) run with doctest, and a failure shows doctest's report. A
module that fails to import fails its test (a subpackage that fails to
import fails the collection). The programs (modules with a `__main__` block)
define absl flags at import, which two of them cannot do in one process, so
each of those runs in its own interpreter. The tests' 8 fake CPU devices
(conftest) serve the examples that shard over a mesh.

A second test keeps the coverage from shrinking: each public entry point
listed in `DOCUMENTED` has an `Examples:` section with at least one `>>>`
(a literal block for those in `NOT_EXECUTED`).
"""

import doctest
import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import repo_paths

PACKAGE = 'centerloss_jax'

OPTION_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The public entry points whose docstrings must hold an example:
# (module, attribute path in it), '' for the module's own docstring.
DOCUMENTED = [
    ('centerloss_jax', 'center_loss'),
    ('centerloss_jax', 'update_centers'),
    ('centerloss_jax', 'center_statistics'),
    ('centerloss_jax', 'apply_center_statistics'),
    ('centerloss_jax', 'accumulate_centers'),
    ('centerloss_jax', 'CenterStatistics'),
    ('centerloss_jax', 'center_diagnostics'),
    ('centerloss_jax', 'valid_label_mask'),
    ('centerloss_jax', 'invalid_label_count'),
    ('centerloss_jax.linen', 'CenterLoss'),
    ('centerloss_jax.nnx', 'Centers'),
    ('centerloss_jax.nnx', 'CenterLoss'),
    ('centerloss_jax.losses', 'softmax_cross_entropy_loss'),
    ('centerloss_jax.losses', 'contrastive_loss'),
    ('centerloss_jax.losses', 'contrastive_loss_sums'),
    ('centerloss_jax.losses', 'batch_hard_triplet_loss'),
    ('centerloss_jax.losses', 'batch_hard_triplet_loss_sums'),
    ('centerloss_jax.losses', 'sphereface_logits'),
    ('centerloss_jax.losses', 'sphereface_psi'),
    ('centerloss_jax.losses', 'cosface_logits'),
    ('centerloss_jax.losses', 'arcface_logits'),
    ('centerloss_jax.losses', 'margin_logits'),
    ('centerloss_jax.losses', 'l2_normalize'),
    ('centerloss_jax.losses.margin', 'cosine_scores'),
    ('centerloss_jax.losses.class_sharded', ''),
    ('centerloss_jax.models', 'LeNetPlusPlus'),
    ('centerloss_jax.models', 'FaceResNet'),
    ('centerloss_jax.models', 'FaceCNN'),
    ('centerloss_jax.models', 'CosineClassifier'),
    ('centerloss_jax.models', 'create_model'),
    ('centerloss_jax.metrics', 'compactness_metrics'),
    ('centerloss_jax.metrics.verification', 'kfold_verification'),
    ('centerloss_jax.metrics.verification', 'roc_curve'),
    ('centerloss_jax.metrics.verification', 'roc_auc'),
    ('centerloss_jax.metrics.verification', 'tar_at_far'),
    ('centerloss_jax.metrics.identification', 'cmc'),
    ('centerloss_jax.metrics.identification', 'identification_report'),
    ('centerloss_jax.data', 'load_dataset'),
    ('centerloss_jax.training', 'DataParallel.create'),
    ('centerloss_jax.training', 'create_train_state'),
    ('centerloss_jax.training', 'train_and_evaluate'),
]

# Entries whose example is a literal block, not doctest lines: a real run
# needs data files and takes longer than a docstring example should.
NOT_EXECUTED = {('centerloss_jax.training', 'train_and_evaluate')}


def _fail_on_import_error(name):
  raise ImportError(f'pkgutil could not import package {name}.')


def _module_names() -> list[str]:
  """Every module of the package, subpackages included, sorted."""
  package = importlib.import_module(PACKAGE)
  return sorted([PACKAGE] + [
      info.name for info in pkgutil.walk_packages(
          package.__path__, PACKAGE + '.', onerror=_fail_on_import_error)])


def _is_program(module_name: str) -> bool:
  """Whether the module is a program (`python -m ...`), by its source."""
  with open(importlib.util.find_spec(module_name).origin) as f:
    return "if __name__ == '__main__':" in f.read()


def run_doctests(module_name: str) -> str:
  """Runs the module's doctests; returns doctest's report of the failures."""
  module = importlib.import_module(module_name)
  runner = doctest.DocTestRunner(optionflags=OPTION_FLAGS)
  report = []
  for test in doctest.DocTestFinder().find(module):
    runner.run(test, out=report.append)
  return ''.join(report)


@pytest.mark.parametrize('module_name', _module_names())
def test_doctests_pass(module_name):
  if not _is_program(module_name):
    report = run_doctests(module_name)
    assert not report, f'doctests of {module_name} failed:\n{report}'
    return
  script = ('import sys, test_docstring_examples as t\n'
            f'report = t.run_doctests({module_name!r})\n'
            'sys.stdout.write(report)\n'
            'sys.exit(1 if report else 0)\n')
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [repo_paths.TESTS_DIR, repo_paths.REPO_ROOT,
       env.get('PYTHONPATH', '')])
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          cwd=repo_paths.REPO_ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, (
      f'doctests of {module_name} failed (in its own interpreter):\n'
      f'{result.stdout}{result.stderr}')


def _resolve(module_name: str, path: str):
  """The object at dotted `path` in the module; the module for ''."""
  obj = importlib.import_module(module_name)
  for name in filter(None, path.split('.')):
    obj = getattr(obj, name)
  return obj


@pytest.mark.parametrize('module_name,path', DOCUMENTED,
                         ids=[f'{m}:{p}' for m, p in DOCUMENTED])
def test_public_api_has_examples(module_name, path):
  doc = inspect.getdoc(_resolve(module_name, path)) or ''
  lines = [line.strip() for line in doc.splitlines()]
  assert 'Examples:' in lines, (
      f'{module_name}:{path or "(module)"} has no "Examples:" section in its '
      'docstring.')
  if (module_name, path) in NOT_EXECUTED:
    return
  section = lines[lines.index('Examples:'):]
  assert any(line.startswith('>>>') for line in section), (
      f'the Examples of {module_name}:{path or "(module)"} have no ">>>" '
      'line.')
