"""Tests of data.batching: normalisation, augmentation, and the
deterministic, per-process, padded (or identity-balanced) batches of an
epoch."""

import numpy as np
import pytest

from centerloss_jax.data import batching
from centerloss_jax.data import types


def make_split(num_examples, name='train'):
  """A Split whose label is each example's index, to track where it goes."""
  images = np.zeros((num_examples, 2, 2, 1), np.uint8)
  # Pixel (0, 0) holds index % 256, to check images travel with their labels.
  images[:, 0, 0, 0] = np.arange(num_examples) % 256
  labels = np.arange(num_examples, dtype=np.int32)
  return types.Split(images=images, labels=labels, name=name)


def epoch_labels(split, **kwargs):
  """The labels of one epoch's batches, concatenated."""
  return np.concatenate(
      [b['label'] for b in batching.epoch_batches(split, **kwargs)])


# ---------------------------------------------------------------------------
# Normalisation and augmentation.
# ---------------------------------------------------------------------------


def test_normalize_images_matches_caffe_preprocessing():
  images = np.array([0, 127, 128, 255], np.uint8)
  normalized = batching.normalize_images(images)
  assert normalized.dtype == np.float32
  np.testing.assert_allclose(
      normalized, [-127.5 / 128, -0.5 / 128, 0.5 / 128, 127.5 / 128])


@pytest.fixture(scope='module')
def augmented():
  """(images, augmented by rng 7, again by rng 7, by rng 8), padding 2."""
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (16, 5, 6, 1), dtype=np.uint8)
  return (images,) + tuple(
      batching.augment(images, np.random.default_rng(seed), crop_padding=2,
                       flip=True) for seed in (7, 7, 8))


def test_augment_keeps_the_shape_and_dtype(augmented):
  images, first, _, _ = augmented
  assert first.shape == images.shape and first.dtype == np.uint8


def test_augment_is_deterministic_given_the_rng(augmented):
  _, first, again, _ = augmented
  np.testing.assert_array_equal(first, again)


def test_augment_differs_with_another_rng(augmented):
  _, first, _, other = augmented
  assert not np.array_equal(first, other)


def test_augment_output_is_a_window_of_the_padded_maybe_flipped_image(
    augmented):
  images, first, _, _ = augmented
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, out in zip(padded, first):
    windows = [candidate[top:top + 5, left:left + 6]
               for candidate in (image, image[:, ::-1])
               for top in range(5) for left in range(5)]
    assert any(np.array_equal(out, w) for w in windows)


def test_make_augment_fn_without_augmentation_is_none():
  assert batching.make_augment_fn(0, False) is None


@pytest.fixture(scope='module')
def flipped_or_kept():
  """(mirrored, kept): which of 32 images a flip-only augment mirrored,
  which it kept."""
  images = np.random.default_rng(0).integers(0, 256, (32, 3, 4, 1), np.uint8)
  out = batching.augment(images, np.random.default_rng(1), crop_padding=0,
                         flip=True)
  mirrored = np.array([np.array_equal(o, i[:, ::-1])
                       for o, i in zip(out, images)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
  return mirrored, kept


def test_flip_only_augment_mirrors_or_keeps_each_image(flipped_or_kept):
  mirrored, kept = flipped_or_kept
  assert np.all(mirrored | kept)


def test_flip_only_augment_mirrors_some_images_and_keeps_others(
    flipped_or_kept):
  mirrored, kept = flipped_or_kept
  assert mirrored.any() and kept.any()


# ---------------------------------------------------------------------------
# Order: shuffled per (seed, epoch), or stored.
# ---------------------------------------------------------------------------

SHUFFLED = dict(global_batch_size=10, shuffle=True)


@pytest.fixture(scope='module')
def epoch0():
  """The labels of epoch 0 of 50 examples, seed 3."""
  return epoch_labels(make_split(50), epoch=0, seed=3, **SHUFFLED)


def test_shuffled_epoch_is_reproducible(epoch0):
  np.testing.assert_array_equal(
      epoch0, epoch_labels(make_split(50), epoch=0, seed=3, **SHUFFLED))


def test_shuffle_differs_across_epochs(epoch0):
  assert not np.array_equal(
      epoch0, epoch_labels(make_split(50), epoch=1, seed=3, **SHUFFLED))


def test_shuffle_differs_across_seeds(epoch0):
  assert not np.array_equal(
      epoch0, epoch_labels(make_split(50), epoch=0, seed=4, **SHUFFLED))


def test_shuffled_epoch_is_the_permutation_of_seed_and_epoch(epoch0):
  np.testing.assert_array_equal(
      epoch0, np.random.default_rng((3, 0)).permutation(50))


def test_no_shuffle_keeps_stored_order():
  labels = epoch_labels(make_split(7), global_batch_size=4, epoch=5, seed=0,
                        shuffle=False)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 5, 6, 0])


