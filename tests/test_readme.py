"""Every Python snippet in the README runs as written.

Each ```python block is executed on its own, in a fresh namespace and
nothing prepared for it, as a user pasting it would run it.
"""

import os
import re

import pytest

import repo_paths

_BLOCK = re.compile(r'^```python\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def _python_blocks():
  with open(os.path.join(repo_paths.REPO_ROOT, 'README.md')) as f:
    readme = f.read()
  return _BLOCK.findall(readme)


def test_the_readme_has_its_snippets():
  # Functional, linen, NNX, accumulation, variants, compared losses.
  assert len(_python_blocks()) >= 6


@pytest.mark.parametrize('index', range(len(_python_blocks())))
def test_readme_snippet_runs(index, capsys):
  code = _python_blocks()[index]
  exec(compile(code, f'README.md python block {index}', 'exec'), {})
  capsys.readouterr()
