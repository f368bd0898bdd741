"""The input benchmarks' data: a tree of synthetic face JPEGs and its pack.

One folder per identity of `image_size` x `image_size` renders of
`data.synthetic_faces`, a 5-landmark list for it (each face's template
points, so alignment does real work), and the tree packed at 112x96x3 by
`centerloss_jax.pack`'s code. Both are kept in their directory and reused
by later runs.
"""

from __future__ import annotations

import os

from PIL import Image

from centerloss_jax.data import alignment
from centerloss_jax.data import packing
from centerloss_jax.data import synthetic_faces

SHAPE = (112, 96, 3)


def write_tree(root: str, *, num_identities: int, images_per_identity: int,
               image_size: int) -> str:
  """Writes the JPEG tree (unless there); returns its landmark list's path."""
  landmarks = os.path.join(root, 'landmarks.txt')
  if os.path.exists(landmarks):
    return landmarks
  params = synthetic_faces.make_identities(num_identities, seed=0)
  points = alignment.scale_template((image_size, image_size)).reshape(-1)
  lines = []
  for identity in params.identity_ids:
    images = synthetic_faces.render(
        params, [identity] * images_per_identity,
        image_shape=(image_size, image_size, 3), seed=0)
    folder = os.path.join(root, f'id_{identity:04d}')
    os.makedirs(folder, exist_ok=True)
    for number, image in enumerate(images):
      relative = f'id_{identity:04d}/{number:03d}.jpg'
      Image.fromarray(image).save(os.path.join(root, relative), quality=90)
      lines.append(relative + ' ' + ' '.join(f'{v:.2f}' for v in points))
  # Written last, atomically: its presence means the tree is complete.
  with open(landmarks + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(landmarks + '.tmp', landmarks)
  return landmarks


def pack_tree(root: str, landmarks: str, pack_dir: str) -> None:
  """Packs the tree into `pack_dir` (reusing what an earlier run packed)."""
  packing.pack_identity_folders(train_dir=root, out_dir=pack_dir,
                                image_shape=SHAPE, landmarks=landmarks)
