"""The MNIST family (MNIST, Fashion-MNIST): IDX files and TFDS data sources.

* `'idx'`: the MNIST-format IDX files, plain or gzipped, e.g. those the
  Debian package `dataset-fashion-mnist` installs in
  `DEFAULT_FASHION_MNIST_DIR`. Needs nothing beyond numpy.
* `'tfds'`: a TFDS dataset, prepared beforehand in ArrayRecord format, read
  with `tfds.data_source` (no TensorFlow needed).

Both fit in host memory, so a split is read once into uint8 images and int32
labels.
"""

from __future__ import annotations

import gzip
import math
import os
from typing import Callable, Optional, Tuple

import numpy as np

from centerloss_jax.data.types import Dataset
from centerloss_jax.data.types import Split
from centerloss_jax.data.types import take_subset
from centerloss_jax.data.types import validate_labels

DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


FASHION_MNIST_CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
    'Sneaker', 'Bag', 'Ankle boot')


MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))


# Class names by dataset name (the config's `input.name`), for both sources.
_CLASS_NAMES = {
    'mnist': MNIST_CLASS_NAMES,
    'fashion_mnist': FASHION_MNIST_CLASS_NAMES,
}


# File names of the IDX files, by split (the t10k files are the test split).
_IDX_FILE_NAMES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


_GZIP_MAGIC = b'\x1f\x8b'


_IDX_UINT8 = 0x08


def read_idx(path: str) -> np.ndarray:
  """Reads an MNIST-format IDX file of unsigned bytes, plain or gzipped.

  The format: two zero bytes, a type code (0x08 = unsigned byte), the number
  of dimensions, one big-endian uint32 per dimension, then the data.

  Args:
    path: the file. Gzip is recognised by its magic bytes, not by the
      extension, since unpacked copies often keep the `.gz` name (and
      vice versa).

  Returns:
    A uint8 array of the shape given in the header.

  Raises:
    ValueError: the file is not an IDX file of unsigned bytes, or its data
      does not have the size its header announces.
  """
  with open(path, 'rb') as f:
    is_gzip = f.read(2) == _GZIP_MAGIC
  opener = gzip.open if is_gzip else open
  with opener(path, 'rb') as f:
    content = f.read()

  if len(content) < 4 or content[0] != 0 or content[1] != 0:
    raise ValueError(
        f'{path} is not an IDX file: expected the magic number 0x0000TTDD '
        '(two zero bytes, a type code, the number of dimensions), got the '
        f'bytes {content[:4]!r}.')
  type_code, ndim = content[2], content[3]
  if type_code != _IDX_UINT8:
    raise ValueError(
        f'{path}: expected IDX type code 0x{_IDX_UINT8:02x} (unsigned byte), '
        f'got 0x{type_code:02x}; only uint8 IDX files are supported.')
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise ValueError(
        f'{path}: header announces {ndim} dimensions ({header_size} header '
        f'bytes) but the file has only {len(content)} bytes.')
  shape = tuple(
      int(d) for d in np.frombuffer(content, dtype='>u4', count=ndim, offset=4))
  expected = math.prod(shape)
  actual = len(content) - header_size
  if actual != expected:
    raise ValueError(
        f'{path}: header announces shape {shape}, i.e. {expected} bytes of '
        f'data, but the file holds {actual} bytes after the header (truncated '
        'or corrupt download?).')
  # `frombuffer` gives a read-only view of `content`; copy to own the memory.
  return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(
      shape).copy()


def _find_idx_file(data_dir: str, base_name: str) -> Optional[str]:
  """Path of `base_name` or `base_name.gz` in `data_dir`, plain first."""
  for name in (base_name, base_name + '.gz'):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  return None


def load_idx_split(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """Loads one split of an MNIST-format dataset stored as IDX files.

  Args:
    data_dir: directory holding `train-images-idx3-ubyte[.gz]`,
      `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]` and
      `t10k-labels-idx1-ubyte[.gz]`.
    split: 'train' or 'test'.

  Returns:
    `(images, labels)`: uint8 images of shape (N, H, W, 1) and int32 labels
    of shape (N,).

  Raises:
    ValueError: unknown split, or files of unexpected rank or sizes.
    FileNotFoundError: the split's files are not in `data_dir`.
  """
  if split not in _IDX_FILE_NAMES:
    raise ValueError(
        f'Unknown IDX split {split!r}; expected one of '
        f'{sorted(_IDX_FILE_NAMES)}.')
  paths = []
  for base_name in _IDX_FILE_NAMES[split]:
    path = _find_idx_file(data_dir, base_name)
    if path is None:
      looked_for = ', '.join(
          f'{n} or {n}.gz' for n in _IDX_FILE_NAMES[split])
      raise FileNotFoundError(
          f'IDX files for split {split!r} not found in directory '
          f'{data_dir!r}: looked for {looked_for} (missing: {base_name}). '
          'For Fashion-MNIST, `apt-get install dataset-fashion-mnist` puts '
          f'them in {DEFAULT_FASHION_MNIST_DIR}; or read the TFDS dataset '
          "'fashion_mnist' instead with the config `input.source='tfds'`.")
    paths.append(path)
  images_path, labels_path = paths

  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3:
    raise ValueError(
        f'{images_path}: expected images of shape (N, H, W), got '
        f'{images.shape}.')
  if labels.ndim != 1:
    raise ValueError(
        f'{labels_path}: expected labels of shape (N,), got {labels.shape}.')
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f'Split {split!r} in {data_dir!r}: {images.shape[0]} images in '
        f'{images_path} but {labels.shape[0]} labels in {labels_path}; the '
        'counts must match.')
  return images[..., np.newaxis], labels.astype(np.int32)


