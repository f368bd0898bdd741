"""Tests of data.face_folders: identity-folder scans, landmark lists,
LFW-format pairs and the identity-folder `Dataset`, on files made here."""

import os

import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax.data import face_folders
from centerloss_jax.data import image_files
from face_trees import PAIRS
from face_trees import write_grey_lfw_tree
from face_trees import write_landmarked_tree
from face_trees import write_png

# ---------------------------------------------------------------------------
# scan_identity_folders.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def scanned_tree(tmp_path_factory):
  """A tree of two identities, an empty folder, a hidden one, a text file."""
  root = tmp_path_factory.mktemp('scanned')
  tiny = np.zeros((2, 2, 3))
  write_png(str(root / 'b_person' / '2.png'), tiny)
  write_png(str(root / 'b_person' / '1.png'), tiny)
  (root / 'b_person' / 'notes.txt').write_text('not an image')
  write_png(str(root / 'a_person' / 'x.png'), tiny)
  (root / 'c_empty').mkdir()
  write_png(str(root / '.hidden' / 'h.png'), tiny)
  return root


@pytest.fixture(scope='module')
def scan(scanned_tree):
  return face_folders.scan_identity_folders(str(scanned_tree))


def test_scan_names_the_identity_folders_sorted_without_empty_or_hidden(scan):
  _, _, names = scan
  assert names == ('a_person', 'b_person')


def test_scan_labels_are_int32_identity_indices(scan):
  _, labels, _ = scan
  assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 1]


def test_scan_lists_the_images_sorted_without_other_files(scan, scanned_tree):
  paths, _, _ = scan
  assert [os.path.relpath(p, scanned_tree) for p in paths] == [
      'a_person/x.png', 'b_person/1.png', 'b_person/2.png']


def test_scan_drops_identities_below_min_images_per_identity(scanned_tree):
  _, labels, names = face_folders.scan_identity_folders(
      str(scanned_tree), min_images_per_identity=2)
  assert names == ('b_person',) and labels.tolist() == [0, 0]


def test_scan_of_a_tree_without_identities_raises(scanned_tree):
  with pytest.raises(ValueError, match='No identity found'):
    face_folders.scan_identity_folders(str(scanned_tree / 'c_empty'))


def test_scan_of_a_missing_directory_names_it(scanned_tree):
  with pytest.raises(FileNotFoundError, match='missing'):
    face_folders.scan_identity_folders(str(scanned_tree / 'missing'))


# ---------------------------------------------------------------------------
# read_landmarks.
# ---------------------------------------------------------------------------

NUMBERS = ' '.join(str(v) for v in range(1, 11))


@pytest.fixture(scope='module')
def landmark_table(tmp_path_factory):
  """(root, table) of a list with a relative path and an absolute one with
  an extra field, a comment and a blank line."""
  root = tmp_path_factory.mktemp('landmarks')
  good = root / 'landmarks.txt'
  good.write_text(f'# comment\na/1.png {NUMBERS}\n\n'
                  f'{root}/b/2.png 17 {NUMBERS}\n')
  return face_folders.read_landmarks(str(good), root=str(root))


def test_read_landmarks_keys_are_paths_relative_to_the_root(landmark_table):
  assert sorted(landmark_table) == ['a/1.png', 'b/2.png']


def test_read_landmarks_reads_the_last_ten_numbers_as_five_points(
    landmark_table):
  np.testing.assert_array_equal(landmark_table['b/2.png'],
                                np.arange(1, 11).reshape(5, 2))


@pytest.mark.parametrize('content, message', [
    ('a.png 1 2 3\n', 'line 1'),
    (f'a.png {NUMBERS}\nb.png 1 2 x 4 5 6 7 8 9 10\n', 'line 2'),
], ids=['too_few_fields', 'not_a_number'])
def test_read_landmarks_malformed_line_error_names_the_line(
    tmp_path, content, message):
  bad = tmp_path / 'bad.txt'
  bad.write_text(content)
  with pytest.raises(ValueError, match=message):
    face_folders.read_landmarks(str(bad))


