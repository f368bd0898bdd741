"""Face datasets on disk: identity folders, landmark lists, LFW-style pairs.

Face training sets (CASIA-WebFace: 0.5M images, MS1M: millions) do not fit in
host memory as decoded crops, so their images stay files: `ImageFiles` is a
lazy uint8 `(N, H, W, 3)` array-like that decodes (and aligns, when landmarks
are given) only the images a batch indexes. `input_pipeline.epoch_batches`
indexes each process's share of a global batch, so every process reads only
its own examples.

Layouts read here:

* Training set: one sub-folder per identity (the usual CASIA-WebFace / MS1M
  export), `scan_identity_folders`.
* Landmarks: a text file, one line per image, `relative/path x1 y1 ... x5 y5`
  (any fields between the path and the last ten numbers, such as the label of
  the widely shared CASIA lists, are ignored), `read_landmarks`.
* Verification pairs: LFW's `pairs.txt` (`read_pairs`, `load_pairs_set`),
  for LFW itself or any folder of `<name>/<name>_<i:04d>.<ext>` images.

`load_identity_folders` puts them together into an `input_pipeline.Dataset`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from centerloss_jax import alignment
from centerloss_jax import input_pipeline

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.webp')

DEFAULT_IMAGE_SHAPE = (112, 96, 3)

_NUM_LANDMARK_VALUES = 10  # Five (x, y) points.


# ---------------------------------------------------------------------------
# Lazy images.
# ---------------------------------------------------------------------------


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
  gives the stacked ndarray `index.shape + (H, W, C)`, decoded in a thread
  pool (PIL releases the GIL while decoding); a slice gives a new lazy
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
               num_threads: int = 8):
    """Wraps `paths`; nothing is read until indexed.

    Args:
      paths: N image file paths.
      image_shape: (H, W, C) of the returned images, C in (1, 3).
      landmarks: None, or (N, 5, 2) finite (x, y) landmarks per image in the
        order of `alignment.TEMPLATE_112x96`.
      num_threads: threads used to decode an array index (1: no pool).

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
      aligned = alignment.align_face(pixels, self.landmarks[index],
                                     output_shape=(height, width))
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

  def __array__(self, dtype=None, copy=None):
    del copy  # A fresh array is always returned.
    images = self[np.arange(len(self.paths))]
    return images if dtype is None else images.astype(dtype)


# ---------------------------------------------------------------------------
# Identity folders and landmarks.
# ---------------------------------------------------------------------------


