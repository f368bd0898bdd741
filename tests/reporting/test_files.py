"""Tests of reporting.files.atomic_write: the whole new file, or the old
one, and never a temporary file left behind."""

import os

import pytest

from centerloss_jax import reporting


@pytest.fixture
def rewritten(tmp_path):
  """A file written twice, 'old' then 'new'."""
  path = str(tmp_path / 'results.json')
  with reporting.atomic_write(path) as f:
    f.write('old')
  with reporting.atomic_write(path) as f:
    f.write('new')
  return path


def test_atomic_write_replaces_the_file(rewritten):
  assert open(rewritten).read() == 'new'


def test_atomic_write_leaves_no_temporary_file(rewritten, tmp_path):
  assert os.listdir(tmp_path) == ['results.json']


@pytest.fixture
def failed_write(tmp_path):
  """A complete file, then a write into it that fails half way."""
  path = str(tmp_path / 'roc.npz')
  with reporting.atomic_write(path, 'wb') as f:
    f.write(b'complete')
  with pytest.raises(RuntimeError, match='disk full'):
    with reporting.atomic_write(path, 'wb') as f:
      f.write(b'half')
      raise RuntimeError('disk full')
  return path


def test_a_failed_write_keeps_the_old_content(failed_write):
  assert open(failed_write, 'rb').read() == b'complete'


def test_a_failed_write_leaves_no_temporary_file(failed_write, tmp_path):
  assert os.listdir(tmp_path) == ['roc.npz']


def test_only_write_modes_are_accepted(tmp_path):
  with pytest.raises(ValueError, match="mode must contain 'w', got 'a'"):
    with reporting.atomic_write(str(tmp_path / 'log.txt'), 'a'):
      pass