def test_read_landmarks_refuses_an_image_listed_twice(tmp_path):
  bad = tmp_path / 'bad.txt'
  bad.write_text(f'a.png {NUMBERS}\na.png {NUMBERS}\n')
  with pytest.raises(ValueError, match='already listed on line 1'):
    face_folders.read_landmarks(str(bad))


# ---------------------------------------------------------------------------
# read_pairs and load_pairs_set.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
  path = tmp_path_factory.mktemp('pairs') / 'pairs.txt'
  path.write_text(PAIRS)
  return face_folders.read_pairs(str(path))


def test_read_pairs_counts_the_pairs_and_folds(pairs):
  assert len(pairs) == 4 and pairs.num_folds == 2


def test_read_pairs_marks_same_and_different_pairs(pairs):
  assert pairs.is_same.tolist() == [True, False, True, False]


def test_read_pairs_puts_each_pair_in_its_fold(pairs):
  assert pairs.fold.tolist() == [0, 0, 1, 1]


def test_read_pairs_reads_the_names_and_image_numbers(pairs):
  assert pairs.left_name.tolist() == ['Alice', 'Alice', 'Bob', 'Bob']
  assert pairs.right_name.tolist() == ['Alice', 'Bob', 'Bob', 'Carol']
  assert pairs.right_number.tolist() == [2, 1, 2, 1]


@pytest.mark.parametrize('content, message', [
    ('Alice 1 2\nAlice 1 Bob 1\n', 'header'),
    ('2 1\nAlice 1 2\nAlice 1 Bob 1\n', '4 pair lines'),
    ('1 1\nAlice 1 2\nAlice 1 2\n', 'fold 0 has 2'),
    ('1 1\nAlice 1\nAlice 1 Bob 1\n', 'line 2'),
], ids=['no_header', 'too_few_lines', 'unbalanced_fold', 'short_line'])
def test_read_pairs_malformed_file_error_says_what(tmp_path, content,
                                                   message):
  path = tmp_path / 'pairs.txt'
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    face_folders.read_pairs(str(path))


@pytest.fixture(scope='module')
def pairs_set(tmp_path_factory):
  root = tmp_path_factory.mktemp('pairs_set')
  write_grey_lfw_tree(str(root / 'lfw'))
  (root / 'pairs.txt').write_text(PAIRS)
  return face_folders.load_pairs_set(
      str(root / 'lfw'), str(root / 'pairs.txt'), image_shape=(8, 6, 3),
      name='tiny')


def test_load_pairs_set_is_a_named_pairs_set_of_the_files_folds(pairs_set):
  assert isinstance(pairs_set, data.types.PairsSet)
  assert pairs_set.name == 'tiny' and pairs_set.num_folds == 2


def test_load_pairs_set_holds_each_distinct_image_once(pairs_set):
  assert len(pairs_set.images) == 5


def test_load_pairs_set_left_and_right_index_the_pairs_images(pairs_set):
  # Each image is a flat grey of its own, so pixels identify the file.
  greys = np.asarray(pairs_set.images)[:, 0, 0, 0]
  assert greys[pairs_set.left].tolist() == [0, 0, 80, 120]
  assert greys[pairs_set.right].tolist() == [40, 80, 120, 160]


def test_load_pairs_set_keeps_the_same_or_different_marks(pairs_set):
  assert pairs_set.is_same.tolist() == [True, False, True, False]


def test_load_pairs_set_missing_image_error_names_it(tmp_path):
  write_grey_lfw_tree(str(tmp_path / 'lfw'))
  (tmp_path / 'pairs.txt').write_text(PAIRS)
  os.remove(tmp_path / 'lfw' / 'Carol' / 'Carol_0001.png')
  with pytest.raises(FileNotFoundError, match='Carol_0001'):
    face_folders.load_pairs_set(str(tmp_path / 'lfw'),
                                str(tmp_path / 'pairs.txt'))