def scan_identity_folders(
    root: str, *, min_images_per_identity: int = 1,
    extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> Tuple[List[str], np.ndarray, Tuple[str, ...]]:
  """Lists a training set stored as one sub-folder of images per identity.

  Identities are the sub-folders of `root` sorted by name; label k is the
  k-th kept identity. Inside a folder, files with one of `extensions`
  (case-insensitive) are taken in sorted order; hidden entries and nested
  folders are skipped.

  Args:
    root: the dataset directory.
    min_images_per_identity: identities with fewer images are dropped (the
      usual cleaning of web-collected sets), and later labels close the gap.
    extensions: accepted file name endings, with the dot.

  Returns:
    `(paths, labels, identity_names)`: file paths (root joined in), int32
    labels (N,), and the name of each label's folder.

  Raises:
    FileNotFoundError: `root` is not a directory.
    ValueError: no identity keeps at least `min_images_per_identity` images,
      or `min_images_per_identity` < 1.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'Identity folder root {root!r} is not a directory; expected one '
        'sub-folder of images per identity.')
  if min_images_per_identity < 1:
    raise ValueError(f'min_images_per_identity must be >= 1, got '
                     f'{min_images_per_identity}.')
  suffixes = tuple(ext.lower() for ext in extensions)
  folders = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_dir() and not entry.name.startswith('.'))
  paths, labels, names = [], [], []
  for folder in folders:
    directory = os.path.join(root, folder)
    files = sorted(entry.name for entry in os.scandir(directory)
                   if entry.is_file() and not entry.name.startswith('.')
                   and entry.name.lower().endswith(suffixes))
    if len(files) < min_images_per_identity:
      continue
    label = len(names)
    names.append(folder)
    paths.extend(os.path.join(directory, name) for name in files)
    labels.extend([label] * len(files))
  if not names:
    raise ValueError(
        f'No identity found under {root!r}: {len(folders)} sub-folders, none '
        f'with at least {min_images_per_identity} images ending in '
        f'{", ".join(suffixes)}. Expected root/<identity>/<image> files.')
  return paths, np.asarray(labels, dtype=np.int32), tuple(names)


def _relative_key(path: str, root: Optional[str]) -> str:
  """A path as a landmarks-dict key: relative to `root`, normalised."""
  if root is not None and os.path.isabs(path):
    path = os.path.relpath(path, root)
  return os.path.normpath(path)


def read_landmarks(path: str,
                   root: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Reads a 5-point landmark list, one image per line.

  Each line is `image_path [extra fields ...] x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`:
  the first field is the path, the last ten are the landmarks (left eye,
  right eye, nose, left and right mouth corners), and anything in between
  (e.g. the class label of `path label x1 ... y5` lists) is ignored. Paths
  cannot contain spaces. Blank lines and lines starting with '#' are skipped.

  Args:
    path: the text file.
    root: the image root; absolute image paths are made relative to it, so
      keys match the relative paths of the files under `root`.

  Returns:
    dict from normalised relative image path to float64 (5, 2) (x, y).

  Raises:
    ValueError: a line with fewer than 11 fields, non-numeric or non-finite
      landmarks, or an image listed twice; the message names file and line.
  """
  landmarks = {}
  line_of = {}
  with open(path, 'r', encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields or fields[0].startswith('#'):
        continue
      where = f'{path}, line {line_number}'
      if len(fields) < 1 + _NUM_LANDMARK_VALUES:
        raise ValueError(
            f'{where}: expected "image_path x1 y1 ... x5 y5" (a path and 10 '
            f'numbers, optionally with fields in between), got '
            f'{len(fields)} fields: {line.strip()!r}.')
      try:
        values = np.array(fields[-_NUM_LANDMARK_VALUES:], dtype=np.float64)
      except ValueError as error:
        raise ValueError(
            f'{where}: the last 10 fields must be numbers (x1 y1 ... x5 y5), '
            f'got {fields[-_NUM_LANDMARK_VALUES:]}.') from error
      if not np.isfinite(values).all():
        raise ValueError(f'{where}: landmarks must be finite, got '
                         f'{values.tolist()}.')
      key = _relative_key(fields[0], root)
      if key in landmarks:
        raise ValueError(f'{where}: image {key!r} is already listed on line '
                         f'{line_of[key]}.')
      landmarks[key] = values.reshape(5, 2)
      line_of[key] = line_number
  return landmarks


def _landmarks_for(paths: Sequence[str], root: str, landmarks_path: str
                   ) -> np.ndarray:
  """(N, 5, 2) landmarks of `paths` from the list, or a ValueError."""
  table = read_landmarks(landmarks_path, root)
  keys = [_relative_key(p, root) for p in paths]
  missing = [k for k in keys if k not in table]
  if missing:
    raise ValueError(
        f'{len(missing)} of {len(keys)} images have no landmarks in '
        f'{landmarks_path}, e.g. {missing[:3]}; the list must cover every '
        f'image (keys are paths relative to {root!r}).')
  return np.stack([table[k] for k in keys]) if keys else np.zeros((0, 5, 2))


# ---------------------------------------------------------------------------
# Verification pairs.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairs:
  """The pairs of an LFW-format pairs file, one entry per pair.

  Attributes:
    left_name: object (P,) identity (folder) of the first image.
    left_number: int32 (P,) 1-based image number of the first image.
    right_name: object (P,) identity of the second image.
    right_number: int32 (P,) image number of the second image.
    is_same: bool (P,) matched pair (same identity).
    fold: int32 (P,) fold index from the line order.
    num_folds: number of folds.
  """
  left_name: np.ndarray
  left_number: np.ndarray
  right_name: np.ndarray
  right_number: np.ndarray
  is_same: np.ndarray
  fold: np.ndarray
  num_folds: int

  def __len__(self) -> int:
    return int(self.is_same.shape[0])


def _parse_image_number(text: str, where: str) -> int:
  try:
    number = int(text)
  except ValueError:
    number = 0
  if number < 1:
    raise ValueError(f'{where}: image numbers must be positive integers '
                     f'(1-based), got {text!r}.')
  return number


def read_pairs(path: str) -> Pairs:
  """Reads a verification pairs file in LFW's `pairs.txt` format.

  The first line is the header `<num_folds> <pairs_per_fold>` (LFW's
  pairs.txt: `10 300`); a header of one number `<n>` (LFW's
  pairsDevTrain.txt / pairsDevTest.txt) means one fold. Then, fold after
  fold, `n` matched lines `name i j` and `n` mismatched lines
  `name1 i name2 j`, image numbers 1-based. The fold of a pair is given by
  its line's position; each fold must hold n matched and n mismatched
  pairs.

  Args:
    path: the pairs file.

  Returns:
    The `Pairs`.

  Raises:
    ValueError: a missing or malformed header, a line with other than 3 or
      4 fields, bad image numbers, or a pair count that does not match the
      header; the message names file and line (or fold).
  """
  with open(path, 'r', encoding='utf-8') as f:
    lines = [(number, line.split()) for number, line in enumerate(f, 1)]
  lines = [(number, fields) for number, fields in lines if fields]
  header_help = (
      "expected a header line '<num_folds> <pairs_per_fold>' (e.g. '10 300' "
      "as in LFW's pairs.txt) or '<pairs_per_fold>' for a single fold")
  if not lines:
    raise ValueError(f'{path} is empty: {header_help}.')
  header_line, header = lines[0]
  if len(header) not in (1, 2) or not all(h.isdigit() for h in header):
    raise ValueError(f'{path}, line {header_line}: {header_help}, got '
                     f'{" ".join(header)!r}. The header is required.')
  num_folds, per_fold = (1, int(header[0])) if len(header) == 1 else (
      int(header[0]), int(header[1]))
  if num_folds < 1 or per_fold < 1:
    raise ValueError(f'{path}, line {header_line}: folds and pairs per fold '
                     f'must be positive, got {" ".join(header)!r}.')
  body = lines[1:]
  expected = num_folds * 2 * per_fold
  if len(body) != expected:
    raise ValueError(
        f'{path}: the header announces {num_folds} folds of {per_fold} '
        f'matched + {per_fold} mismatched pairs, i.e. {expected} pair lines, '
        f'but the file has {len(body)}.')

  left_name, left_number, right_name, right_number, is_same = (
      [], [], [], [], [])
  for line_number, fields in body:
    where = f'{path}, line {line_number}'
    if len(fields) == 3:
      name, first, second = fields
      left_name.append(name)
      right_name.append(name)
      left_number.append(_parse_image_number(first, where))
      right_number.append(_parse_image_number(second, where))
      is_same.append(True)
    elif len(fields) == 4:
      left_name.append(fields[0])
      left_number.append(_parse_image_number(fields[1], where))
      right_name.append(fields[2])
      right_number.append(_parse_image_number(fields[3], where))
      is_same.append(False)
    else:
      raise ValueError(
          f'{where}: expected a matched pair "name i j" or a mismatched pair '
          f'"name1 i name2 j", got {len(fields)} fields: {fields}.')
  is_same = np.asarray(is_same, dtype=bool)
  fold = np.repeat(np.arange(num_folds, dtype=np.int32), 2 * per_fold)
  for f in range(num_folds):
    matched = int(is_same[fold == f].sum())
    if matched != per_fold:
      raise ValueError(
          f'{path}: fold {f} has {matched} matched and {2 * per_fold - matched}'
          f' mismatched pairs; the header says {per_fold} of each per fold.')
  return Pairs(
      left_name=np.asarray(left_name, dtype=object),
      left_number=np.asarray(left_number, dtype=np.int32),
      right_name=np.asarray(right_name, dtype=object),
      right_number=np.asarray(right_number, dtype=np.int32),
      is_same=is_same, fold=fold, num_folds=num_folds)


def _find_pair_image(root: str, name: str, number: int,
                     extensions: Sequence[str]) -> str:
  """Path of `<root>/<name>/<name>_<number:04d>.<ext>`, first ext found."""
  stem = os.path.join(root, name, f'{name}_{number:04d}')
  for ext in extensions:
    if os.path.isfile(stem + ext):
      return stem + ext
  raise FileNotFoundError(
      f'Pair image {stem}{extensions[0]} not found (also tried '
      f'{", ".join(extensions[1:])}); expected <root>/<name>/'
      f'<name>_<number:04d>.<ext> under {root!r}.')


def load_pairs_set(root: str, pairs_path: str, *,
                   image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
                   landmarks_path: Optional[str] = None, name: str = 'lfw',
                   extensions: Sequence[str] = ('.jpg', '.png', '.jpeg')
                   ) -> input_pipeline.PairsSet:
  """A verification `PairsSet` from an image folder and a pairs file.

  Args:
    root: folder of `<name>/<name>_<i:04d>.<ext>` images (LFW's layout).
    pairs_path: pairs file in LFW format (`read_pairs`).
    image_shape: (H, W, C) of the crops.
    landmarks_path: optional landmark list (`read_landmarks`, paths relative
      to `root`) to align the images; None centre-crops them.
    name: the set's name, e.g. 'lfw'.
    extensions: image file endings tried, in order, for each image.

  Returns:
    A `PairsSet` whose images are a lazy `ImageFiles` of each distinct image
    once, in order of first appearance in the pairs file.

  Raises:
    FileNotFoundError: an image of a pair does not exist (named).
    ValueError: from `read_pairs`, or images without landmarks.
  """
  pairs = read_pairs(pairs_path)
  image_index: Dict[Tuple[str, int], int] = {}
  paths = []

  def index_of(identity: str, number: int) -> int:
    key = (identity, int(number))
    if key not in image_index:
      image_index[key] = len(paths)
      paths.append(_find_pair_image(root, identity, int(number), extensions))
    return image_index[key]

  left = np.array([index_of(n, i) for n, i in zip(pairs.left_name,
                                                   pairs.left_number)],
                  dtype=np.int64)
  right = np.array([index_of(n, i) for n, i in zip(pairs.right_name,
                                                    pairs.right_number)],
                   dtype=np.int64)
  landmarks = (None if landmarks_path is None else
               _landmarks_for(paths, root, landmarks_path))
  images = ImageFiles(paths, image_shape, landmarks)
  return input_pipeline.PairsSet(images=images, left=left, right=right,
                                 is_same=pairs.is_same, fold=pairs.fold,
                                 name=name)


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------


def config_value(config: Any, key: str, default: Any = None) -> Any:
  """A field of an input config, for ConfigDicts and dicts alike.

  Args:
    config: ConfigDict or dict.
    key: the field's name.
    default: what a missing or None field reads as.

  Returns:
    `config[key]`, or `default` where it is missing or None.
  """
  value = config.get(key, default)
  return default if value is None else value


def load_identity_folders(input_config: Any) -> input_pipeline.Dataset:
  """A face `Dataset` from identity folders (plus an optional pairs set).

  Config fields:

  * `train_dir`: root of the identity folders (`scan_identity_folders`).
  * `landmarks`: path of a landmark list for the training images (paths
    relative to `train_dir`), or None to centre-crop images that are
    already aligned (e.g. the released 112x96 CASIA-WebFace crops).
  * `image_shape`: (H, W, C) of the crops; default (112, 96, 3).
  * `num_classes`: must equal the number of identities found.
  * `min_images_per_identity`: drop identities with fewer images; default 1.
  * `test_images_per_identity`: k; the last k images of each identity with
    more than k images form the closed-set `test` split (the same classes as
    `train`); default 1, 0 for an empty test split.
  * `pairs_dir`, `pairs_file`: the verification images' root and LFW-format
    pairs file (`load_pairs_set`); None for no verification set.
  * `pairs_landmarks`: optional landmark list for the pairs' images.
  * `pairs_name`: the verification set's name; default 'lfw'.
  * `probe_dir`, `distractor_dir` (+ optional `probe_landmarks`,
    `distractor_landmarks`, `identification_name`, default 'megaface'): a
    MegaFace-style identification set (`load_identification_set`); None for
    none.
  * `train_subset`, `test_subset`: keep the first N examples, for quick runs.

  Images stay on disk (`ImageFiles`) until a batch reads them.

  Args:
    input_config: ConfigDict (or dict) with the fields above.

  Returns:
    The `Dataset`, class names the identity folder names.

  Raises:
    ValueError: `num_classes` differs from the identities found, a bad
      `test_images_per_identity`, missing landmarks, or the errors of the
      readers above (FileNotFoundError for missing directories or files).
  """
  train_dir = config_value(input_config, 'train_dir', None)
  if train_dir is None:
    raise ValueError('input.train_dir is None; expected the root of the '
                     'training set, one sub-folder of images per identity.')
  image_shape = check_image_shape(
      config_value(input_config, 'image_shape', DEFAULT_IMAGE_SHAPE))
  held_out = int(config_value(input_config, 'test_images_per_identity', 1))
  if held_out < 0:
    raise ValueError(f'test_images_per_identity must be >= 0, got '
                     f'{held_out}.')
  paths, labels, names = scan_identity_folders(
      train_dir, min_images_per_identity=int(
          config_value(input_config, 'min_images_per_identity', 1)))
  num_classes = int(input_config['num_classes'])
  if num_classes != len(names):
    raise ValueError(
        f'num_classes={num_classes} but {len(names)} identity folders were '
        f'found under {train_dir!r}; set num_classes to {len(names)}.')

  landmarks_path = config_value(input_config, 'landmarks', None)
  landmarks = (None if landmarks_path is None else
               _landmarks_for(paths, train_dir, landmarks_path))

  # Labels are sorted, so each identity's images are one contiguous run;
  # its last `held_out` images go to test when it has more than that.
  counts = np.bincount(labels, minlength=len(names))
  position = np.arange(len(labels)) - np.repeat(
      np.cumsum(counts) - counts, counts)
  is_test = (counts[labels] > held_out) & (
      position >= counts[labels] - held_out)

  splits = {}
  for split, mask, subset_key in (('train', ~is_test, 'train_subset'),
                                  ('test', is_test, 'test_subset')):
    indices = np.flatnonzero(mask)
    images = ImageFiles([paths[i] for i in indices], image_shape,
                        None if landmarks is None else landmarks[indices])
    images, split_labels = input_pipeline.take_subset(
        images, labels[indices], input_config.get(subset_key, None), split)
    input_pipeline.validate_labels(split_labels, num_classes, split)
    splits[split] = input_pipeline.Split(images=images, labels=split_labels,
                                         name=split)

  verification = None
  pairs_dir = config_value(input_config, 'pairs_dir', None)
  pairs_file = config_value(input_config, 'pairs_file', None)
  if (pairs_dir is None) != (pairs_file is None):
    raise ValueError(
        'pairs_dir and pairs_file must be set together (or both None), got '
        f'pairs_dir={pairs_dir!r}, pairs_file={pairs_file!r}.')
  if pairs_dir is not None:
    verification = load_pairs_set(
        pairs_dir, pairs_file, image_shape=image_shape,
        landmarks_path=config_value(input_config, 'pairs_landmarks', None),
        name=config_value(input_config, 'pairs_name', 'lfw'))
  identification = None
  probe_dir = config_value(input_config, 'probe_dir', None)
  distractor_dir = config_value(input_config, 'distractor_dir', None)
  if (probe_dir is None) != (distractor_dir is None):
    raise ValueError(
        'probe_dir and distractor_dir must be set together (or both None), '
        f'got probe_dir={probe_dir!r}, distractor_dir={distractor_dir!r}.')
  if probe_dir is not None:
    identification = load_identification_set(
        probe_dir, distractor_dir, image_shape=image_shape,
        probe_landmarks=config_value(input_config, 'probe_landmarks', None),
        distractor_landmarks=config_value(input_config,
                                          'distractor_landmarks', None),
        name=config_value(input_config, 'identification_name', 'megaface'))
  return input_pipeline.Dataset(
      train=splits['train'], test=splits['test'], num_classes=num_classes,
      class_names=names, image_shape=image_shape, verification=verification,
      identification=identification)


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


def load_identification_set(
    probe_dir: str, distractor_dir: str, *,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    probe_landmarks: Optional[str] = None,
    distractor_landmarks: Optional[str] = None,
    name: str = 'megaface') -> input_pipeline.IdentificationSet:
  """A MegaFace-style identification set from folders, images kept lazy.

  Args:
    probe_dir: probe identities, one sub-folder each (e.g. FaceScrub);
      identities with fewer than 2 images are dropped (no mate).
    distractor_dir: distractor images at any depth (e.g. MegaFace's 1M).
    image_shape: (H, W, C) of the crops.
    probe_landmarks: optional landmark list of the probes (paths relative to
      `probe_dir`).
    distractor_landmarks: the same for the distractors.
    name: the set's name in metrics.

  Returns:
    The `IdentificationSet`.
  """
  image_shape = check_image_shape(image_shape)
  paths, labels, _ = scan_identity_folders(probe_dir,
                                           min_images_per_identity=2)
  probes = ImageFiles(paths, image_shape, None if probe_landmarks is None
                      else _landmarks_for(paths, probe_dir, probe_landmarks))
  distractor_paths = list_images(distractor_dir)
  distractors = ImageFiles(
      distractor_paths, image_shape, None if distractor_landmarks is None
      else _landmarks_for(distractor_paths, distractor_dir,
                          distractor_landmarks))
  return input_pipeline.IdentificationSet(
      probes=input_pipeline.Split(images=probes, labels=labels,
                                  name='probes'),
      distractors=distractors, name=name)
