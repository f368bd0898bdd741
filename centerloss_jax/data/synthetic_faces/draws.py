"""The random numbers of each image: a counter-based hash of its identity.

Image `j` of identity `i` draws its nuisances from a counter-based hash of
`(seed, i, j)` (`image_uniforms`), so it is the same whatever other images
are rendered with it. `ImageDraws` names them for the nuisances of
`warps` and `rendering`.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

# Salt of the images' random stream (see `identities._IDENTITY_STREAM`).
_IMAGE_STREAM = 0x5EED

# The per-image random numbers, two uniforms each (a symmetric one is their
# sum minus 1, triangular on [-1, 1]).
IMAGE_VARIABLES = (
    'rotation', 'scale', 'shift_x', 'shift_y', 'yaw', 'pitch', 'mouth_width',
    'mouth_open', 'smile', 'eye_squeeze', 'light_angle', 'light_gradient',
    'gain', 'cast_r', 'cast_g', 'cast_b', 'tone', 'noise', 'noise_pattern',
    'background_level', 'background_r', 'background_g', 'background_b',
    'occlusion',
    'occluder_x', 'occluder_y', 'occluder_width', 'occluder_height',
    'occluder_r', 'occluder_g', 'occluder_b')


_IMAGE_COLUMN = {name: 2 * k for k, name in enumerate(IMAGE_VARIABLES)}


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijective scramble of uint64 values."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def image_uniforms(seed: int, identity_ids: np.ndarray, image_ids: np.ndarray,
                   count: int) -> np.ndarray:
  """Uniforms in [0, 1) that depend only on `(seed, identity, image, k)`.

  A counter-based generator (SplitMix64 applied to a key hashed from the
  three numbers), so that any set of images is drawn at once, vectorised,
  and each image's randomness is its own.

  Args:
    seed: non-negative seed.
    identity_ids: int (M,) identity numbers.
    image_ids: int (M,) image numbers.
    count: uniforms per image.

  Returns:
    float64 (M, count).
  """
  with np.errstate(over='ignore'):
    ids = np.asarray(identity_ids, np.int64).reshape(-1).astype(np.uint64)
    jds = np.asarray(image_ids, np.int64).reshape(-1).astype(np.uint64)
    key = _mix64(np.full(ids.shape, seed, np.uint64) * _GOLDEN_GAMMA
                 + np.uint64(_IMAGE_STREAM))
    key = _mix64(key ^ ids)
    key = _mix64((key + jds) * _GOLDEN_GAMMA)
    counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN_GAMMA
    bits = _mix64(key[:, None] + counters[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class ImageDraws:
  """The random numbers of a chunk of images, by `IMAGE_VARIABLES` name."""

  def __init__(self, uniforms: np.ndarray):
    """Wraps (m, 2 * len(IMAGE_VARIABLES)) uniforms from `image_uniforms`."""
    self._uniforms = uniforms

  def uniform(self, name: str) -> np.ndarray:
    """float32 (m,) uniform on [0, 1)."""
    return self._uniforms[:, _IMAGE_COLUMN[name]].astype(np.float32)

  def symmetric(self, name: str) -> np.ndarray:
    """float32 (m,) triangular on [-1, 1]: the two uniforms' sum minus 1."""
    column = _IMAGE_COLUMN[name]
    return (self._uniforms[:, column] + self._uniforms[:, column + 1]
            - 1).astype(np.float32)


def per_image(a) -> np.ndarray:
  """(m,) -> float32 (m, 1), to broadcast along x or y."""
  return np.asarray(a, np.float32)[:, None]


def pixel_coords(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """float32 x of the image columns (1, W) and y of its rows (1, H)."""
  return (np.arange(width, dtype=np.float32)[None, :],
          np.arange(height, dtype=np.float32)[None, :])

