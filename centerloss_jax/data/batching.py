"""Batches from a split: deterministic order, per-process shares, padding.

A split's images are indexed by example, so the data order is a pure
function of `(seed, epoch, step)`: a run resumed from a checkpoint at step
`s` of an epoch sees exactly the batches (and augmentations) an
uninterrupted run would have.

Batches are dicts `{'image', 'label', 'weight'}`. The last, partial global
batch of an epoch is padded to full size with weight-0 examples, so shapes
stay static (one compilation) and evaluation counts each example exactly
once.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

from centerloss_jax.data.types import Dataset
from centerloss_jax.data.types import Split

Batch = Dict[str, np.ndarray]
AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


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


class BatchReader:
  """This process's share of any global batch of a split, by step number.

  Steps count across epochs: global step `s` is step `s % steps_per_epoch`
  of epoch `s // steps_per_epoch`. Global batch k of an epoch is
  `order[k * G:(k + 1) * G]` with the order of `epoch_permutation` (or
  `identity_balanced_order`); process p gets its p-th contiguous slice of
  `G // process_count` examples. Unless `drop_remainder`, the last global
  batch of an epoch is padded to G with examples of weight 0 (label 0, image
  all zeros after normalisation), so every example of the order is seen
  exactly once per epoch and all batches have one shape.

  A batch is a pure function of `(seed, epoch, step)`, whoever reads it and
  in whatever order: the grain pipeline (`data.pipeline`) runs it in worker
  processes, `epoch_batches` in a loop, with the same results. It is
  picklable and caches the order of the last epoch it read.
  """

  def __init__(self, split: Split, *, global_batch_size: int, seed: int,
               shuffle: bool, process_index: int = 0, process_count: int = 1,
               augment_fn: Optional[AugmentFn] = None,
               drop_remainder: bool = False, images_per_identity: int = 0):
    """Checks the settings; reads nothing yet.

    Args:
      split: the split to batch.
      global_batch_size: G, examples per step over all processes.
      seed: data seed; with the epoch it fixes the order and augmentations.
      shuffle: shuffle (training) or keep the stored order (evaluation).
      process_index: this process, in `[0, process_count)`.
      process_count: number of processes sharing each global batch.
      augment_fn: optional `(uint8 images, rng) -> uint8 images`, e.g. from
        `make_augment_fn`. Its rng depends on `(seed, epoch, step,
        process_index)` only, so a resumed run repeats the same
        augmentations.
      drop_remainder: drop the last partial global batch of each epoch
        instead of padding it.
      images_per_identity: K > 0 (with `shuffle`): batches of runs of K
        images of one identity (`identity_balanced_order`), for the pair
        losses; `global_batch_size` must be a multiple of K. 0: a plain
        shuffle.

    Raises:
      ValueError: G not divisible by `process_count`, a bad
        `process_index`, a negative seed, or K without shuffling or not
        dividing G.
    """
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(
          f'global_batch_size ({global_batch_size}) must be a positive '
          f'multiple of process_count ({process_count}).')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index must be in [0, {process_count}), got '
                       f'{process_index}.')
    if seed < 0:
      raise ValueError(f'seed must be non-negative, got seed={seed}.')
    if images_per_identity and (not shuffle or
                                global_batch_size % images_per_identity):
      raise ValueError(
          f'images_per_identity={images_per_identity} needs shuffle=True and '
          f'a global_batch_size ({global_batch_size}) that it divides.')
    self.split = split
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.shuffle = shuffle
    self.process_index = process_index
    self.augment_fn = augment_fn
    self.images_per_identity = images_per_identity
    # Examples an epoch visits (P x K leaves out each identity's n % K).
    self.epoch_length = (
        balanced_epoch_length(split.labels, images_per_identity)
        if images_per_identity else split.num_examples)
    self.steps_per_epoch = steps_per_epoch(self.epoch_length,
                                           global_batch_size, drop_remainder)
    self._cached_epoch, self._cached_order = None, None

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 (steps_per_epoch * G,) example indices of an epoch; -1: padding."""
    if epoch < 0:
      raise ValueError(f'epoch must be non-negative, got {epoch}.')
    if epoch != self._cached_epoch:
      if self.images_per_identity:
        order = identity_balanced_order(
            self.split.labels, images_per_identity=self.images_per_identity,
            epoch=epoch, seed=self.seed)
      else:
        order = epoch_permutation(self.split.num_examples, epoch=epoch,
                                  seed=self.seed, shuffle=self.shuffle)
      # -1 marks padding; with it appended, every global batch is a full
      # slice.
      padded = np.full(self.steps_per_epoch * self.global_batch_size, -1,
                       dtype=np.int64)
      used = min(len(padded), len(order))
      padded[:used] = order[:used]
      self._cached_epoch, self._cached_order = epoch, padded
    return self._cached_order

  def read(self, epoch: int, step_in_epoch: int) -> Batch:
    """Step `step_in_epoch` of `epoch`: see `epoch_batches` for the dict."""
    begin = (step_in_epoch * self.global_batch_size
             + self.process_index * self.local_batch_size)
    indices = self.epoch_order(epoch)[begin:begin + self.local_batch_size]
    valid = indices >= 0
    # Padding rows read example 0 and are then zeroed: no ragged gathers.
    safe = np.where(valid, indices, 0)
    images = self.split.images[safe]
    labels = np.where(valid, self.split.labels[safe], 0).astype(np.int32)
    if self.augment_fn is not None:
      rng = np.random.default_rng((self.seed, epoch, step_in_epoch,
                                   self.process_index))
      images = self.augment_fn(images, rng)
    images = normalize_images(images)
    images[~valid] = 0.0
    return {'image': images, 'label': labels,
            'weight': valid.astype(np.float32)}

  def __call__(self, step: int) -> Batch:
    """Global step `step`, counted across epochs."""
    return self.read(*divmod(int(step), self.steps_per_epoch))

  def __getstate__(self):
    # The cached order is rebuilt where it is needed (a worker process).
    return dict(self.__dict__, _cached_epoch=None, _cached_order=None)


