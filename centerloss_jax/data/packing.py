"""Packing an identity-folder tree: decode and align once (`data.packed`).

The writing side of packed face records, kept apart from `face_folders`
(which reads trees and packs) so that the imports point one way:
`packing` -> `face_folders` -> `packed`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from centerloss_jax.data import face_folders
from centerloss_jax.data import packed
from centerloss_jax.data.image_files import check_image_shape
from centerloss_jax.data.image_files import DEFAULT_IMAGE_SHAPE


def pack_identity_folders(
    *, train_dir: str, out_dir: str,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    landmarks: Optional[str] = None, min_images_per_identity: int = 1,
    images_per_shard: int = packed.DEFAULT_IMAGES_PER_SHARD,
    num_workers: int = 0) -> dict:
  """Decodes and aligns a training tree once into a pack (`data.packed`).

  The images are those `load_identity_folders` reads with the same
  arguments, in the same order;
  `face_folders.load_identity_folders(packed_dir=out_dir)`
  then reads them with no decode.

  Args:
    train_dir: the identity folders.
    out_dir: the pack directory.
    image_shape: (H, W, C) of the packed crops.
    landmarks: the 5-landmark list to align with, or None.
    min_images_per_identity: identities with fewer images are left out.
    images_per_shard: images per shard file.
    num_workers: worker processes decoding (0: this process).

  Returns:
    The pack's manifest.

  Raises:
    ValueError: an image that cannot be decoded or aligned (named); the
      finished shards stay, and rerunning resumes after them.
  """
  image_shape = check_image_shape(image_shape)
  images, labels, names = face_folders.identity_folder_images(
      train_dir, image_shape=image_shape, landmarks=landmarks,
      min_images_per_identity=int(min_images_per_identity))
  source = {'train_dir': os.path.abspath(train_dir), 'landmarks': landmarks,
            'min_images_per_identity': int(min_images_per_identity)}
  return packed.pack_images(images, labels, names, out_dir, root=train_dir,
                            source=source, images_per_shard=images_per_shard,
                            num_workers=num_workers)


def pack_pairs_set(
    *, pairs_dir: str, pairs_file: str, out_dir: str,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    landmarks: Optional[str] = None,
    images_per_shard: int = packed.DEFAULT_IMAGES_PER_SHARD,
    num_workers: int = 0) -> dict:
  """Decodes and aligns a verification set's images once into a pack.

  The distinct images of the pairs file, in `face_folders.load_pairs_set`'s
  order (first appearance), labelled by their identity folder;
  `load_pairs_set(..., packed_dir=out_dir)` then reads them with no decode.
  The pairs themselves stay in `pairs_file`, read at load time.

  Args:
    pairs_dir: the images' root (LFW's `<name>/<name>_<NNNN>.jpg`).
    pairs_file: the LFW-format pairs file.
    out_dir: the pack directory (`packed.pairs_pack_dir` of a training
      pack, for the trainer to find it).
    image_shape: (H, W, C) of the packed crops.
    landmarks: the images' 5-landmark list, or None.
    images_per_shard: images per shard file.
    num_workers: worker processes decoding (0: this process).

  Returns:
    The pack's manifest.

  Raises:
    ValueError, FileNotFoundError: as `load_pairs_set`, or an image that
      cannot be decoded or aligned (named; a rerun resumes).
  """
  image_shape = check_image_shape(image_shape)
  images = face_folders.load_pairs_set(
      pairs_dir, pairs_file, image_shape=image_shape,
      landmarks_path=landmarks).images
  folders = [os.path.basename(os.path.dirname(path)) for path in images.paths]
  names = sorted(set(folders))
  label_of = {name: label for label, name in enumerate(names)}
  labels = np.array([label_of[folder] for folder in folders], np.int32)
  source = {'pairs_dir': os.path.abspath(pairs_dir),
            'pairs_file': os.path.abspath(pairs_file), 'landmarks': landmarks}
  return packed.pack_images(images, labels, names, out_dir, root=pairs_dir,
                            source=source, images_per_shard=images_per_shard,
                            num_workers=num_workers)