def load_tfds_split(name: str, split: str,
                    data_dir: Optional[str] = None
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Loads one split of a TFDS image classification dataset into memory.

  Uses `tfds.data_source` (random access to ArrayRecord files) rather than
  `tfds.load` (a `tf.data` pipeline): it needs no TensorFlow, and reading by
  index is deterministic, so the whole split lands in numpy in its canonical
  order and the shuffling of `epoch_batches` alone decides the data order.
  The dataset must have been prepared in ArrayRecord format
  (`tfds build NAME --file_format=array_record`).

  Args:
    name: TFDS name, e.g. 'mnist' or 'fashion_mnist'.
    split: TFDS split, e.g. 'train', 'test' or 'train[:1000]'.
    data_dir: TFDS data directory; None for TFDS's default.

  Returns:
    `(images, labels)`: uint8 images (N, H, W, C) and int32 labels (N,).

  Raises:
    ValueError: the images are not uint8 or the labels not integers.
  """
  # Imported here: TFDS is slow to import and the IDX path does not need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.data_source(name, split=split, data_dir=data_dir)
  # One example at a time: `__getitems__` would batch the reads, but
  # `tfds.testing.mock_data` (tfds 4.9) breaks it, and for datasets this
  # small the per-index loop takes seconds at most.
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex['image']) for ex in examples])
  labels = np.asarray([ex['label'] for ex in examples])
  if images.dtype != np.uint8:
    raise ValueError(
        f'TFDS {name!r} split {split!r}: expected uint8 images, got '
        f'{images.dtype}.')
  if images.ndim == 3:  # Grayscale stored without a channel axis.
    images = images[..., np.newaxis]
  if images.ndim != 4:
    raise ValueError(
        f'TFDS {name!r} split {split!r}: expected images (N, H, W, C), got '
        f'shape {images.shape}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f'TFDS {name!r} split {split!r}: expected integer labels, got '
        f'{labels.dtype}.')
  return images, labels.astype(np.int32)



def load_idx_dataset(*, name: str = 'fashion_mnist',
                     data_dir: Optional[str] = None, num_classes: int = 10,
                     train_subset: Optional[int] = None,
                     test_subset: Optional[int] = None) -> Dataset:
  """An MNIST-format dataset from its four IDX files.

  Args:
    name: 'fashion_mnist' or 'mnist' picks the class names (any other name
      numbers the classes).
    data_dir: the directory of the IDX files; None for
      `DEFAULT_FASHION_MNIST_DIR`, where `dataset-fashion-mnist` puts them.
    num_classes: the number of classes; labels are checked against it.
    train_subset: keep the first N training examples, for quick runs.
    test_subset: keep the first N test examples.

  Returns:
    The `Dataset` (train and test splits, no open-set sets).

  Raises:
    ValueError: a `name` other than 'fashion_mnist' with the default
      `data_dir` (which holds Fashion-MNIST), among others.
  """
  if data_dir is None and name != 'fashion_mnist':
    # The default directory holds Fashion-MNIST: training on it under
    # another name would be silently mislabelled.
    raise ValueError(
        f'input.name={name!r} with the default data_dir, which holds '
        f'Fashion-MNIST ({DEFAULT_FASHION_MNIST_DIR}): set input.data_dir to '
        f"the IDX files of {name!r}, or name='fashion_mnist'.")
  return _dataset_from_splits(
      lambda split: load_idx_split(data_dir or DEFAULT_FASHION_MNIST_DIR,
                                   split),
      name=name, num_classes=num_classes, train_subset=train_subset,
      test_subset=test_subset)


def load_tfds_dataset(*, name: str, data_dir: Optional[str] = None,
                      num_classes: int, train_subset: Optional[int] = None,
                      test_subset: Optional[int] = None) -> Dataset:
  """A TFDS image classification dataset's 'train' and 'test' splits.

  Args:
    name: the TFDS name, e.g. 'mnist' or 'fashion_mnist' (which also picks
      the class names).
    data_dir: the TFDS data directory; None for TFDS's default.
    num_classes: the number of classes; labels are checked against it.
    train_subset: keep the first N training examples, for quick runs.
    test_subset: keep the first N test examples.

  Returns:
    The `Dataset` (train and test splits, no open-set sets).
  """
  return _dataset_from_splits(
      lambda split: load_tfds_split(name, split, data_dir=data_dir),
      name=name, num_classes=num_classes, train_subset=train_subset,
      test_subset=test_subset)


def _dataset_from_splits(
    load_split: Callable[[str], Tuple[np.ndarray, np.ndarray]], *, name: str,
    num_classes: int, train_subset: Optional[int],
    test_subset: Optional[int]) -> Dataset:
  """A `Dataset` of `load_split('train')` and `load_split('test')`."""
  num_classes = int(num_classes)
  class_names = _CLASS_NAMES.get(name)
  if class_names is None:
    class_names = tuple(str(i) for i in range(num_classes))
  elif len(class_names) != num_classes:
    raise ValueError(
        f'Dataset {name!r} has {len(class_names)} classes, but num_classes='
        f'{num_classes}.')
  splits = {}
  for split, subset in (('train', train_subset), ('test', test_subset)):
    images, labels = load_split(split)
    images, labels = take_subset(images, labels, subset, split)
    validate_labels(labels, num_classes, split)
    splits[split] = Split(images=images, labels=labels, name=split)
  if splits['train'].images.shape[1:] != splits['test'].images.shape[1:]:
    raise ValueError(
        f'Train images {splits["train"].images.shape[1:]} and test images '
        f'{splits["test"].images.shape[1:]} differ in shape.')
  return Dataset(name=name, train=splits['train'], test=splits['test'],
                 num_classes=num_classes, class_names=tuple(class_names),
                 image_shape=tuple(splits['train'].images.shape[1:]))
