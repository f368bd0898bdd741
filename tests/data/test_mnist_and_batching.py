"""Tests for data.mnist, data.batching and data.registry, on tiny data made
here (offline)."""

import gzip
import os
import socket
import struct

import ml_collections
import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax.data import batching
from centerloss_jax.data import mnist
from centerloss_jax.data import types
from centerloss_jax import training


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


def make_split(num_examples, name='train'):
  """A Split whose label is each example's index, to track where it goes."""
  images = np.zeros((num_examples, 2, 2, 1), np.uint8)
  # Pixel (0, 0) holds index % 256, to check images travel with their labels.
  images[:, 0, 0, 0] = np.arange(num_examples) % 256
  labels = np.arange(num_examples, dtype=np.int32)
  return types.Split(images=images, labels=labels, name=name)


def config(**overrides):
  """`data.load_dataset` arguments for Fashion-MNIST IDX files."""
  values = dict(source='idx', name='fashion_mnist', data_dir=None,
                num_classes=10, train_subset=None, test_subset=None)
  values.update(overrides)
  return values


@pytest.fixture
def no_network(monkeypatch):
  """Makes any attempt to open a network connection fail the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f'test tried to use the network: {args}')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


# --- IDX reading ------------------------------------------------------------


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, compress):
  images, labels = random_split(5)
  write_idx(tmp_path / 'images', images, compress=compress)
  write_idx(tmp_path / 'labels', labels, compress=compress)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'images')), images)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'labels')), labels)
  assert mnist.read_idx(str(tmp_path / 'images')).dtype == np.uint8


def test_read_idx_detects_gzip_by_magic_bytes_not_extension(tmp_path):
  images, _ = random_split(3)
  write_idx(tmp_path / 'gzipped-without-gz-extension', images, compress=True)
  write_idx(tmp_path / 'plain.gz', images, compress=False)
  np.testing.assert_array_equal(
      mnist.read_idx(str(tmp_path / 'gzipped-without-gz-extension')), images)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'plain.gz')), images)


def test_read_idx_wrong_magic_raises_naming_file(tmp_path):
  path = tmp_path / 'bad-magic'
  write_idx(path, np.zeros((2, 2)), magic=b'\x01\x02\x08\x02')
  with pytest.raises(ValueError, match='not an IDX file') as error:
    mnist.read_idx(str(path))
  assert str(path) in str(error.value)


def test_read_idx_non_uint8_type_code_raises(tmp_path):
  path = tmp_path / 'int32-typed'
  write_idx(path, np.zeros((2, 2)), magic=b'\x00\x00\x0c\x02')
  with pytest.raises(ValueError, match=r'0x08 \(unsigned byte\).*0x0c'):
    mnist.read_idx(str(path))


def test_read_idx_truncated_data_raises(tmp_path):
  path = tmp_path / 'truncated'
  write_idx(path, np.zeros((3, 4, 4)))
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:-5])
  with pytest.raises(ValueError, match=r'shape \(3, 4, 4\).*48 bytes'):
    mnist.read_idx(str(path))


# --- IDX splits -------------------------------------------------------------


@pytest.mark.parametrize('compress', [False, True])
def test_load_idx_split_gives_nhwc_uint8_and_int32(tmp_path, compress):
  train = random_split(6, seed=1)
  test = random_split(4, seed=2)
  write_idx_split(tmp_path, 'train', *train, compress=compress)
  write_idx_split(tmp_path, 'test', *test, compress=compress)
  for split, (images, labels) in (('train', train), ('test', test)):
    got_images, got_labels = mnist.load_idx_split(str(tmp_path), split)
    assert got_images.dtype == np.uint8 and got_images.shape == (
        len(labels), 4, 3, 1)
    assert got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images[..., 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_load_idx_split_missing_files_error_names_directory_and_package(
    tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    mnist.load_idx_split(str(tmp_path), 'test')
  message = str(error.value)
  assert str(tmp_path) in message
  assert 't10k-images-idx3-ubyte' in message
  assert 't10k-labels-idx1-ubyte' in message
  assert 'apt-get install dataset-fashion-mnist' in message
  assert "input.source='tfds'" in message


def test_load_idx_split_image_label_count_mismatch_raises(tmp_path):
  images, labels = random_split(5)
  write_idx_split(tmp_path, 'train', images, labels[:4])
  with pytest.raises(ValueError, match='5 images.*but 4 labels'):
    mnist.load_idx_split(str(tmp_path), 'train')


# --- labels and datasets ----------------------------------------------------


def test_validate_labels_error_names_first_bad_label_index_split_range():
  labels = np.array([0, 3, 9, 12, -1, 10], np.int32)
  with pytest.raises(ValueError) as error:
    types.validate_labels(labels, 10, 'test')
  message = str(error.value)
  assert 'label 12 at index 3' in message
  assert "'test'" in message
  assert '[0, 10)' in message
  types.validate_labels(labels[:3], 10, 'test')  # In range: no error.


def test_load_dataset_idx_applies_subsets_and_class_names(tmp_path):
  write_idx_split(tmp_path, 'train', *random_split(9, seed=1))
  write_idx_split(tmp_path, 'test', *random_split(7, seed=2))
  dataset = data.load_dataset(
      **config(data_dir=str(tmp_path), train_subset=5, test_subset=3))
  assert dataset.train.num_examples == 5 and dataset.test.num_examples == 3
  assert dataset.train.name == 'train' and dataset.test.name == 'test'
  assert dataset.image_shape == (4, 3, 1)
  assert dataset.num_classes == 10
  assert dataset.class_names == mnist.FASHION_MNIST_CLASS_NAMES
  assert dataset.class_names[0] == 'T-shirt/top'
  assert dataset.class_names[-1] == 'Ankle boot'
  np.testing.assert_array_equal(
      dataset.train.labels, random_split(9, seed=1)[1][:5])
  digits = data.load_dataset(**config(data_dir=str(tmp_path), name='mnist'))
  assert digits.class_names == tuple('0123456789')
  assert digits.train.num_examples == 9


def test_load_dataset_rejects_labels_beyond_num_classes(tmp_path):
  images, labels = random_split(4)
  labels[2] = 10
  write_idx_split(tmp_path, 'train', images, labels)
  write_idx_split(tmp_path, 'test', *random_split(2))
  with pytest.raises(ValueError, match="'train'.*label 10 at index 2"):
    data.load_dataset(**config(data_dir=str(tmp_path)))


def test_load_dataset_misspelled_key_names_it_and_the_accepted_ones():
  with pytest.raises(ValueError, match=r"'idx' does not take 'data_dri'; it "
                     r"accepts data_dir, name, num_classes, test_subset, "
                     r"train_subset"):
    data.load_dataset(**config(data_dri='/nowhere'))


def test_config_input_fields_reach_the_loader_or_fail_by_name(tmp_path):
  """The trainer's edge: augmentation fields stay, the rest is the loader's."""
  write_idx_split(tmp_path, 'train', *random_split(4))
  write_idx_split(tmp_path, 'test', *random_split(2))
  input_config = ml_collections.ConfigDict(dict(
      config(data_dir=str(tmp_path)), crop_padding=2, flip=True))
  assert training.trainer.load_dataset(input_config).train.num_examples == 4
  input_config.train_subet = 2
  with pytest.raises(ValueError, match=r"'train_subet', which input source "
                     r"'idx' does not take.*reads crop_padding, flip"):
    training.trainer.load_dataset(input_config)


def test_load_dataset_unknown_source_names_it_and_the_choices():
  with pytest.raises(ValueError, match=r"'csv'.*\('idx', 'tfds', "
                     r"'synthetic_faces', 'identity_folders'\)"):
    data.load_dataset(**config(source='csv'))


# --- TFDS (mocked, offline) -------------------------------------------------


def test_load_tfds_split_reads_mocked_mnist_offline(tmp_path, no_network):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    images, labels = mnist.load_tfds_split('mnist', 'train',
                                        data_dir=str(tmp_path))
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10


def test_load_dataset_tfds_source_with_mocked_mnist(tmp_path, no_network):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
    dataset = data.load_dataset(**config(source='tfds', name='mnist',
                                     data_dir=str(tmp_path), test_subset=2))
  assert dataset.train.num_examples == 5 and dataset.test.num_examples == 2
  assert dataset.image_shape == (28, 28, 1)
  assert dataset.class_names == mnist.MNIST_CLASS_NAMES


# --- normalisation and augmentation ------------------------------------------


def test_normalize_images_matches_caffe_preprocessing():
  images = np.array([0, 127, 128, 255], np.uint8)
  normalized = batching.normalize_images(images)
  assert normalized.dtype == np.float32
  np.testing.assert_allclose(
      normalized, [-127.5 / 128, -0.5 / 128, 0.5 / 128, 127.5 / 128])


def test_augment_is_deterministic_shape_preserving_and_a_shifted_crop():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (16, 5, 6, 1), dtype=np.uint8)
  first = batching.augment(images, np.random.default_rng(7), crop_padding=2,
                     flip=True)
  again = batching.augment(images, np.random.default_rng(7), crop_padding=2,
                     flip=True)
  other = batching.augment(images, np.random.default_rng(8), crop_padding=2,
                     flip=True)
  assert first.shape == images.shape and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # Each output must be some window of the zero-padded (maybe flipped) input.
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, out in zip(padded, first):
    windows = [candidate[top:top + 5, left:left + 6]
               for candidate in (image, image[:, ::-1])
               for top in range(5) for left in range(5)]
    assert any(np.array_equal(out, w) for w in windows)
  assert batching.make_augment_fn(0, False) is None


def test_augment_flip_only_mirrors_or_keeps_each_image():
  images = np.random.default_rng(0).integers(0, 256, (32, 3, 4, 1), np.uint8)
  out = batching.augment(images, np.random.default_rng(1), crop_padding=0, flip=True)
  mirrored = np.array([np.array_equal(o, i[:, ::-1])
                       for o, i in zip(out, images)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
  assert np.all(mirrored | kept)
  assert mirrored.any() and kept.any()


# --- batching ---------------------------------------------------------------


def epoch_labels(split, **kwargs):
  """The 'label' arrays of every batch of one epoch."""
  return [b['label'] for b in batching.epoch_batches(split, **kwargs)]


def test_shuffle_is_deterministic_per_seed_epoch_and_differs_across_epochs():
  split = make_split(50)
  kwargs = dict(global_batch_size=10, seed=3, shuffle=True)
  epoch0 = np.concatenate(epoch_labels(split, epoch=0, **kwargs))
  np.testing.assert_array_equal(
      epoch0, np.concatenate(epoch_labels(split, epoch=0, **kwargs)))
  epoch1 = np.concatenate(epoch_labels(split, epoch=1, **kwargs))
  assert not np.array_equal(epoch0, epoch1)
  other_seed = np.concatenate(
      epoch_labels(split, epoch=0, global_batch_size=10, seed=4, shuffle=True))
  assert not np.array_equal(epoch0, other_seed)
  np.testing.assert_array_equal(
      epoch0, np.random.default_rng((3, 0)).permutation(50))


def test_no_shuffle_keeps_stored_order():
  split = make_split(7)
  labels = np.concatenate(epoch_labels(split, global_batch_size=4, epoch=5,
                                       seed=0, shuffle=False))
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 5, 6, 0])


def test_every_example_once_per_epoch_with_weight_zero_padding():
  split = make_split(23)
  batches = list(batching.epoch_batches(split, global_batch_size=8, epoch=2, seed=1,
                                  shuffle=True))
  assert len(batches) == batching.steps_per_epoch(23, 8) == 3
  for batch in batches:
    assert batch['image'].shape == (8, 2, 2, 1)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    assert batch['weight'].dtype == np.float32
  weights = np.concatenate([b['weight'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])
  assert sorted(labels[weights == 1]) == list(range(23))
  np.testing.assert_array_equal(weights, [1] * 23 + [0])
  assert labels[-1] == 0 and np.all(images[-1] == 0)
  # Real examples carry their own normalised pixels.
  np.testing.assert_allclose(images[weights == 1][:, 0, 0, 0],
                             batching.normalize_images(labels[weights == 1] % 256))


def test_drop_remainder_yields_only_full_batches():
  split = make_split(23)
  batches = list(batching.epoch_batches(split, global_batch_size=8, epoch=0, seed=0,
                                  shuffle=True, drop_remainder=True))
  assert len(batches) == batching.steps_per_epoch(23, 8, drop_remainder=True) == 2
  assert all(b['weight'].sum() == 8 for b in batches)


def test_process_slices_are_disjoint_and_concatenate_to_the_global_batch():
  split = make_split(37)
  kwargs = dict(global_batch_size=12, epoch=1, seed=9, shuffle=True)
  global_batches = list(batching.epoch_batches(split, **kwargs))
  per_process = [list(batching.epoch_batches(split, process_index=p,
                                       process_count=3, **kwargs))
                 for p in range(3)]
  for step, global_batch in enumerate(global_batches):
    parts = [per_process[p][step] for p in range(3)]
    assert all(part['label'].shape == (4,) for part in parts)
    for key in ('image', 'label', 'weight'):
      np.testing.assert_array_equal(
          np.concatenate([part[key] for part in parts]), global_batch[key])
    real = [set(part['label'][part['weight'] == 1]) for part in parts]
    assert not (real[0] & real[1] or real[0] & real[2] or real[1] & real[2])


def test_global_batch_not_divisible_by_process_count_raises():
  with pytest.raises(ValueError, match='multiple of process_count'):
    next(batching.epoch_batches(make_split(8), global_batch_size=10, epoch=0,
                          seed=0, shuffle=False, process_count=4))


def test_start_step_resume_yields_the_same_remaining_batches():
  split = make_split(30)
  augment_fn = batching.make_augment_fn(crop_padding=1, flip=True)
  kwargs = dict(global_batch_size=8, epoch=4, seed=2, shuffle=True,
                augment_fn=augment_fn, process_index=1, process_count=2)
  full = list(batching.epoch_batches(split, **kwargs))
  resumed = list(batching.epoch_batches(split, start_step=2, **kwargs))
  assert len(resumed) == len(full) - 2
  for want, got in zip(full[2:], resumed):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match='start_step'):
    next(batching.epoch_batches(split, start_step=5, **kwargs))


def test_steps_per_epoch_rounds_up_unless_dropping_remainder():
  assert batching.steps_per_epoch(10000, 256) == 40
  assert batching.steps_per_epoch(10000, 256, drop_remainder=True) == 39
  assert batching.steps_per_epoch(512, 256) == 2
  assert batching.steps_per_epoch(512, 256, drop_remainder=True) == 2


# --- Identity-balanced (P x K) batches ----------------------------------------


def _identity_split(counts):
  """A split whose identity i has counts[i] images; image n's pixel is n."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  images = (np.arange(len(labels)) % 256).astype(np.uint8)
  return types.Split(images=np.broadcast_to(images[:, None, None, None],
                                         (len(labels), 2, 2, 1)).copy(),
                  labels=labels, name='train')


