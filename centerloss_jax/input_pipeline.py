"""The input pipeline: every dataset of this codebase enters through here.

All of it runs on the host in numpy; the trainer moves batches to devices.
Small image datasets (MNIST, Fashion-MNIST) fit in host memory, so a split is
read once into a `Split` of uint8 images and int32 labels, and batches are cut
from it by index. That makes the data order a pure function of
`(seed, epoch, step)`: a run resumed from a checkpoint at step `s` of an epoch
sees exactly the batches (and augmentations) an uninterrupted run would have.

Sources:

* `'idx'`: the MNIST-format IDX files, plain or gzipped, e.g. those the
  Debian package `dataset-fashion-mnist` installs in
  `DEFAULT_FASHION_MNIST_DIR`. Needs nothing beyond numpy.
* `'tfds'`: a TFDS dataset, prepared beforehand in ArrayRecord format, read
  with `tfds.data_source` (no TensorFlow needed).
* `'identity_folders'`: a face training set, one folder per identity, read
  lazily image by image (`face_data`), with an LFW-style pairs set.
* `'synthetic_faces'`: an offline synthetic identity set (`synthetic_faces`)
  for tests and the open-set demo.

Face datasets also carry open-set evaluation sets (`PairsSet`,
`IdentificationSet`) of identities that are not in the training split.

Batches are dicts `{'image', 'label', 'weight'}`. The last, partial global
batch of an epoch is padded to full size with weight-0 examples, so shapes stay
static (one compilation) and evaluation counts each example exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

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

SOURCES = ('idx', 'tfds', 'synthetic_faces', 'identity_folders')

# File names of the IDX files, by split (the t10k files are the test split).
_IDX_FILE_NAMES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

_GZIP_MAGIC = b'\x1f\x8b'
_IDX_UINT8 = 0x08

Batch = Dict[str, np.ndarray]
AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------


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


def validate_labels(labels: np.ndarray, num_classes: int, split: str) -> None:
  """Checks that every label lies in `[0, num_classes)`.

  The loss masks out-of-range labels silently; a dataset that has them is
  misconfigured (wrong `num_classes` or wrong files), so catch it at load.

  Args:
    labels: integer labels, shape (N,).
    num_classes: number of classes.
    split: split name, for the error message.

  Raises:
    ValueError: naming the first bad label, its index, the split and the
      expected range.
  """
  labels = np.asarray(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    index = int(np.argmax(bad))
    raise ValueError(
        f'Split {split!r}: label {labels[index]} at index {index} is outside '
        f'the expected range [0, {num_classes}) ({int(bad.sum())} of '
        f'{labels.size} labels are out of range). Check `num_classes` and the '
        'data files.')


# ---------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images indexable by example, labels in host memory.

  Attributes:
    images: uint8 (N, H, W, C): an ndarray, or for datasets too large for
      host memory a lazy array-like (`face_data.ImageFiles`) with `shape`,
      `dtype`, `ndim`, `len()`, slicing and indexing by an int array, which
      reads and decodes only the images a batch asks for.
    labels: int32 (N,).
    name: split name, e.g. 'train'.
  """
  images: Any
  labels: np.ndarray
  name: str

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
          f'Split {self.name!r}: images must be uint8 (N, H, W, C), got '
          f'{self.images.dtype} {self.images.shape}.')
    if self.labels.dtype != np.int32 or self.labels.shape != (
        self.images.shape[0],):
      raise ValueError(
          f'Split {self.name!r}: labels must be int32 of shape '
          f'({self.images.shape[0]},), got {self.labels.dtype} '
          f'{self.labels.shape}.')

  @property
  def num_examples(self) -> int:
    """Number of examples N."""
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class PairsSet:
  """Verification pairs (the LFW protocol): images plus pairs of indices.

  Attributes:
    images: uint8 (N, H, W, C), an ndarray or a lazy array-like with
      `shape`, `dtype`, `ndim`, `len()` and indexing by an int array (see
      `face_data.ImageFiles`). Each image is read once, however many pairs
      it is in.
    left: int (P,) index of each pair's first image in `images`.
    right: int (P,) index of each pair's second image.
    is_same: bool (P,) whether the two images show the same identity.
    fold: int (P,) fold of each pair, in [0, num_folds) (10 for LFW).
    name: the set's name for metrics and plots, e.g. 'lfw'.
  """
  images: Any
  left: np.ndarray
  right: np.ndarray
  is_same: np.ndarray
  fold: np.ndarray
  name: str

  def __post_init__(self):
    n = len(self.images)
    num_pairs = self.left.shape[0]
    for field in ('left', 'right', 'is_same', 'fold'):
      value = getattr(self, field)
      if value.shape != (num_pairs,):
        raise ValueError(f'PairsSet {self.name!r}: {field} must have shape '
                         f'({num_pairs},), got {value.shape}.')
    for field in ('left', 'right'):
      value = getattr(self, field)
      if num_pairs and (value.min() < 0 or value.max() >= n):
        raise ValueError(f'PairsSet {self.name!r}: {field} indices must be in '
                         f'[0, {n}), got [{value.min()}, {value.max()}].')

  @property
  def num_folds(self) -> int:
    return int(self.fold.max()) + 1 if self.fold.size else 0


