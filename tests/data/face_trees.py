"""Tiny face files for the data tests, written under a test's tmp_path.

PNG images, identity-folder trees of random-pixel images with a 5-landmark
list, and LFW-layout trees (`<name>/<name>_<NNNN>.png`) with a pairs file of
two folds. Used by the tests of `face_folders`, `image_files`, `packed` and
`pipeline`.
"""

import os

import numpy as np
from PIL import Image

from centerloss_jax.data import alignment

# LFW's pairs.txt layout: 2 folds of 1 same and 1 different pair each.
PAIRS = '2 1\nAlice 1 2\nAlice 1 Bob 1\nBob 1 2\nBob 2 Carol 1\n'
# The (name, number) of each image PAIRS names, in order of first appearance.
LFW_IMAGES = (('Alice', 1), ('Alice', 2), ('Bob', 1), ('Bob', 2),
              ('Carol', 1))


def write_png(path, array):
  """Saves `array` as a uint8 PNG at `path`, making its folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def write_random_pngs(root, relative_paths, shape, seed):
  """Random-pixel PNGs (each image identifies itself); their full paths."""
  rng = np.random.default_rng(seed)
  paths = [os.path.join(root, relative) for relative in relative_paths]
  for path in paths:
    write_png(path, rng.integers(0, 256, shape, dtype=np.uint8))
  return paths


def lfw_path(root, name, number):
  """Image `number` of `name` in an LFW-layout tree under `root`."""
  return os.path.join(root, name, f'{name}_{number:04d}.png')


def write_grey_lfw_tree(root):
  """LFW_IMAGES, each a flat 8x6 image of its own grey (0, 40, ... 160)."""
  for grey, (name, number) in enumerate(LFW_IMAGES):
    write_png(lfw_path(root, name, number), np.full((8, 6, 3), 40 * grey))


def write_landmarks(root, relative_paths, source_shape=(40, 34)):
  """A landmark list at `root/landmarks.txt` giving every image the template
  scaled to `source_shape`, so that aligning to another shape really warps.

  Returns:
    The list's path.
  """
  points = alignment.scale_template(source_shape).reshape(-1)
  path = os.path.join(root, 'landmarks.txt')
  with open(path, 'w') as f:
    for relative in relative_paths:
      f.write(relative + ' ' + ' '.join(f'{v:.3f}' for v in points) + '\n')
  return path


def write_landmarked_tree(root, *, identities=4, images_each=3):
  """Identity folders `id_<i>/<n>.png` of random 40x34 images, landmarked.

  Returns:
    The landmark list's path (`root/landmarks.txt`).
  """
  relative_paths = [f'id_{identity}/{number}.png'
                    for identity in range(identities)
                    for number in range(images_each)]
  write_random_pngs(root, relative_paths, (40, 34, 3), seed=0)
  return write_landmarks(root, relative_paths)


def write_landmarked_lfw_tree(root):
  """LFW_IMAGES as random 40x34 images, landmarked, with PAIRS.

  Returns:
    (landmark list path, pairs file path), both under `root`.
  """
  relative_paths = [os.path.relpath(lfw_path(root, name, number), root)
                    for name, number in LFW_IMAGES]
  write_random_pngs(root, relative_paths, (40, 34, 3), seed=1)
  pairs = os.path.join(root, 'pairs.txt')
  with open(pairs, 'w') as f:
    f.write(PAIRS)
  return write_landmarks(root, relative_paths), pairs
