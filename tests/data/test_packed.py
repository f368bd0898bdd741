"""Tests of data.packed and data.packing (the reading and writing sides of
packed face records, which share their trees and packs here): a pack holds
the same images as the folders it was packed from, a stale or corrupt pack
is refused, and the `centerloss_jax.pack` command names a failed image and
resumes."""

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from centerloss_jax.data import face_folders
from centerloss_jax.data import packed
from centerloss_jax.data import packing
from face_trees import lfw_path
from face_trees import write_landmarked_lfw_tree
from face_trees import write_landmarked_tree
import repo_paths

SHAPE = (28, 24, 3)


def _settings(root, landmarks):
  return dict(train_dir=str(root), image_shape=SHAPE, landmarks=landmarks)


def _load(root, landmarks, **kwargs):
  return face_folders.load_identity_folders(
      num_classes=4, test_images_per_identity=1,
      **_settings(root, landmarks), **kwargs)


def _pack(root, landmarks, pack_dir):
  return packing.pack_identity_folders(out_dir=str(pack_dir),
                                       images_per_shard=5,
                                       **_settings(root, landmarks))


def _touch(path):
  """Moves `path`'s modification time a second on; returns the old one."""
  mtime_ns = os.stat(path).st_mtime_ns
  os.utime(path, ns=(0, mtime_ns + 10**9))
  return mtime_ns


# ---------------------------------------------------------------------------
# A pack made in this process: the folders' images.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def packed_tree(tmp_path_factory):
  """(root, landmarks, pack_dir, manifest) of 4 identities of 3 images in
  shards of 5."""
  directory = tmp_path_factory.mktemp('packed_tree')
  root = directory / 'tree'
  landmarks = write_landmarked_tree(str(root))
  manifest = _pack(root, landmarks, directory / 'pack')
  return root, landmarks, str(directory / 'pack'), manifest


@pytest.fixture(scope='module')
def folders_and_pack(packed_tree):
  """The dataset read from the folders, and from the pack."""
  root, landmarks, pack_dir, _ = packed_tree
  return _load(root, landmarks), _load(root, landmarks, packed_dir=pack_dir)


def test_pack_manifest_counts_the_images_and_shards(packed_tree):
  manifest = packed_tree[3]
  assert manifest['num_images'] == 12 and len(manifest['shards']) == 3


def test_pack_manifest_lists_the_identities(packed_tree):
  assert packed_tree[3]['identities'] == ['id_0', 'id_1', 'id_2', 'id_3']


def test_a_packed_dataset_reads_packed_images(folders_and_pack):
  _, from_pack = folders_and_pack
  assert isinstance(from_pack.train.images, packed.PackedImages)


def test_a_packed_dataset_has_the_folders_class_names(folders_and_pack):
  folders, from_pack = folders_and_pack
  assert from_pack.class_names == folders.class_names


@pytest.mark.parametrize('split', ['train', 'test'])
def test_packed_labels_equal_the_folders(folders_and_pack, split):
  folders, from_pack = folders_and_pack
  np.testing.assert_array_equal(getattr(from_pack, split).labels,
                                getattr(folders, split).labels)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_packed_images_equal_the_decoded_and_aligned_folders(
    folders_and_pack, split):
  folders, from_pack = folders_and_pack
  np.testing.assert_array_equal(np.asarray(getattr(from_pack, split).images),
                                np.asarray(getattr(folders, split).images))


def test_a_gather_across_shards_equals_the_folders(folders_and_pack):
  # In any order, as a batch reads it.
  folders, from_pack = folders_and_pack
  indices = np.array([7, 0, 5, 3])
  np.testing.assert_array_equal(from_pack.train.images[indices],
                                folders.train.images[indices])


def test_a_pack_without_its_tree_is_read_unchecked(packed_tree):
  # A copy of the pack elsewhere.
  alone = face_folders.load_identity_folders(
      packed_dir=packed_tree[2], num_classes=4, image_shape=SHAPE)
  assert alone.train.num_examples == 8