@dataclasses.dataclass(frozen=True)
class IdentificationSet:
  """The MegaFace-style identification protocol's images.

  Every image of `probes` is a probe; each other image of its identity is,
  in turn, its one mate in a gallery with all of `distractors`. Rank-k
  counts the probe/mate pairs whose mate scores among the top k.

  Attributes:
    probes: a Split of identities unseen in training, >= 2 images each.
    distractors: uint8 (M, H, W, C) images of other identities (ndarray or
      lazy, as `PairsSet.images`).
    name: the set's name for metrics, e.g. 'megaface'.
  """
  probes: Split
  distractors: Any
  name: str


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train and a test split plus what the model needs to know about them.

  Attributes:
    train: the training split.
    test: the test split (closed set: the training classes).
    num_classes: number of classes.
    class_names: one name per class.
    image_shape: (H, W, C) of one image.
    verification: open-set verification pairs of identities not in `train`
      (face datasets), or None.
    identification: open-set identification images, or None.
  """
  train: Split
  test: Split
  num_classes: int
  class_names: Tuple[str, ...]
  image_shape: Tuple[int, int, int]
  verification: Optional[PairsSet] = None
  identification: Optional[IdentificationSet] = None


def take_subset(images: Any, labels: np.ndarray, subset: Optional[int],
                split: str) -> Tuple[Any, np.ndarray]:
  """The first `subset` examples of a split, or all when `subset` is None.

  Args:
    images: ndarray or lazy `face_data.ImageFiles` (sliced lazily).
    labels: (N,) labels.
    subset: number of examples to keep, or None.
    split: split name for the error message.

  Returns:
    `(images, labels)` cut to `subset`.

  Raises:
    ValueError: `subset` outside [1, N].
  """
  if subset is None:
    return images, labels
  if not 1 <= subset <= labels.shape[0]:
    raise ValueError(
        f'Subset of split {split!r} must be in [1, {labels.shape[0]}] (the '
        f'split size), got {subset}.')
  return images[:subset], labels[:subset]


def load_dataset(input_config: Any) -> Dataset:
  """Loads the train and test splits described by the `input` config.

  Args:
    input_config: ConfigDict with `source` ('idx', 'tfds', or the face
      sources 'synthetic_faces' (`synthetic_faces.load_synthetic_faces`) and
      'identity_folders' (`face_data.load_identity_folders`), which document
      their own fields), `name` (TFDS
      name, e.g. 'mnist' or 'fashion_mnist'; for 'idx' it only picks the class
      names), `data_dir` (None: `DEFAULT_FASHION_MNIST_DIR` for 'idx', TFDS's
      default for 'tfds'), `num_classes`, and optionally `train_subset` /
      `test_subset` (int: keep the first N examples, for quick runs).

  Returns:
    A `Dataset` whose labels have been checked against `num_classes`.

  Raises:
    ValueError: unknown source, labels out of range, inconsistent shapes, or
      `num_classes` that does not match a known dataset's class names.
  """
  source = input_config.source
  # Face datasets (identities, with open-set evaluation sets) have loaders
  # of their own; imported here because they build on this module.
  if source == 'synthetic_faces':
    from centerloss_jax import synthetic_faces  # pylint: disable=g-import-not-at-top
    return synthetic_faces.load_synthetic_faces(input_config)
  if source == 'identity_folders':
    from centerloss_jax import face_data  # pylint: disable=g-import-not-at-top
    return face_data.load_identity_folders(input_config)
  name = input_config.name
  data_dir = input_config.get('data_dir', None)
  num_classes = int(input_config.num_classes)
  if source == 'idx':
    load = functools.partial(load_idx_split,
                             data_dir or DEFAULT_FASHION_MNIST_DIR)
  elif source == 'tfds':
    load = functools.partial(load_tfds_split, name, data_dir=data_dir)
  else:
    raise ValueError(
        f'Unknown input source {source!r}; expected one of {SOURCES}.')

  class_names = _CLASS_NAMES.get(name)
  if class_names is None:
    class_names = tuple(str(i) for i in range(num_classes))
  elif len(class_names) != num_classes:
    raise ValueError(
        f'Dataset {name!r} has {len(class_names)} classes, but num_classes='
        f'{num_classes}.')

  splits = {}
  for split, subset_key in (('train', 'train_subset'),
                            ('test', 'test_subset')):
    images, labels = load(split)
    images, labels = take_subset(images, labels,
                                 input_config.get(subset_key, None), split)
    validate_labels(labels, num_classes, split)
    splits[split] = Split(images=images, labels=labels, name=split)
  if splits['train'].images.shape[1:] != splits['test'].images.shape[1:]:
    raise ValueError(
        f'Train images {splits["train"].images.shape[1:]} and test images '
        f'{splits["test"].images.shape[1:]} differ in shape.')
  return Dataset(train=splits['train'], test=splits['test'],
                 num_classes=num_classes, class_names=tuple(class_names),
                 image_shape=tuple(splits['train'].images.shape[1:]))


# ---------------------------------------------------------------------------
# Preprocessing and augmentation.
# ---------------------------------------------------------------------------


def normalize_images(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 `(x - 127.5) / 128`, as the Caffe reference.

  Args:
    images: uint8 images, any shape.

  Returns:
    float32 images in [-0.9961, 0.9961].
  """
  return (images.astype(np.float32) - 127.5) / 128.0


