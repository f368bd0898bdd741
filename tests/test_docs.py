"""The README is a short front page and the text says what the code does.

README, docs, configs, the package, the experiments and the notebooks say
how to use the code, never when or where something ran: no dates, no CPU
names, no issue numbers. CPU names belong on the reproducibility page only,
dates in the changelog only.
"""

import glob
import os
import re

import pytest

import repo_paths

ROOT = repo_paths.REPO_ROOT
README_MAX_LINES = 250

DATE = re.compile(r'\b20\d\d-\d\d-\d\d\b')
CPU_NAME = re.compile(r'\b(AMD|EPYC|Intel|Xeon|AVX-?\d*|CPU family)\b')
ISSUE = re.compile(r'\b[Ii]ssues? \d+')


def _text_files():
  patterns = ['README.md', 'docs/*.md', 'docs/conf.py', 'configs/*.py',
              'centerloss_jax/**/*.py', 'experiments/*.py',
              'experiments/results/README.md', 'benchmarks/*.py',
              'notebooks/*.ipynb', 'setup.py', 'setup.sh']
  files = set()
  for pattern in patterns:
    files.update(glob.glob(os.path.join(ROOT, pattern), recursive=True))
  return sorted(os.path.relpath(path, ROOT) for path in files)


def test_readme_is_a_short_front_page():
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = f.read().splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f'README.md has {len(lines)} lines; at most {README_MAX_LINES}: move '
      'the rest into docs/')
  first_screen = '\n'.join(lines[:60])
  for command in ('pip install .', './setup.sh', 'pytest', 'import centerloss_jax'):
    assert command in first_screen, f'{command!r} is not on the first screen'


@pytest.mark.parametrize('path', _text_files())
def test_text_names_no_date_cpu_or_issue(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    text = f.read()
  rules = [('an issue number', ISSUE)]
  if path != os.path.join('docs', 'reproducibility.md'):
    rules.append(('a CPU name', CPU_NAME))
  rules.append(('a date', DATE))
  for what, pattern in rules:
    found = [f'line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}'
             for m in pattern.finditer(text)]
    assert not found, f'{path} names {what}: {", ".join(found[:5])}'


@pytest.mark.parametrize('path', ['README.md'] + sorted(
    os.path.relpath(page, ROOT)
    for page in glob.glob(os.path.join(ROOT, 'docs', '*.md'))))
def test_files_the_pages_name_exist(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    text = f.read()
  named = set(re.findall(
      r'\b((?:tests|centerloss_jax|configs|experiments|benchmarks|notebooks)'
      r'/[\w/.-]*\w\.(?:py|md|ipynb))\b', text))
  missing = sorted(name for name in named
                   if not os.path.exists(os.path.join(ROOT, name)))
  assert not missing, f'{path} names files that do not exist: {missing}'