# ---------------------------------------------------------------------------
# Stale or corrupt packs.
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_pack(tmp_path):
  """(root, landmarks, pack_dir) of a tree and its pack, for a test to spoil."""
  root = tmp_path / 'tree'
  landmarks = write_landmarked_tree(str(root))
  _pack(root, landmarks, tmp_path / 'pack')
  return root, landmarks, str(tmp_path / 'pack')


def test_a_pack_of_another_image_shape_is_refused(fresh_pack):
  root, landmarks, pack_dir = fresh_pack
  with pytest.raises(packed.StalePackError, match=r'shape \(28, 24, 3\).*'
                     r'expects \(56, 48, 3\)'):
    face_folders.load_identity_folders(
        **dict(_settings(root, landmarks), image_shape=(56, 48, 3)),
        num_classes=4, packed_dir=pack_dir)


def test_a_pack_of_a_since_changed_tree_is_refused(fresh_pack):
  root, landmarks, pack_dir = fresh_pack
  _touch(root / 'id_2' / '1.png')
  with pytest.raises(packed.StalePackError, match='another state of'):
    _load(root, landmarks, packed_dir=pack_dir)


def test_repacking_refreshes_a_stale_pack(fresh_pack):
  root, landmarks, pack_dir = fresh_pack
  _touch(root / 'id_2' / '1.png')
  _pack(root, landmarks, pack_dir)
  _load(root, landmarks, packed_dir=pack_dir)


def test_a_flipped_byte_in_a_shard_is_refused_naming_the_shard(fresh_pack):
  root, landmarks, pack_dir = fresh_pack
  shard = os.path.join(pack_dir, 'images-00001.u8')
  with open(shard, 'r+b') as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(packed.StalePackError, match='images-00001.u8'):
    _load(root, landmarks, packed_dir=pack_dir)


