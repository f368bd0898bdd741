"""reporting.files.atomic_write: the whole new file, or the old one."""

import os

import pytest

from centerloss_jax import reporting


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'results.json')
  with reporting.atomic_write(path) as f:
    f.write('old')
  with reporting.atomic_write(path) as f:
    f.write('new')
  assert open(path).read() == 'new'
  assert os.listdir(tmp_path) == ['results.json']


def test_a_failed_write_keeps_the_old_content(tmp_path):
  path = str(tmp_path / 'roc.npz')
  with reporting.atomic_write(path, 'wb') as f:
    f.write(b'complete')
  with pytest.raises(RuntimeError, match='disk full'):
    with reporting.atomic_write(path, 'wb') as f:
      f.write(b'half')
      raise RuntimeError('disk full')
  assert open(path, 'rb').read() == b'complete'
  assert os.listdir(tmp_path) == ['roc.npz']


def test_only_write_modes_are_accepted(tmp_path):
  with pytest.raises(ValueError, match="mode must contain 'w', got 'a'"):
    with reporting.atomic_write(str(tmp_path / 'log.txt'), 'a'):
      pass
