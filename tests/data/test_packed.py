"""Packed face records: the same images as the folders they were packed
from, stale or corrupt packs refused, a failed pack named and resumable."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from centerloss_jax.data import alignment
from centerloss_jax.data import face_folders
from centerloss_jax.data import packed
from centerloss_jax.data import packing
import repo_paths

SHAPE = (28, 24, 3)


def _write_tree(root, *, identities=4, images_each=3):
  """Random-pixel PNGs (each image identifies itself) and their landmarks:
  the template scaled to a 40x34 source, so alignment really warps."""
  rng = np.random.default_rng(0)
  points = alignment.scale_template((40, 34)).reshape(-1)
  lines = []
  for identity in range(identities):
    for number in range(images_each):
      relative = f'id_{identity}/{number}.png'
      path = os.path.join(root, relative)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (40, 34, 3), dtype=np.uint8)).save(
          path)
      lines.append(relative + ' ' + ' '.join(f'{v:.3f}' for v in points))
  landmarks = os.path.join(root, 'landmarks.txt')
  with open(landmarks, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return landmarks


def _settings(root, landmarks):
  return dict(train_dir=str(root), image_shape=SHAPE, landmarks=landmarks)


def _load(root, landmarks, **kwargs):
  return face_folders.load_identity_folders(
      num_classes=4, test_images_per_identity=1,
      **_settings(root, landmarks), **kwargs)


def test_packed_images_equal_the_decoded_and_aligned_folders(tmp_path):
  root = tmp_path / 'tree'
  landmarks = _write_tree(str(root))
  manifest = packing.pack_identity_folders(
      out_dir=str(tmp_path / 'pack'), images_per_shard=5,
      **_settings(root, landmarks))
  assert manifest['num_images'] == 12 and len(manifest['shards']) == 3
  assert manifest['identities'] == ['id_0', 'id_1', 'id_2', 'id_3']
  folders = _load(root, landmarks)
  from_pack = _load(root, landmarks, packed_dir=str(tmp_path / 'pack'))
  assert isinstance(from_pack.train.images, packed.PackedImages)
  assert from_pack.class_names == folders.class_names
  for split in ('train', 'test'):
    np.testing.assert_array_equal(getattr(from_pack, split).labels,
                                  getattr(folders, split).labels)
    np.testing.assert_array_equal(np.asarray(getattr(from_pack, split).images),
                                  np.asarray(getattr(folders, split).images))
  # A gather across shards, in any order, as a batch reads it.
  indices = np.array([7, 0, 5, 3])
  np.testing.assert_array_equal(from_pack.train.images[indices],
                                folders.train.images[indices])
  # Without the tree (a copy of the pack elsewhere): read, unchecked.
  alone = face_folders.load_identity_folders(
      packed_dir=str(tmp_path / 'pack'), num_classes=4, image_shape=SHAPE)
  assert alone.train.num_examples == 8


def test_a_relative_train_dir_finds_its_landmarks(tmp_path, monkeypatch):
  landmarks = _write_tree(str(tmp_path / 'tree'))
  absolute = _load(tmp_path / 'tree', landmarks)
  monkeypatch.chdir(tmp_path)
  relative = _load('tree', os.path.join('tree', 'landmarks.txt'))
  np.testing.assert_array_equal(np.asarray(relative.train.images),
                                np.asarray(absolute.train.images))


def test_stale_or_corrupt_packs_are_refused(tmp_path):
  root = tmp_path / 'tree'
  landmarks = _write_tree(str(root))
  pack_dir = str(tmp_path / 'pack')
  packing.pack_identity_folders(out_dir=pack_dir, images_per_shard=5,
                                     **_settings(root, landmarks))
  with pytest.raises(packed.StalePackError, match=r'shape \(28, 24, 3\).*'
                     r'expects \(56, 48, 3\)'):
    face_folders.load_identity_folders(
        **dict(_settings(root, landmarks), image_shape=(56, 48, 3)),
        num_classes=4, packed_dir=pack_dir)
  # A file of the tree changed since packing.
  changed = root / 'id_2' / '1.png'
  os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
  with pytest.raises(packed.StalePackError, match='another state of'):
    _load(root, landmarks, packed_dir=pack_dir)
  # Repacking refreshes it; then a flipped byte in a shard is caught.
  packing.pack_identity_folders(out_dir=pack_dir, images_per_shard=5,
                                     **_settings(root, landmarks))
  _load(root, landmarks, packed_dir=pack_dir)
  shard = os.path.join(pack_dir, 'images-00001.u8')
  with open(shard, 'r+b') as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(packed.StalePackError, match='images-00001.u8'):
    _load(root, landmarks, packed_dir=pack_dir)


def test_a_corrupt_image_is_named_packs_nothing_half_way_and_resumes(
    tmp_path):
  root = tmp_path / 'tree'
  landmarks = _write_tree(str(root))
  bad = root / 'id_2' / '0.png'  # Image 6 of 12: in the second shard.
  good_bytes = bad.read_bytes()
  bad.write_bytes(b'not a png')
  pack_dir = tmp_path / 'pack'
  command = [sys.executable, '-m', 'centerloss_jax.pack',
             '--config=configs/casia_webface_face_resnet.py',
             f'--config.input.train_dir={root}',
             f'--config.input.landmarks={landmarks}',
             f'--config.input.image_shape={SHAPE}',
             f'--out_dir={pack_dir}', '--images_per_shard=5']
  result = subprocess.run(command, cwd=repo_paths.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert str(bad) in result.stderr.strip().splitlines()[-1]
  # The first shard is finished and recorded; nothing else is there.
  assert sorted(os.listdir(pack_dir)) == ['images-00000.u8', 'progress.json']
  first_shard_time = os.stat(pack_dir / 'images-00000.u8').st_mtime_ns
  with pytest.raises(FileNotFoundError, match='packing did not finish'):
    _load(root, landmarks, packed_dir=str(pack_dir))

  # Fixed, the rerun keeps the finished shard (its files did not change)
  # and packs the rest.
  bad.write_bytes(good_bytes)
  result = subprocess.run(command, cwd=repo_paths.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Packed 12 images of 4 identities' in result.stdout
  assert os.stat(pack_dir / 'images-00000.u8').st_mtime_ns == first_shard_time
  with open(pack_dir / 'manifest.json') as f:
    assert len(json.load(f)['shards']) == 3
  np.testing.assert_array_equal(
      np.asarray(_load(root, landmarks, packed_dir=str(pack_dir)).train.images),
      np.asarray(_load(root, landmarks).train.images))


def _write_lfw(root):
  """LFW's layout (`<name>/<name>_<NNNN>.png`), random pixels, landmarks and
  a pairs file of 2 folds."""
  rng = np.random.default_rng(1)
  points = alignment.scale_template((40, 34)).reshape(-1)
  lines = []
  for name, number in (('Ann', 1), ('Ann', 2), ('Ben', 1), ('Ben', 2),
                       ('Cy', 1)):
    relative = f'{name}/{name}_{number:04d}.png'
    os.makedirs(os.path.join(root, name), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 34, 3), dtype=np.uint8)).save(
        os.path.join(root, relative))
    lines.append(relative + ' ' + ' '.join(f'{v:.3f}' for v in points))
  landmarks = os.path.join(root, 'landmarks.txt')
  with open(landmarks, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  pairs = os.path.join(root, 'pairs.txt')
  with open(pairs, 'w') as f:
    f.write('2 1\nAnn 1 2\nAnn 1 Ben 1\nBen 1 2\nBen 2 Cy 1\n')
  return landmarks, pairs


def test_the_pack_command_packs_the_lfw_pairs_the_trainer_then_reads(
    tmp_path):
  root = tmp_path / 'tree'
  landmarks = _write_tree(str(root))
  lfw = tmp_path / 'lfw'
  lfw_landmarks, pairs_file = _write_lfw(str(lfw))
  pack_dir = tmp_path / 'pack'
  pairs_config = dict(pairs_dir=str(lfw), pairs_file=pairs_file,
                      pairs_landmarks=lfw_landmarks)
  result = subprocess.run(
      [sys.executable, '-m', 'centerloss_jax.pack',
       '--config=configs/casia_webface_face_resnet.py',
       f'--config.input.train_dir={root}',
       f'--config.input.landmarks={landmarks}',
       f'--config.input.image_shape={SHAPE}', f'--out_dir={pack_dir}',
       *(f'--config.input.{key}={value}'
         for key, value in pairs_config.items())],
      cwd=repo_paths.REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Packed the 5 lfw pair images' in result.stdout
  folders = _load(root, landmarks, **pairs_config).verification
  from_pack = _load(root, landmarks, packed_dir=str(pack_dir),
                    **pairs_config).verification
  assert isinstance(from_pack.images, packed.PackedImages)
  np.testing.assert_array_equal(np.asarray(from_pack.images),
                                np.asarray(folders.images))
  for field in ('left', 'right', 'is_same', 'fold'):
    np.testing.assert_array_equal(getattr(from_pack, field),
                                  getattr(folders, field))
  # An LFW image changed since packing: that pack is refused, not used.
  changed = lfw / 'Ben' / 'Ben_0002.png'
  os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
  with pytest.raises(packed.StalePackError, match='pairs_lfw.*another state '
                     f'of {lfw}'):
    _load(root, landmarks, packed_dir=str(pack_dir), **pairs_config)