# ---------------------------------------------------------------------------
# load_identity_folders.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def identity_config(tmp_path_factory):
  """Arguments of a tree of id_a (3 images), id_b (1), id_c (2), flat images
  of values 0, 10, ... 50 in order, with LFW pairs; 'last' test split."""
  root = tmp_path_factory.mktemp('identity_folders')
  train = root / 'train'
  value = 0
  for name, count in (('id_a', 3), ('id_b', 1), ('id_c', 2)):
    for i in range(count):
      write_png(str(train / name / f'{i}.png'), np.full((8, 6, 3), value))
      value += 10
  write_grey_lfw_tree(str(root / 'lfw'))
  (root / 'pairs.txt').write_text(PAIRS)
  return dict(train_dir=str(train), image_shape=(8, 6, 3), num_classes=3,
              test_images_per_identity=1, test_split='last',
              pairs_dir=str(root / 'lfw'), pairs_file=str(root / 'pairs.txt'))


@pytest.fixture(scope='module')
def identity_dataset(identity_config):
  return face_folders.load_identity_folders(**identity_config)


def test_identity_folders_class_names_are_the_folder_names(identity_dataset):
  assert identity_dataset.class_names == ('id_a', 'id_b', 'id_c')


def test_identity_folders_dataset_has_the_image_shape_and_num_classes(
    identity_dataset):
  assert identity_dataset.image_shape == (8, 6, 3)
  assert identity_dataset.num_classes == 3


def test_last_split_tests_on_the_last_image_of_identities_with_more(
    identity_dataset):
  assert identity_dataset.train.labels.tolist() == [0, 0, 1, 2]
  assert identity_dataset.test.labels.tolist() == [0, 2]


def test_last_split_images_go_with_their_labels(identity_dataset):
  assert np.asarray(identity_dataset.train.images)[:, 0, 0, 0].tolist() == [
      0, 10, 30, 40]
  assert np.asarray(identity_dataset.test.images)[:, 0, 0, 0].tolist() == [
      20, 50]


def test_identity_folders_images_stay_on_disk_as_image_files(
    identity_dataset):
  assert isinstance(identity_dataset.train.images, image_files.ImageFiles)


def test_identity_folders_verification_set_is_the_pairs_file(
    identity_dataset):
  assert identity_dataset.verification.num_folds == 2


def test_identity_folders_train_split_makes_batches(identity_dataset):
  batch = next(data.batching.epoch_batches(
      identity_dataset.train, global_batch_size=2, epoch=0, seed=0,
      shuffle=True))
  assert batch['image'].shape == (2, 8, 6, 3)


def test_train_subset_keeps_the_first_training_images(identity_config):
  subset = face_folders.load_identity_folders(
      **dict(identity_config, train_subset=2))
  assert subset.train.labels.tolist() == [0, 0]


def test_identity_folders_without_pairs_have_no_verification_set(
    identity_config):
  dataset = face_folders.load_identity_folders(
      **dict(identity_config, pairs_dir=None, pairs_file=None))
  assert dataset.verification is None


def test_fewer_num_classes_than_identities_raises(identity_config):
  with pytest.raises(ValueError, match='num_classes=2 but .* has 3 identities'):
    face_folders.load_identity_folders(**dict(identity_config, num_classes=2))


def test_more_num_classes_than_identities_pads_the_classifier(
    identity_config, identity_dataset):
  # Classes 3.. are never seen.
  padded = face_folders.load_identity_folders(
      **dict(identity_config, num_classes=8))
  assert padded.num_classes == 8 and len(padded.class_names) == 3
  assert padded.train.labels.tolist() == (
      identity_dataset.train.labels.tolist())


def test_unknown_test_split_names_the_choices(identity_config):
  with pytest.raises(ValueError, match="test_split must be one of .*'first'"):
    face_folders.load_identity_folders(
        **dict(identity_config, test_split='first'))


