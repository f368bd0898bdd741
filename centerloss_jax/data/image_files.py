"""Image files on disk as a lazy uint8 array: decoded (and aligned) on access.

Face training sets (CASIA-WebFace: 0.5M images, MS1M: millions) do not fit
in host memory as decoded crops, so their images stay files: `ImageFiles`
decodes only the images a batch indexes, and `batching.epoch_batches`
indexes each process's share of a global batch, so every process reads only
its own examples.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from centerloss_jax.data import alignment

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.webp')


DEFAULT_IMAGE_SHAPE = (112, 96, 3)


def check_image_shape(image_shape: Sequence[int]) -> Tuple[int, int, int]:
  """Validates an image shape.

  Args:
    image_shape: (H, W, C).

  Returns:
    The shape as a tuple of ints.

  Raises:
    ValueError: not three values, H or W not positive, or C not 1 (grey) or
      3 (RGB).
  """
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or shape[0] <= 0 or shape[1] <= 0 or shape[2] not in (
      1, 3):
    raise ValueError(
        f'image_shape must be (H, W, C) with positive H, W and C in (1, 3), '
        f'got {tuple(image_shape)}.')
  return shape


class ImageFiles:
  """A lazy uint8 `(N, H, W, C)` array of image files, decoded on access.

  Image `i` is `paths[i]` decoded with PIL, converted to RGB (or grey for
  C = 1), then either aligned by its landmarks to the 5-point template
  (`alignment.align_face`) or, without landmarks, centre-cropped to the
  aspect ratio `W / H` and resized to (H, W) with PIL's bilinear filter.

  Indexing: an int gives one (H, W, C) ndarray; an integer array (any shape)
  gives the stacked ndarray `index.shape + (H, W, C)`, decoded one by one
  (or by `num_threads` threads); a slice gives a new lazy
  `ImageFiles` over those files. `np.asarray(files)` reads everything.

  Attributes:
    paths: object ndarray (N,) of file paths.
    landmarks: float64 (N, 5, 2) (x, y) source-image landmarks, or None.
    shape: (N, H, W, C).
    dtype: np.uint8.
    ndim: 4.
    num_threads: decoding threads for array indexing.
  """

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, paths: Sequence[str],
               image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
               landmarks: Optional[np.ndarray] = None, *,
               num_threads: int = 1):
    """Wraps `paths`; nothing is read until indexed.

    Args:
      paths: N image file paths.
      image_shape: (H, W, C) of the returned images, C in (1, 3).
      landmarks: None, or (N, 5, 2) finite (x, y) landmarks per image in the
        order of `alignment.TEMPLATE_112x96`.
      num_threads: threads used to decode an array index (1: no pool, the
        default: alignment holds the GIL, so 8 threads cost about 1.5x the
        CPU of one for the same wall time; the input pipeline's worker
        processes are the parallelism).

    Raises:
      ValueError: a bad image shape, landmarks of the wrong shape or with
        non-finite values, or `num_threads` < 1.
    """
    self.paths = np.asarray(list(paths) if not isinstance(paths, np.ndarray)
                            else paths, dtype=object).reshape(-1)
    self._image_shape = check_image_shape(image_shape)
    if landmarks is not None:
      landmarks = np.asarray(landmarks, dtype=np.float64)
      if landmarks.shape != (len(self.paths), 5, 2):
        raise ValueError(
            f'landmarks must have shape (N, 5, 2) = ({len(self.paths)}, 5, 2) '
            f'to match the {len(self.paths)} paths, got {landmarks.shape}.')
      if not np.isfinite(landmarks).all():
        bad = int(np.argmax(~np.isfinite(landmarks).all(axis=(1, 2))))
        raise ValueError(f'landmarks of {self.paths[bad]} are not finite: '
                         f'{landmarks[bad].tolist()}.')
    self.landmarks = landmarks
    if num_threads < 1:
      raise ValueError(f'num_threads must be >= 1, got {num_threads}.')
    self.num_threads = int(num_threads)

  @property
  def shape(self) -> Tuple[int, int, int, int]:
    """(N, H, W, C)."""
    return (len(self.paths),) + self._image_shape

  def __len__(self) -> int:
    return len(self.paths)

  def __repr__(self) -> str:
    aligned = 'aligned' if self.landmarks is not None else 'centre-cropped'
    return f'ImageFiles(shape={self.shape}, {aligned})'

  def read(self, index: int) -> np.ndarray:
    """Decodes image `index` (non-negative) into uint8 (H, W, C).

    Raises:
      FileNotFoundError: the file does not exist (the message names it).
      ValueError: PIL cannot decode the file (the message names it).
    """
    path = self.paths[index]
    height, width, channels = self._image_shape
    mode = 'RGB' if channels == 3 else 'L'
    try:
      with Image.open(path) as opened:
        picture = opened.convert(mode)  # Forces the full decode here.
    except FileNotFoundError as error:
      raise FileNotFoundError(f'Image file not found: {path}') from error
    except (OSError, SyntaxError, ValueError) as error:
      # PIL raises UnidentifiedImageError (an OSError) for unknown formats,
      # OSError or SyntaxError for truncated or corrupt ones.
      raise ValueError(
          f'Cannot decode image file {path}: {type(error).__name__}: '
          f'{error}') from error
    if self.landmarks is not None:
      pixels = np.asarray(picture)
      try:
        aligned = alignment.align_face(pixels, self.landmarks[index],
                                       output_shape=(height, width))
      except ValueError as error:
        raise ValueError(f'Cannot align image file {path}: {error}') from error
      return aligned.reshape(height, width, channels)
    source_width, source_height = picture.size
    if (source_width, source_height) != (width, height):
      # Crop to the target aspect ratio first so faces are not stretched.
      target_aspect = width / height
      if source_width / source_height > target_aspect:
        crop = source_height * target_aspect
        box = ((source_width - crop) / 2, 0, (source_width + crop) / 2,
               source_height)
      else:
        crop = source_width / target_aspect
        box = (0, (source_height - crop) / 2, source_width,
               (source_height + crop) / 2)
      picture = picture.resize((width, height), Image.BILINEAR, box=box)
    return np.asarray(picture, dtype=np.uint8).reshape(height, width,
                                                        channels)

  def _normalize_index(self, index: int) -> int:
    n = len(self.paths)
    if not -n <= index < n:
      raise IndexError(f'Image index {index} is out of range for {n} images.')
    return index % n

  def __getitem__(self, index: Any):
    """Images at an int, an integer array or a slice (see the class doc)."""
    if isinstance(index, (int, np.integer)):
      return self.read(self._normalize_index(int(index)))
    if isinstance(index, slice):
      landmarks = None if self.landmarks is None else self.landmarks[index]
      return ImageFiles(self.paths[index], self._image_shape, landmarks,
                        num_threads=self.num_threads)
    indices = np.asarray(index)
    if indices.size == 0:  # np.asarray([]) is float.
      indices = indices.astype(np.int64)
    if indices.dtype == bool or not np.issubdtype(indices.dtype, np.integer):
      raise TypeError(
          'ImageFiles supports an int, a slice or an integer array as index, '
          f'got {type(index).__name__} of dtype {indices.dtype}.')
    flat = [self._normalize_index(int(i)) for i in indices.reshape(-1)]
    out = np.empty((len(flat),) + self._image_shape, np.uint8)
    if self.num_threads == 1 or len(flat) <= 1:
      for k, i in enumerate(flat):
        out[k] = self.read(i)
    else:
      workers = min(self.num_threads, len(flat))
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for k, image in enumerate(pool.map(self.read, flat)):
          out[k] = image
    return out.reshape(indices.shape + self._image_shape)

  def subset(self, indices: np.ndarray) -> ImageFiles:
    """The images at `indices`, still lazy (with their landmarks)."""
    indices = np.asarray(indices, np.int64)
    return ImageFiles(
        self.paths[indices], self._image_shape,
        None if self.landmarks is None else self.landmarks[indices],
        num_threads=self.num_threads)

  def __array__(self, dtype=None, copy=None):
    del copy  # A fresh array is always returned.
    images = self[np.arange(len(self.paths))]
    return images if dtype is None else images.astype(dtype)


def list_images(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS
                ) -> List[str]:
  """Every image file below `root`, at any depth, in sorted path order.

  For distractor sets such as MegaFace's, stored in nested folders whose
  names carry no identity.

  Raises:
    FileNotFoundError: `root` is not a directory.
    ValueError: no image file below it.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f'Image root {root!r} is not a directory.')
  suffixes = tuple(ext.lower() for ext in extensions)
  paths = []
  for directory, folders, files in os.walk(root):
    folders[:] = [f for f in folders if not f.startswith('.')]
    paths.extend(os.path.join(directory, name) for name in files
                 if not name.startswith('.')
                 and name.lower().endswith(suffixes))
  if not paths:
    raise ValueError(f'No image ending in {", ".join(suffixes)} below '
                     f'{root!r}.')
  return sorted(paths)