# ---------------------------------------------------------------------------
# One epoch's batches: every example once, the last batch padded.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def padded_epoch():
  """The batches of 23 examples in batches of 8."""
  return list(batching.epoch_batches(make_split(23), global_batch_size=8,
                                     epoch=2, seed=1, shuffle=True))


def _concatenated(batches, key):
  return np.concatenate([b[key] for b in batches])


def test_epoch_has_steps_per_epoch_batches(padded_epoch):
  assert len(padded_epoch) == batching.steps_per_epoch(23, 8) == 3


def test_batches_are_full_float32_images_int32_labels_float32_weights(
    padded_epoch):
  for batch in padded_epoch:
    assert batch['image'].shape == (8, 2, 2, 1)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    assert batch['weight'].dtype == np.float32


def test_epoch_holds_every_example_once(padded_epoch):
  weights = _concatenated(padded_epoch, 'weight')
  labels = _concatenated(padded_epoch, 'label')
  assert sorted(labels[weights == 1]) == list(range(23))


def test_last_batch_is_padded_with_weight_zero_blanks(padded_epoch):
  weights = _concatenated(padded_epoch, 'weight')
  np.testing.assert_array_equal(weights, [1] * 23 + [0])
  assert _concatenated(padded_epoch, 'label')[-1] == 0
  assert np.all(_concatenated(padded_epoch, 'image')[-1] == 0)


def test_examples_carry_their_own_normalised_pixels(padded_epoch):
  real = _concatenated(padded_epoch, 'weight') == 1
  labels = _concatenated(padded_epoch, 'label')[real]
  np.testing.assert_allclose(
      _concatenated(padded_epoch, 'image')[real][:, 0, 0, 0],
      batching.normalize_images(labels % 256))


def test_drop_remainder_yields_only_full_batches():
  batches = list(batching.epoch_batches(make_split(23), global_batch_size=8,
                                        epoch=0, seed=0, shuffle=True,
                                        drop_remainder=True))
  assert len(batches) == batching.steps_per_epoch(
      23, 8, drop_remainder=True) == 2
  assert all(b['weight'].sum() == 8 for b in batches)


def test_steps_per_epoch_rounds_a_partial_batch_up():
  assert batching.steps_per_epoch(10000, 256) == 40


def test_steps_per_epoch_drops_a_partial_batch_with_drop_remainder():
  assert batching.steps_per_epoch(10000, 256, drop_remainder=True) == 39


def test_steps_per_epoch_counts_whole_batches_either_way():
  assert batching.steps_per_epoch(512, 256) == 2
  assert batching.steps_per_epoch(512, 256, drop_remainder=True) == 2


# ---------------------------------------------------------------------------
# Each process's slice of the global batch.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def process_slices():
  """(global batches, each of 3 processes' batches) of 37 examples."""
  split = make_split(37)
  kwargs = dict(global_batch_size=12, epoch=1, seed=9, shuffle=True)
  global_batches = list(batching.epoch_batches(split, **kwargs))
  per_process = [list(batching.epoch_batches(split, process_index=p,
                                             process_count=3, **kwargs))
                 for p in range(3)]
  return global_batches, per_process


def test_process_slices_are_equal_shares_of_the_global_batch(process_slices):
  _, per_process = process_slices
  for batches in per_process:
    assert all(batch['label'].shape == (4,) for batch in batches)


def test_process_slices_concatenate_to_the_global_batch(process_slices):
  global_batches, per_process = process_slices
  for step, global_batch in enumerate(global_batches):
    parts = [per_process[p][step] for p in range(3)]
    for key in ('image', 'label', 'weight'):
      np.testing.assert_array_equal(
          np.concatenate([part[key] for part in parts]), global_batch[key])


def test_process_slices_hold_disjoint_examples(process_slices):
  global_batches, per_process = process_slices
  for step in range(len(global_batches)):
    real = [set(batches[step]['label'][batches[step]['weight'] == 1])
            for batches in per_process]
    assert not (real[0] & real[1] or real[0] & real[2] or real[1] & real[2])


def test_global_batch_not_divisible_by_process_count_raises():
  with pytest.raises(ValueError, match='multiple of process_count'):
    next(batching.epoch_batches(make_split(8), global_batch_size=10, epoch=0,
                                seed=0, shuffle=False, process_count=4))


# ---------------------------------------------------------------------------
# Resuming mid-epoch.
# ---------------------------------------------------------------------------

