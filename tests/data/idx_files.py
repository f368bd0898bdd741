"""MNIST-format IDX files for the data tests, written under tmp_path."""

import gzip
import os
import struct

import numpy as np


def write_idx(path, array, *, compress=False, magic=None):
  """Writes `array` (uint8) as an IDX file; `magic` overrides the header."""
  array = np.asarray(array, dtype=np.uint8)
  if magic is None:
    magic = bytes([0, 0, 0x08, array.ndim])
  content = magic + struct.pack(f'>{array.ndim}I', *array.shape) + (
      array.tobytes())
  with (gzip.open if compress else open)(path, 'wb') as f:
    f.write(content)


def write_idx_split(data_dir, split, images, labels, compress=True):
  """Writes a split's two files with the MNIST file names."""
  prefix = 'train' if split == 'train' else 't10k'
  suffix = '.gz' if compress else ''
  write_idx(os.path.join(data_dir, f'{prefix}-images-idx3-ubyte{suffix}'),
            images, compress=compress)
  write_idx(os.path.join(data_dir, f'{prefix}-labels-idx1-ubyte{suffix}'),
            labels, compress=compress)


def random_split(num_examples, *, height=4, width=3, num_classes=10, seed=0):
  """Random uint8 images (N, H, W) and labels (N,), as stored in IDX files."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, height, width), dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_examples, dtype=np.uint8)
  return images, labels


def idx_source(**overrides):
  """`data.load_dataset` arguments for Fashion-MNIST IDX files."""
  values = dict(source='idx', name='fashion_mnist', data_dir=None,
                num_classes=10, train_subset=None, test_subset=None)
  values.update(overrides)
  return values
