"""Tests of data.mnist: IDX files, their splits and datasets, and TFDS
sources (mocked, offline), on tiny data made here."""

import socket

import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax.data import mnist
from idx_files import idx_source
from idx_files import random_split
from idx_files import write_idx
from idx_files import write_idx_split

# ---------------------------------------------------------------------------
# read_idx.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('compress', [False, True])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, compress):
  images, labels = random_split(5)
  write_idx(tmp_path / 'images', images, compress=compress)
  write_idx(tmp_path / 'labels', labels, compress=compress)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'images')),
                                images)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'labels')),
                                labels)
  assert mnist.read_idx(str(tmp_path / 'images')).dtype == np.uint8


def test_read_idx_detects_gzip_by_magic_bytes_not_extension(tmp_path):
  images, _ = random_split(3)
  write_idx(tmp_path / 'gzipped-without-gz-extension', images, compress=True)
  write_idx(tmp_path / 'plain.gz', images, compress=False)
  np.testing.assert_array_equal(
      mnist.read_idx(str(tmp_path / 'gzipped-without-gz-extension')), images)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'plain.gz')),
                                images)


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


# ---------------------------------------------------------------------------
# load_idx_split.
# ---------------------------------------------------------------------------

# The (images, labels) written for each split.
SPLITS = {'train': random_split(6, seed=1), 'test': random_split(4, seed=2)}


@pytest.fixture(scope='module', params=[False, True],
                ids=['plain', 'gzip'])
def idx_dir(request, tmp_path_factory):
  """Both SPLITS as IDX files, plain or gzipped."""
  directory = tmp_path_factory.mktemp('idx_splits')
  for split, (images, labels) in SPLITS.items():
    write_idx_split(directory, split, images, labels,
                    compress=request.param)
  return str(directory)


@pytest.mark.parametrize('split', SPLITS)
def test_load_idx_split_images_are_nhwc_uint8(idx_dir, split):
  images, labels = SPLITS[split]
  got_images, _ = mnist.load_idx_split(idx_dir, split)
  assert got_images.dtype == np.uint8 and got_images.shape == (
      len(labels), 4, 3, 1)
  np.testing.assert_array_equal(got_images[..., 0], images)


@pytest.mark.parametrize('split', SPLITS)
def test_load_idx_split_labels_are_int32(idx_dir, split):
  _, labels = SPLITS[split]
  _, got_labels = mnist.load_idx_split(idx_dir, split)
  assert got_labels.dtype == np.int32
  np.testing.assert_array_equal(got_labels, labels)


@pytest.fixture
def missing_files_message(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    mnist.load_idx_split(str(tmp_path), 'test')
  return str(error.value)


def test_missing_idx_files_error_names_the_directory_and_files(
    tmp_path, missing_files_message):
  assert str(tmp_path) in missing_files_message
  assert 't10k-images-idx3-ubyte' in missing_files_message
  assert 't10k-labels-idx1-ubyte' in missing_files_message


def test_missing_idx_files_error_says_where_to_get_them(
    missing_files_message):
  assert 'apt-get install dataset-fashion-mnist' in missing_files_message
  assert "input.source='tfds'" in missing_files_message


def test_load_idx_split_image_label_count_mismatch_raises(tmp_path):
  images, labels = random_split(5)
  write_idx_split(tmp_path, 'train', images, labels[:4])
  with pytest.raises(ValueError, match='5 images.*but 4 labels'):
    mnist.load_idx_split(str(tmp_path), 'train')


# ---------------------------------------------------------------------------
# The 'idx' source's datasets.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def idx_dataset_dir(tmp_path_factory):
  """9 training and 7 test images, 4x3."""
  directory = tmp_path_factory.mktemp('idx_dataset')
  write_idx_split(directory, 'train', *random_split(9, seed=1))
  write_idx_split(directory, 'test', *random_split(7, seed=2))
  return str(directory)


@pytest.fixture(scope='module')
def idx_subsets(idx_dataset_dir):
  return data.load_dataset(
      **idx_source(data_dir=idx_dataset_dir, train_subset=5, test_subset=3))


def test_idx_dataset_keeps_the_first_subset_examples(idx_subsets):
  assert idx_subsets.train.num_examples == 5
  assert idx_subsets.test.num_examples == 3
  np.testing.assert_array_equal(
      idx_subsets.train.labels, random_split(9, seed=1)[1][:5])


def test_idx_dataset_splits_are_named_train_and_test(idx_subsets):
  assert idx_subsets.train.name == 'train' and idx_subsets.test.name == 'test'


def test_idx_dataset_has_the_files_image_shape_and_num_classes(idx_subsets):
  assert idx_subsets.image_shape == (4, 3, 1)
  assert idx_subsets.num_classes == 10


def test_fashion_mnist_class_names_are_the_clothes(idx_subsets):
  assert idx_subsets.class_names == mnist.FASHION_MNIST_CLASS_NAMES
  assert idx_subsets.class_names[0] == 'T-shirt/top'
  assert idx_subsets.class_names[-1] == 'Ankle boot'


def test_mnist_class_names_are_the_digits(idx_dataset_dir):
  digits = data.load_dataset(**idx_source(data_dir=idx_dataset_dir,
                                          name='mnist'))
  assert digits.class_names == tuple('0123456789')
  assert digits.train.num_examples == 9


def test_idx_dataset_rejects_labels_beyond_num_classes(tmp_path):
  images, labels = random_split(4)
  labels[2] = 10
  write_idx_split(tmp_path, 'train', images, labels)
  write_idx_split(tmp_path, 'test', *random_split(2))
  with pytest.raises(ValueError, match="'train'.*label 10 at index 2"):
    data.load_dataset(**idx_source(data_dir=str(tmp_path)))


# ---------------------------------------------------------------------------
# TFDS sources (mocked, offline).
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tfds_mock(tmp_path_factory):
  """(mock_data, data_dir), with any network connection failing the test."""
  tfds = pytest.importorskip('tensorflow_datasets')

  def refuse(*args, **kwargs):
    raise AssertionError(f'test tried to use the network: {args}')

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, 'connect', refuse)
    patch.setattr(socket, 'create_connection', refuse)
    yield tfds.testing.mock_data, str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tfds_split(tfds_mock):
  mock_data, data_dir = tfds_mock
  with mock_data(num_examples=6, data_dir=data_dir):
    return mnist.load_tfds_split('mnist', 'train', data_dir=data_dir)


def test_load_tfds_split_images_are_nhwc_uint8(tfds_split):
  images, _ = tfds_split
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8


def test_load_tfds_split_labels_are_int32_classes(tfds_split):
  _, labels = tfds_split
  assert labels.shape == (6,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10


@pytest.fixture(scope='module')
def tfds_dataset(tfds_mock):
  mock_data, data_dir = tfds_mock
  with mock_data(num_examples=5, data_dir=data_dir):
    return data.load_dataset(**idx_source(source='tfds', name='mnist',
                                          data_dir=data_dir, test_subset=2))


def test_tfds_dataset_keeps_the_test_subset(tfds_dataset):
  assert tfds_dataset.train.num_examples == 5
  assert tfds_dataset.test.num_examples == 2


def test_tfds_dataset_has_the_mnist_image_shape(tfds_dataset):
  assert tfds_dataset.image_shape == (28, 28, 1)


def test_tfds_dataset_has_the_mnist_class_names(tfds_dataset):
  assert tfds_dataset.class_names == mnist.MNIST_CLASS_NAMES