def test_identity_balanced_order_is_runs_of_one_identity():
  counts = [5, 3, 1, 8, 4]
  labels = _identity_split(counts).labels
  order = batching.identity_balanced_order(labels, images_per_identity=2, epoch=0,
                                     seed=0)
  # n // 2 runs of 2 per identity: 2 + 1 + 0 + 4 + 2 runs.
  assert len(order) == 18 == batching.balanced_epoch_length(labels, 2)
  assert len(set(order.tolist())) == len(order), 'an image twice'
  runs = labels[order].reshape(-1, 2)
  assert (runs[:, 0] == runs[:, 1]).all()
  assert np.bincount(runs[:, 0], minlength=5).tolist() == [2, 1, 0, 4, 2]
  again = batching.identity_balanced_order(labels, images_per_identity=2, epoch=0,
                                     seed=0)
  np.testing.assert_array_equal(order, again)
  other_epoch = batching.identity_balanced_order(labels, images_per_identity=2,
                                           epoch=1, seed=0)
  assert not np.array_equal(order, other_epoch)
  with pytest.raises(ValueError, match='images_per_identity must be >= 2'):
    batching.identity_balanced_order(labels, images_per_identity=1, epoch=0, seed=0)
  with pytest.raises(ValueError, match='No identity has'):
    batching.identity_balanced_order(labels, images_per_identity=9, epoch=0, seed=0)


def test_balanced_batches_give_every_anchor_positives_across_processes():
  split = _identity_split([6, 6, 4, 4, 2, 7, 3])  # 32 images, 14 runs of 2.
  global_batch = []
  for process in range(2):
    batches = list(batching.epoch_batches(
        split, global_batch_size=8, epoch=3, seed=1, shuffle=True,
        drop_remainder=True, images_per_identity=2, process_index=process,
        process_count=2))
    assert len(batches) == 14 * 2 // 8
    global_batch.append(batches[0]['label'])
  labels = np.concatenate(global_batch)
  assert (labels.reshape(-1, 2)[:, 0] == labels.reshape(-1, 2)[:, 1]).all()
  with pytest.raises(ValueError, match='global_batch_size .6. that it'):
    next(batching.epoch_batches(split, global_batch_size=6, epoch=0, seed=0,
                          shuffle=True, images_per_identity=4))