def augment(images: np.ndarray, rng: np.random.Generator, *,
            crop_padding: int, flip: bool) -> np.ndarray:
  """Random crop and horizontal flip, drawn independently per image.

  The crop zero-pads each side by `crop_padding` pixels and cuts a window of
  the original size at a uniform offset, i.e. shifts the image by up to
  `crop_padding` pixels, filling with 0 (the MNIST background). Horizontal
  flips suit Fashion-MNIST but not digits (a flipped 2 is no digit).

  Args:
    images: uint8 (B, H, W, C).
    rng: the source of randomness; the result is a function of its state.
    crop_padding: pixels of padding for the random crop; 0 disables it.
    flip: whether to flip each image left-right with probability 1/2.

  Returns:
    New uint8 images of the same shape.
  """
  batch, height, width, _ = images.shape
  out = images.copy()
  if crop_padding > 0:
    pad = crop_padding
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, size=batch)
    left = rng.integers(0, 2 * pad + 1, size=batch)
    rows = top[:, None] + np.arange(height)  # (B, H)
    cols = left[:, None] + np.arange(width)  # (B, W)
    # One gather for the whole batch instead of a Python loop over images.
    out = padded[np.arange(batch)[:, None, None], rows[:, :, None],
                 cols[:, None, :]]
  if flip:
    flipped = rng.random(batch) < 0.5
    out[flipped] = out[flipped, :, ::-1]
  return out


def make_augment_fn(crop_padding: int = 0,
                    flip: bool = False) -> Optional[AugmentFn]:
  """`augment` with fixed settings, or None when it would do nothing.

  Args:
    crop_padding: see `augment`.
    flip: see `augment`.

  Returns:
    A function `(images, rng) -> images` for `epoch_batches`, or None.
  """
  if crop_padding <= 0 and not flip:
    return None
  return functools.partial(augment, crop_padding=crop_padding, flip=flip)


