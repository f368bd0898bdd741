"""Test set-up: 8 fake CPU devices, configured before JAX initialises."""

import os
import shutil
import tempfile

# Must run before the first `import jax` anywhere in the test session: XLA
# reads the flag once, when the CPU backend starts.
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''),
     '--xla_force_host_platform_device_count=8']).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'
# One XLA compilation cache for the session, its subprocesses included (the
# CLI and multi-process tests): many tests compile the same tiny models'
# programs, and on 2 cores a FaceResNet init alone compiles for ~30 s.
# Fresh per session, so no run depends on an earlier one's files.
_XLA_CACHE_DIR = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _XLA_CACHE_DIR = tempfile.mkdtemp(prefix='centerloss_jax_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE_DIR
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import gzip  # pylint: disable=g-import-not-at-top,wrong-import-position
import struct  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def _write_idx_gz(path, array):
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
  header += struct.pack('>' + 'I' * array.ndim, *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _XLA_CACHE_DIR is not None:
    shutil.rmtree(_XLA_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_idx_dir(tmp_path_factory):
  """A Fashion-MNIST-shaped IDX directory: 256 train, 100 test images.

  Each class is a bright square at its own position plus noise, so a tiny
  LeNet++ can learn something in a few steps.
  """
  directory = tmp_path_factory.mktemp('tiny_fashion_mnist')
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 256), ('t10k', 100)):
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      row, col = divmod(int(label), 5)
      images[i, 4 + 12 * row:12 + 12 * row, 2 + 5 * col:6 + 5 * col] = 250
    _write_idx_gz(directory / f'{prefix}-images-idx3-ubyte.gz', images)
    _write_idx_gz(directory / f'{prefix}-labels-idx1-ubyte.gz', labels)
  return str(directory)
