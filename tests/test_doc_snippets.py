"""Every Python snippet in the README and the docs pages runs as written.

Each ```python block is executed on its own, in a fresh namespace and
nothing prepared for it, as a user pasting it would run it.
"""

import glob
import os
import re

import pytest

import repo_paths

_BLOCK = re.compile(r'^```python\n(.*?)^```$', re.MULTILINE | re.DOTALL)
_PAGES = ['README.md'] + sorted(
    os.path.relpath(path, repo_paths.REPO_ROOT)
    for path in glob.glob(os.path.join(repo_paths.REPO_ROOT, 'docs', '*.md')))


def _python_blocks(page):
  with open(os.path.join(repo_paths.REPO_ROOT, page)) as f:
    return _BLOCK.findall(f.read())


_SNIPPETS = [(page, index, code) for page in _PAGES
             for index, code in enumerate(_python_blocks(page))]


def test_the_pages_have_their_snippets():
  # The quickstart, and functional, linen, NNX, accumulation, variants and
  # compared losses on the page about using the loss.
  assert len(_python_blocks('README.md')) >= 2
  assert len(_python_blocks(os.path.join('docs', 'using_the_loss.md'))) >= 6


@pytest.mark.parametrize('page,index,code', _SNIPPETS,
                         ids=[f'{page}-{index}' for page, index, _ in _SNIPPETS])
def test_snippet_runs(page, index, code, capsys):
  exec(compile(code, f'{page} python block {index}', 'exec'), {})
  capsys.readouterr()