def epoch_batches(split: Split, *, global_batch_size: int, epoch: int,
                  seed: int, shuffle: bool, process_index: int = 0,
                  process_count: int = 1, start_step: int = 0,
                  augment_fn: Optional[AugmentFn] = None,
                  drop_remainder: bool = False,
                  images_per_identity: int = 0) -> Iterator[Batch]:
  """Yields this process's share of each global batch of one epoch.

  The batches of `BatchReader` (which documents the order, the shares and
  the padding), read in a loop from `start_step` to the epoch's end.

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
    augment_fn: see `BatchReader`.
    drop_remainder: drop the last partial global batch instead of padding.
    images_per_identity: see `BatchReader`.

  Yields:
    Dicts with 'image' float32 (G // process_count, H, W, C) normalised by
    `normalize_images`, 'label' int32 and 'weight' float32 (1 real, 0 pad),
    both of shape (G // process_count,).

  Raises:
    ValueError: the errors of `BatchReader`, `start_step` outside
      `[0, steps_per_epoch]`, or a negative epoch.
  """
  reader = BatchReader(
      split, global_batch_size=global_batch_size, seed=seed, shuffle=shuffle,
      process_index=process_index, process_count=process_count,
      augment_fn=augment_fn, drop_remainder=drop_remainder,
      images_per_identity=images_per_identity)
  if epoch < 0:
    raise ValueError(f'epoch must be non-negative, got epoch={epoch}.')
  if not 0 <= start_step <= reader.steps_per_epoch:
    raise ValueError(f'start_step must be in [0, {reader.steps_per_epoch}] '
                     f'(steps in this epoch), got {start_step}.')
  for step in range(start_step, reader.steps_per_epoch):
    yield reader.read(epoch, step)


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

