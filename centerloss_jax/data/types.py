"""The data types every source produces: splits, open-set sets, datasets.

Plain numpy (and lazy array-likes such as `image_files.ImageFiles`); nothing
here knows where the data came from or how it will be batched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

from absl import logging
import numpy as np


def check_num_classes(num_classes: int, num_identities: int,
                      source: str) -> int:
  """`num_classes` as an int, if it leaves a class for every identity.

  Identity `i` is class `i`. More classes than identities pad the
  classifier and the centers with classes no image has (their logits are
  only pushed down by the softmax, and their centers never move): the way
  to make `num_classes` a multiple of `class_shards`, or to try a
  class-sharded run at a size no data set here has. That is logged, since
  it also follows from a typo.

  Args:
    num_classes: the config's `input.num_classes`.
    num_identities: the identities the source found or draws.
    source: where they come from, for the messages.

  Raises:
    ValueError: fewer classes than identities, naming both counts.
  """
  num_classes = int(num_classes)
  if num_classes < num_identities:
    raise ValueError(
        f'num_classes={num_classes} but {source} has {num_identities} '
        f'identities; set num_classes to at least {num_identities} (each '
        'identity is a class).')
  if num_classes > num_identities:
    logging.warning(
        '%s has %d identities and num_classes=%d: classes %d.. have no '
        'images (padding).', source, num_identities, num_classes,
        num_identities)
  return num_classes


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


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images indexable by example, labels in host memory.

  Attributes:
    images: uint8 (N, H, W, C): an ndarray, or for datasets too large for
      host memory a lazy array-like (`image_files.ImageFiles`) with `shape`,
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
      `image_files.ImageFiles`). Each image is read once, however many pairs
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
    name: the dataset's name, for plot titles, e.g. 'fashion_mnist'.
    train: the training split.
    test: the test split (closed set: the training classes).
    num_classes: number of classes.
    class_names: one name per class that has images (classes
      `[0, len(class_names))`; a padded classifier's further classes have
      none, see `check_num_classes`).
    image_shape: (H, W, C) of one image.
    verification: open-set verification pairs of identities not in `train`
      (face datasets), or None.
    identification: open-set identification images, or None.
  """
  name: str
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
    images: ndarray or lazy `image_files.ImageFiles` (sliced lazily).
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