def test_images_missing_from_the_landmark_list_are_counted(
    identity_config, tmp_path):
  landmarks = tmp_path / 'landmarks.txt'
  landmarks.write_text('id_a/0.png ' + ' '.join(['1'] * 10) + '\n')
  with pytest.raises(ValueError, match='5 of 6 images have no landmarks'):
    face_folders.load_identity_folders(
        **dict(identity_config, landmarks=str(landmarks)))


def test_a_relative_train_dir_finds_its_landmarks(tmp_path, monkeypatch):
  landmarks = write_landmarked_tree(str(tmp_path / 'tree'))
  settings = dict(num_classes=4, test_images_per_identity=1,
                  image_shape=(28, 24, 3))
  absolute = face_folders.load_identity_folders(
      train_dir=str(tmp_path / 'tree'), landmarks=landmarks, **settings)
  monkeypatch.chdir(tmp_path)
  relative = face_folders.load_identity_folders(
      train_dir='tree', landmarks=os.path.join('tree', 'landmarks.txt'),
      **settings)
  np.testing.assert_array_equal(np.asarray(relative.train.images),
                                np.asarray(absolute.train.images))


# ---------------------------------------------------------------------------
# The closed-set test split: 'last' or seeded 'random'.
# ---------------------------------------------------------------------------

# How each split below is asked for.
TEST_SPLITS = {'last': dict(test_split='last'),
               'default': dict(),  # 'random', split_seed 0.
               'random_seed_0': dict(test_split='random', split_seed=0),
               'random_seed_1': dict(split_seed=1)}


@pytest.fixture(scope='module')
def held_out(tmp_path_factory):
  """Each TEST_SPLITS entry's dataset, from ten images per identity whose
  sorted names encode a condition (the last three 'z_dark')."""
  train = tmp_path_factory.mktemp('conditions') / 'train'
  value = 0
  for name in ('id_a', 'id_b', 'id_c'):
    for i in range(10):
      condition = 'z_dark' if i >= 7 else 'lit'
      write_png(str(train / name / f'{condition}_{i}.png'),
                np.full((8, 6, 3), value))
      value += 1
  config = dict(train_dir=str(train), image_shape=(8, 6, 3), num_classes=3,
                test_images_per_identity=3)
  return {split: face_folders.load_identity_folders(**config, **kwargs)
          for split, kwargs in TEST_SPLITS.items()}


def _test_file_names(dataset):
  return [os.path.basename(p) for p in dataset.test.images.paths]


@pytest.mark.parametrize('split', TEST_SPLITS)
def test_test_split_holds_out_three_images_of_every_identity(held_out, split):
  dataset = held_out[split]
  assert dataset.test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
  assert dataset.train.num_examples == 21


@pytest.mark.parametrize('split', TEST_SPLITS)
def test_test_split_files_are_not_training_files(held_out, split):
  dataset = held_out[split]
  assert not set(dataset.train.images.paths) & set(dataset.test.images.paths)


def test_last_split_tests_on_the_last_sorted_names_only(held_out):
  assert all(name.startswith('z_dark')
             for name in _test_file_names(held_out['last']))


def test_default_split_is_random_with_seed_0(held_out):
  assert _test_file_names(held_out['default']) == _test_file_names(
      held_out['random_seed_0'])


def test_random_split_differs_from_the_last_split(held_out):
  assert _test_file_names(held_out['default']) != _test_file_names(
      held_out['last'])


def test_random_split_depends_on_split_seed(held_out):
  assert _test_file_names(held_out['default']) != _test_file_names(
      held_out['random_seed_1'])


def test_random_split_is_not_biased_to_the_last_names(held_out):
  # 3 of 10 images per identity: a random choice picks exactly the 3 dark
  # ones of every identity with probability (1/120)^3.
  assert not all(name.startswith('z_dark')
                 for name in _test_file_names(held_out['default']))