RESUMED = dict(global_batch_size=8, epoch=4, seed=2, shuffle=True,
               process_index=1, process_count=2)


def test_start_step_resume_yields_the_same_remaining_batches():
  split = make_split(30)
  augment_fn = batching.make_augment_fn(crop_padding=1, flip=True)
  full = list(batching.epoch_batches(split, augment_fn=augment_fn,
                                     **RESUMED))
  resumed = list(batching.epoch_batches(split, start_step=2,
                                        augment_fn=augment_fn, **RESUMED))
  assert len(resumed) == len(full) - 2
  for want, got in zip(full[2:], resumed):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_start_step_past_the_epoch_raises():
  with pytest.raises(ValueError, match='start_step'):
    next(batching.epoch_batches(
        make_split(30), start_step=5,
        augment_fn=batching.make_augment_fn(crop_padding=1, flip=True),
        **RESUMED))


# ---------------------------------------------------------------------------
# Identity-balanced (P x K) order and batches.
# ---------------------------------------------------------------------------


def _identity_split(counts):
  """A split whose identity i has counts[i] images; image n's pixel is n."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  images = (np.arange(len(labels)) % 256).astype(np.uint8)
  return types.Split(images=np.broadcast_to(images[:, None, None, None],
                                            (len(labels), 2, 2, 1)).copy(),
                     labels=labels, name='train')


# Images per identity: n // 2 runs of 2 each, 2 + 1 + 0 + 4 + 2 runs.
BALANCED_LABELS = _identity_split([5, 3, 1, 8, 4]).labels


def _balanced_order(images_per_identity=2, epoch=0):
  return batching.identity_balanced_order(
      BALANCED_LABELS, images_per_identity=images_per_identity, epoch=epoch,
      seed=0)


@pytest.fixture(scope='module')
def balanced_order():
  return _balanced_order()


def test_balanced_order_length_is_whole_runs_of_each_identity(
    balanced_order):
  assert len(balanced_order) == 18 == batching.balanced_epoch_length(
      BALANCED_LABELS, 2)


def test_balanced_order_takes_each_image_at_most_once(balanced_order):
  assert len(set(balanced_order.tolist())) == len(balanced_order), (
      'an image twice')


def test_balanced_order_is_runs_of_one_identity(balanced_order):
  runs = BALANCED_LABELS[balanced_order].reshape(-1, 2)
  assert (runs[:, 0] == runs[:, 1]).all()


def test_balanced_order_has_every_whole_run_of_each_identity(balanced_order):
  runs = BALANCED_LABELS[balanced_order].reshape(-1, 2)
  assert np.bincount(runs[:, 0], minlength=5).tolist() == [2, 1, 0, 4, 2]


def test_balanced_order_is_deterministic(balanced_order):
  np.testing.assert_array_equal(balanced_order, _balanced_order())


def test_balanced_order_differs_across_epochs(balanced_order):
  assert not np.array_equal(balanced_order, _balanced_order(epoch=1))


def test_balanced_order_needs_two_images_per_identity():
  with pytest.raises(ValueError, match='images_per_identity must be >= 2'):
    _balanced_order(images_per_identity=1)


def test_balanced_order_without_an_identity_of_k_images_raises():
  with pytest.raises(ValueError, match='No identity has'):
    _balanced_order(images_per_identity=9)


# 32 images, 14 runs of 2.
BALANCED_SPLIT = _identity_split([6, 6, 4, 4, 2, 7, 3])


@pytest.fixture(scope='module')
def balanced_process_batches():
  """Each of 2 processes' balanced batches of one epoch."""
  return [list(batching.epoch_batches(
      BALANCED_SPLIT, global_batch_size=8, epoch=3, seed=1, shuffle=True,
      drop_remainder=True, images_per_identity=2, process_index=process,
      process_count=2)) for process in range(2)]


def test_balanced_batches_are_the_whole_batches_of_the_runs(
    balanced_process_batches):
  for batches in balanced_process_batches:
    assert len(batches) == 14 * 2 // 8


def test_balanced_global_batch_is_runs_of_one_identity_across_processes(
    balanced_process_batches):
  # Every anchor has a positive, wherever the process slices cut.
  labels = np.concatenate([batches[0]['label']
                           for batches in balanced_process_batches])
  assert (labels.reshape(-1, 2)[:, 0] == labels.reshape(-1, 2)[:, 1]).all()


def test_balanced_global_batch_size_must_hold_whole_runs():
  with pytest.raises(ValueError, match='global_batch_size .6. that it'):
    next(batching.epoch_batches(BALANCED_SPLIT, global_batch_size=6, epoch=0,
                                seed=0, shuffle=True, images_per_identity=4))