# ---------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, global_batch_size: int,
                    drop_remainder: bool = False) -> int:
  """Number of global batches in one epoch.

  Args:
    num_examples: examples in the split.
    global_batch_size: examples per global batch (all processes together).
    drop_remainder: whether the final partial batch is dropped (rather than
      padded).

  Returns:
    `num_examples // global_batch_size` when dropping the remainder, else
    the ceiling of the quotient.
  """
  if global_batch_size <= 0:
    raise ValueError(f'global_batch_size must be positive, got '
                     f'{global_batch_size}.')
  if drop_remainder:
    return num_examples // global_batch_size
  return -(-num_examples // global_batch_size)


def epoch_permutation(num_examples: int, *, epoch: int, seed: int,
                      shuffle: bool) -> np.ndarray:
  """The order in which one epoch visits the examples.

  Args:
    num_examples: examples in the split.
    epoch: epoch number (non-negative).
    seed: data seed (non-negative).
    shuffle: whether to shuffle; if not, the order is the identity.

  Returns:
    int64 permutation of `range(num_examples)`, a function of
    `(seed, epoch)` only, so every process and every resumed run agree on it.
  """
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def identity_balanced_order(labels: np.ndarray, *, images_per_identity: int,
                            epoch: int, seed: int) -> np.ndarray:
  """An epoch's example order made of runs of K images of one identity.

  What the pair losses need (batch-hard triplet mining, Hermans et al. 2017,
  and contrastive pairs): with a batch of P * K examples every batch holds P
  runs of K same-identity images, so every anchor has K - 1 positives. In
  a random batch of 128 from 1,000 identities of 20 images almost none has
  one.

  Each identity's images are shuffled and cut into runs of K (an identity
  with n images gives n // K runs; the remainder sits this epoch out, and
  the next epoch's shuffle leaves out others), and the runs of all
  identities are shuffled together. Two runs of one identity can land in
  the same batch; that only adds positives.

  Args:
    labels: (N,) int identities.
    images_per_identity: K >= 2.
    epoch: epoch number; with `seed` it fixes the order.
    seed: data seed.

  Returns:
    int64 indices, a multiple of K long (`balanced_epoch_length`), each
    index at most once; a function of `(labels, K, seed, epoch)` only.

  Raises:
    ValueError: K < 2, or no identity has K images.
  """
  if images_per_identity < 2:
    raise ValueError(f'images_per_identity must be >= 2 (an anchor and a '
                     f'positive), got {images_per_identity}.')
  k = images_per_identity
  # A stream of its own: not epoch_permutation's, whatever the seed.
  rng = np.random.default_rng((seed, epoch, 0x9E3779B9))
  # Group by identity, shuffled within each identity.
  order = np.lexsort((rng.random(len(labels)), labels))
  sorted_labels = labels[order]
  starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
  counts = np.diff(np.r_[starts, len(labels)])
  rank = np.arange(len(labels)) - np.repeat(starts, counts)
  usable = np.repeat(counts // k * k, counts)
  runs = order[rank < usable].reshape(-1, k)
  if not len(runs):
    raise ValueError(f'No identity has images_per_identity={k} images.')
  return runs[rng.permutation(len(runs))].reshape(-1)


def balanced_epoch_length(labels: np.ndarray, images_per_identity: int) -> int:
  """Examples per epoch of `identity_balanced_order` (the same every epoch)."""
  _, counts = np.unique(labels, return_counts=True)
  return int(np.sum(counts // images_per_identity * images_per_identity))


def epoch_batches(split: Split, *, global_batch_size: int, epoch: int,
                  seed: int, shuffle: bool, process_index: int = 0,
                  process_count: int = 1, start_step: int = 0,
                  augment_fn: Optional[AugmentFn] = None,
                  drop_remainder: bool = False,
                  images_per_identity: int = 0) -> Iterator[Batch]:
  """Yields this process's share of each global batch of one epoch.

  Global batch k is `order[k * G:(k + 1) * G]` with the order of
  `epoch_permutation` (or `identity_balanced_order`); process p gets its
  p-th contiguous slice of `G // process_count` examples. Unless
  `drop_remainder`, the last global batch is padded to G with examples of
  weight 0 (label 0, image all zeros after normalisation), so every example
  of the order is seen exactly once per epoch and all batches have one
  shape.

  Args:
    split: the split to batch.
    global_batch_size: G, examples per step over all processes.
    epoch: epoch number; with `seed` it fixes the order and augmentations.
    seed: data seed.
    shuffle: shuffle (training) or keep the stored order (evaluation).
    process_index: this process, in `[0, process_count)`.
    process_count: number of processes sharing each global batch.
    start_step: first step to yield; earlier steps are skipped without
      reading them (resuming mid-epoch from a checkpointed step).
    augment_fn: optional `(uint8 images, rng) -> uint8 images`, e.g. from
      `make_augment_fn`. Its rng depends on `(seed, epoch, step,
      process_index)` only, so a resumed run repeats the same augmentations.
    drop_remainder: drop the last partial global batch instead of padding.
    images_per_identity: K > 0 (with `shuffle`): batches of runs of K images
      of one identity (`identity_balanced_order`), for the pair losses;
      `global_batch_size` must be a multiple of K. 0: a plain shuffle.

  Yields:
    Dicts with 'image' float32 (G // process_count, H, W, C) normalised by
    `normalize_images`, 'label' int32 and 'weight' float32 (1 real, 0 pad),
    both of shape (G // process_count,).

  Raises:
    ValueError: G not divisible by `process_count`, bad `process_index`,
      `start_step` outside `[0, steps_per_epoch]`, or a negative seed/epoch.
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size ({global_batch_size}) must be a positive multiple '
        f'of process_count ({process_count}).')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got '
                     f'{process_index}.')
  if seed < 0 or epoch < 0:
    raise ValueError(f'seed and epoch must be non-negative, got seed={seed}, '
                     f'epoch={epoch}.')
  if images_per_identity and (not shuffle or
                              global_batch_size % images_per_identity):
    raise ValueError(
        f'images_per_identity={images_per_identity} needs shuffle=True and a '
        f'global_batch_size ({global_batch_size}) that it divides.')
  if images_per_identity:
    order = identity_balanced_order(
        split.labels, images_per_identity=images_per_identity, epoch=epoch,
        seed=seed)
  else:
    order = epoch_permutation(split.num_examples, epoch=epoch, seed=seed,
                              shuffle=shuffle)
  num_steps = steps_per_epoch(len(order), global_batch_size, drop_remainder)
  if not 0 <= start_step <= num_steps:
    raise ValueError(f'start_step must be in [0, {num_steps}] (steps in this '
                     f'epoch), got {start_step}.')

  local_batch_size = global_batch_size // process_count
  # -1 marks padding; with it appended, every global batch is a full slice.
  padded = np.full(num_steps * global_batch_size, -1, dtype=np.int64)
  used = min(len(padded), len(order))
  padded[:used] = order[:used]
  for step in range(start_step, num_steps):
    begin = step * global_batch_size + process_index * local_batch_size
    indices = padded[begin:begin + local_batch_size]
    valid = indices >= 0
    # Padding rows read example 0 and are then zeroed: no ragged gathers.
    safe = np.where(valid, indices, 0)
    images = split.images[safe]
    labels = np.where(valid, split.labels[safe], 0).astype(np.int32)
    if augment_fn is not None:
      rng = np.random.default_rng((seed, epoch, step, process_index))
      images = augment_fn(images, rng)
    images = normalize_images(images)
    images[~valid] = 0.0
    yield {'image': images, 'label': labels,
           'weight': valid.astype(np.float32)}


def batch_shapes(dataset: Dataset, global_batch_size: int,
                 process_count: int = 1) -> Dict[str, Sequence[int]]:
  """Shapes of the arrays `epoch_batches` yields, e.g. to initialise a model.

  Args:
    dataset: the loaded dataset.
    global_batch_size: examples per step over all processes.
    process_count: number of processes.

  Returns:
    `{'image': (b, H, W, C), 'label': (b,), 'weight': (b,)}` with
    `b = global_batch_size // process_count`.
  """
  local = global_batch_size // process_count
  return {'image': (local,) + tuple(dataset.image_shape), 'label': (local,),
          'weight': (local,)}