# ---------------------------------------------------------------------------
# The pack command: a corrupt image fails the run, a rerun resumes and packs
# the LFW pairs too. Two subprocess runs serve every test below.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pack_runs(tmp_path_factory):
  """Runs the pack command on a tree with a corrupt image (image 6 of 12, in
  the second shard) and LFW pairs, then again once the image is fixed."""
  runs = types.SimpleNamespace()
  directory = tmp_path_factory.mktemp('pack_command')
  runs.root = directory / 'tree'
  runs.landmarks = write_landmarked_tree(str(runs.root))
  runs.lfw = directory / 'lfw'
  lfw_landmarks, pairs_file = write_landmarked_lfw_tree(str(runs.lfw))
  runs.pairs_config = dict(pairs_dir=str(runs.lfw), pairs_file=pairs_file,
                           pairs_landmarks=lfw_landmarks)
  runs.pack_dir = directory / 'pack'
  runs.bad = runs.root / 'id_2' / '0.png'
  good_bytes = runs.bad.read_bytes()
  runs.bad.write_bytes(b'not a png')
  command = [sys.executable, '-m', 'centerloss_jax.pack',
             '--config=configs/casia_webface_face_resnet.py',
             f'--config.input.train_dir={runs.root}',
             f'--config.input.landmarks={runs.landmarks}',
             f'--config.input.image_shape={SHAPE}',
             f'--out_dir={runs.pack_dir}', '--images_per_shard=5',
             *(f'--config.input.{key}={value}'
               for key, value in runs.pairs_config.items())]
  runs.failed = subprocess.run(command, cwd=repo_paths.REPO_ROOT,
                               capture_output=True, text=True, timeout=120)
  runs.failed_listing = sorted(os.listdir(runs.pack_dir))
  runs.unfinished_pack = directory / 'unfinished_pack'
  shutil.copytree(runs.pack_dir, runs.unfinished_pack)
  runs.first_shard_time = os.stat(
      runs.pack_dir / 'images-00000.u8').st_mtime_ns
  runs.bad.write_bytes(good_bytes)
  runs.resumed = subprocess.run(command, cwd=repo_paths.REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
  return runs


@pytest.mark.slow
def test_pack_command_fails_on_a_corrupt_image(pack_runs):
  assert pack_runs.failed.returncode == 1


@pytest.mark.slow
def test_pack_command_error_names_the_corrupt_image(pack_runs):
  assert str(pack_runs.bad) in (
      pack_runs.failed.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_failed_pack_keeps_only_its_finished_shards(pack_runs):
  # The first shard is finished and recorded; nothing else is there.
  assert pack_runs.failed_listing == ['images-00000.u8', 'progress.json']


@pytest.mark.slow
def test_an_unfinished_pack_is_refused(pack_runs):
  with pytest.raises(FileNotFoundError, match='packing did not finish'):
    _load(pack_runs.root, pack_runs.landmarks,
          packed_dir=str(pack_runs.unfinished_pack))


@pytest.mark.slow
def test_pack_command_rerun_packs_the_fixed_tree(pack_runs):
  assert pack_runs.resumed.returncode == 0, pack_runs.resumed.stderr[-2000:]
  assert 'Packed 12 images of 4 identities' in pack_runs.resumed.stdout


@pytest.mark.slow
def test_pack_command_rerun_keeps_the_finished_shard(pack_runs):
  # Its files did not change.
  assert os.stat(pack_runs.pack_dir / 'images-00000.u8').st_mtime_ns == (
      pack_runs.first_shard_time)


@pytest.mark.slow
def test_pack_command_rerun_packs_the_remaining_shards(pack_runs):
  with open(pack_runs.pack_dir / 'manifest.json') as f:
    assert len(json.load(f)['shards']) == 3


@pytest.mark.slow
def test_a_resumed_pack_holds_the_folders_images(pack_runs):
  np.testing.assert_array_equal(
      np.asarray(_load(pack_runs.root, pack_runs.landmarks,
                       packed_dir=str(pack_runs.pack_dir)).train.images),
      np.asarray(_load(pack_runs.root, pack_runs.landmarks).train.images))


@pytest.mark.slow
def test_pack_command_packs_the_lfw_pair_images(pack_runs):
  assert pack_runs.resumed.returncode == 0, pack_runs.resumed.stderr[-2000:]
  assert 'Packed the 5 lfw pair images' in pack_runs.resumed.stdout


@pytest.fixture(scope='module')
def lfw_folders_and_pack(pack_runs):
  """The verification set read from the LFW folders, and from the pack."""
  def verification(**kwargs):
    return _load(pack_runs.root, pack_runs.landmarks,
                 **pack_runs.pairs_config, **kwargs).verification
  return verification(), verification(packed_dir=str(pack_runs.pack_dir))


@pytest.mark.slow
def test_the_trainer_reads_the_lfw_pairs_from_the_pack(lfw_folders_and_pack):
  _, from_pack = lfw_folders_and_pack
  assert isinstance(from_pack.images, packed.PackedImages)


@pytest.mark.slow
def test_packed_lfw_pair_images_equal_the_folders(lfw_folders_and_pack):
  folders, from_pack = lfw_folders_and_pack
  np.testing.assert_array_equal(np.asarray(from_pack.images),
                                np.asarray(folders.images))


@pytest.mark.slow
@pytest.mark.parametrize('field', ['left', 'right', 'is_same', 'fold'])
def test_packed_lfw_pairs_equal_the_folders_pairs(lfw_folders_and_pack,
                                                  field):
  folders, from_pack = lfw_folders_and_pack
  np.testing.assert_array_equal(getattr(from_pack, field),
                                getattr(folders, field))


@pytest.mark.slow
def test_a_pack_of_a_since_changed_lfw_image_is_refused(pack_runs):
  changed = lfw_path(str(pack_runs.lfw), 'Bob', 2)
  mtime_ns = _touch(changed)
  try:
    with pytest.raises(packed.StalePackError, match='pairs_lfw.*another '
                       f'state of {pack_runs.lfw}'):
      _load(pack_runs.root, pack_runs.landmarks,
            packed_dir=str(pack_runs.pack_dir), **pack_runs.pairs_config)
  finally:
    os.utime(changed, ns=(0, mtime_ns))
