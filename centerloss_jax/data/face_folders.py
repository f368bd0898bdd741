"""Face datasets on disk: identity folders, landmark lists, LFW-style pairs.

Layouts read here:

* Training set: one sub-folder per identity (the usual CASIA-WebFace / MS1M
  export), `scan_identity_folders`.
* Landmarks: a text file, one line per image, `relative/path x1 y1 ... x5 y5`
  (any fields between the path and the last ten numbers, such as the label of
  the widely shared CASIA lists, are ignored), `read_landmarks`.
* Verification pairs: LFW's `pairs.txt` (`read_pairs`, `load_pairs_set`),
  for LFW itself or any folder of `<name>/<name>_<i:04d>.<ext>` images.
* Identification: MegaFace-style probe identity folders and distractor
  images at any depth (`load_identification_set`).

`load_identity_folders` puts them together into a `Dataset`; images stay on
disk (`image_files.ImageFiles`) until a batch reads them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from centerloss_jax.data.image_files import check_image_shape
from centerloss_jax.data.image_files import DEFAULT_IMAGE_SHAPE
from centerloss_jax.data.image_files import IMAGE_EXTENSIONS
from centerloss_jax.data.image_files import ImageFiles
from centerloss_jax.data.image_files import list_images
from centerloss_jax.data import packed
from centerloss_jax.data.types import check_num_classes
from centerloss_jax.data.types import Dataset
from centerloss_jax.data.types import IdentificationSet
from centerloss_jax.data.types import PairsSet
from centerloss_jax.data.types import Split
from centerloss_jax.data.types import take_subset
from centerloss_jax.data.types import validate_labels

_NUM_LANDMARK_VALUES = 10  # Five (x, y) points.

# How `load_identity_folders` picks each identity's closed-set test images.
TEST_SPLITS = ('random', 'last')


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
  # The paths are under `root` (joined to it, so relative when it is).
  keys = [os.path.normpath(os.path.relpath(p, root)) for p in paths]
  missing = [k for k in keys if k not in table]
  if missing:
    raise ValueError(
        f'{len(missing)} of {len(keys)} images have no landmarks in '
        f'{landmarks_path}, e.g. {missing[:3]}; the list must cover every '
        f'image (keys are paths relative to {root!r}).')
  return np.stack([table[k] for k in keys]) if keys else np.zeros((0, 5, 2))


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
                   extensions: Sequence[str] = ('.jpg', '.png', '.jpeg'),
                   packed_dir: Optional[str] = None) -> PairsSet:
  """A verification `PairsSet` from an image folder and a pairs file.

  Args:
    root: folder of `<name>/<name>_<i:04d>.<ext>` images (LFW's layout).
    pairs_path: pairs file in LFW format (`read_pairs`).
    image_shape: (H, W, C) of the crops.
    landmarks_path: optional landmark list (`read_landmarks`, paths relative
      to `root`) to align the images; None centre-crops them.
    name: the set's name, e.g. 'lfw'.
    extensions: image file endings tried, in order, for each image.
    packed_dir: a pack of these images (`packing.pack_pairs_set`, with
      these `image_shape` and `landmarks_path`), read instead of decoding;
      refused (`packed.StalePackError`) if the images or settings changed.

  Returns:
    A `PairsSet` whose images are each distinct image once, in order of
    first appearance in the pairs file: a lazy `ImageFiles`, or the pack's
    `PackedImages`.

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
  if packed_dir is None:
    landmarks = (None if landmarks_path is None else
                 _landmarks_for(paths, root, landmarks_path))
    images = ImageFiles(paths, image_shape, landmarks)
  else:
    images, _, _ = packed.open_pack(
        packed_dir, image_shape=image_shape,
        fingerprint=packed.source_fingerprint(
            paths, root, image_shape=image_shape, landmarks=landmarks_path))
  return PairsSet(images=images, left=left, right=right,
                                 is_same=pairs.is_same, fold=pairs.fold,
                                 name=name)


def _held_out_mask(labels: np.ndarray, num_identities: int, held_out: int,
                   test_split: str, *, seed: int) -> np.ndarray:
  """Bool (N,): the `held_out` test images of each identity with more.

  Labels are sorted, so each identity's images are one contiguous run.
  'last' takes the end of each run; 'random' ranks the images of each run
  by a seeded random key and takes the `held_out` smallest.
  """
  counts = np.bincount(labels, minlength=num_identities)
  starts = np.cumsum(counts) - counts
  if test_split == 'last':
    order = np.arange(len(labels))
  else:
    keys = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((keys, labels))  # By label, then by key.
  rank = np.empty(len(labels), np.int64)
  rank[order] = np.arange(len(labels)) - np.repeat(starts, counts)
  # The last `held_out` ranks of a run: for 'last', its last files.
  return (counts[labels] > held_out) & (rank >= counts[labels] - held_out)


def load_identity_folders(
    *, train_dir: Optional[str] = None, num_classes: int,
    name: str = 'identity_folders', landmarks: Optional[str] = None,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    min_images_per_identity: int = 1, test_images_per_identity: int = 1,
    test_split: str = 'random', split_seed: int = 0,
    pairs_dir: Optional[str] = None, pairs_file: Optional[str] = None,
    pairs_landmarks: Optional[str] = None, pairs_name: str = 'lfw',
    probe_dir: Optional[str] = None, distractor_dir: Optional[str] = None,
    probe_landmarks: Optional[str] = None,
    distractor_landmarks: Optional[str] = None,
    identification_name: str = 'megaface',
    packed_dir: Optional[str] = None,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None) -> Dataset:
  """A face `Dataset` from identity folders (plus optional open-set sets).

  Images stay on disk (`ImageFiles`) until a batch reads them, or, with
  `packed_dir`, are read ready-made from a pack
  (`packing.pack_identity_folders`).

  Args:
    train_dir: root of the identity folders (`scan_identity_folders`).
    num_classes: at least the number of identities found (more: padding,
      see `types.check_num_classes`).
    name: the dataset's name, for plot titles.
    landmarks: path of a landmark list for the training images (paths
      relative to `train_dir`), or None to centre-crop images that are
      already aligned (e.g. the released 112x96 CASIA-WebFace crops).
    image_shape: (H, W, C) of the crops.
    min_images_per_identity: drop identities with fewer images.
    test_images_per_identity: k; k images of each identity with more than
      k images form the closed-set `test` split (the same classes as
      `train`); 0 for an empty test split.
    test_split: which k: 'random' (a seeded random choice per identity),
      or 'last' (the last k by sorted file name; biased when names encode a
      condition such as pose, lighting or session).
    split_seed: the seed of the 'random' choice.
    pairs_dir: the verification images' root (`load_pairs_set`), set
      together with `pairs_file`, an LFW-format pairs file; None for no
      verification set.
    pairs_file: see `pairs_dir`.
    pairs_landmarks: optional landmark list for the pairs' images.
    pairs_name: the verification set's name in metrics.
    probe_dir: a MegaFace-style identification set's probe identities, set
      together with `distractor_dir` (`load_identification_set`); None for
      none.
    distractor_dir: see `probe_dir`.
    probe_landmarks: optional landmark list of the probes.
    distractor_landmarks: optional landmark list of the distractors.
    identification_name: the identification set's name in metrics.
    packed_dir: a pack of `train_dir` made by
      `packing.pack_identity_folders` (with
      these `landmarks`, `image_shape` and `min_images_per_identity`): the
      training and closed-set test images are read from it. With
      `train_dir` given it must match the tree (`packed.StalePackError`
      otherwise); None skips the check (a copy of the pack alone). The
      verification images are read from its `pairs_<pairs_name>` pack
      when the pack command made one (`packed.pairs_pack_dir`), checked
      against `pairs_dir` the same way.
    train_subset: keep the first N training examples, for quick runs.
    test_subset: keep the first N test examples.

  Returns:
    The `Dataset`, class names the identity folder names.

  Raises:
    ValueError: no `train_dir`, `num_classes` differs from the identities
      found, a bad `test_images_per_identity`, missing landmarks, or the
      errors of the readers above (FileNotFoundError for missing directories
      or files).
  """
  if train_dir is None and packed_dir is None:
    raise ValueError('train_dir is None; expected the root of the training '
                     'set, one sub-folder of images per identity.')
  image_shape = check_image_shape(image_shape)
  held_out = int(test_images_per_identity)
  if held_out < 0:
    raise ValueError(f'test_images_per_identity must be >= 0, got '
                     f'{held_out}.')
  if test_split not in TEST_SPLITS:
    raise ValueError(f'test_split must be one of {TEST_SPLITS}, got '
                     f'{test_split!r}.')
  if packed_dir is None:
    images, labels, names = identity_folder_images(
        train_dir, image_shape=image_shape, landmarks=landmarks,
        min_images_per_identity=int(min_images_per_identity))
  else:
    fingerprint = None
    if train_dir is not None:
      paths, _, _ = scan_identity_folders(
          train_dir, min_images_per_identity=int(min_images_per_identity))
      fingerprint = packed.source_fingerprint(
          paths, train_dir, image_shape=image_shape, landmarks=landmarks)
    images, labels, names = packed.open_pack(
        packed_dir, image_shape=image_shape, fingerprint=fingerprint)
  num_classes = check_num_classes(num_classes, len(names),
                                  repr(packed_dir or train_dir))

  is_test = _held_out_mask(labels, len(names), held_out, test_split,
                           seed=int(split_seed))

  splits = {}
  for split, mask, subset in (('train', ~is_test, train_subset),
                              ('test', is_test, test_subset)):
    indices = np.flatnonzero(mask)
    split_images, split_labels = take_subset(
        images.subset(indices), labels[indices], subset, split)
    validate_labels(split_labels, num_classes, split)
    splits[split] = Split(images=split_images, labels=split_labels,
                          name=split)

  verification = None
  if (pairs_dir is None) != (pairs_file is None):
    raise ValueError(
        'pairs_dir and pairs_file must be set together (or both None), got '
        f'pairs_dir={pairs_dir!r}, pairs_file={pairs_file!r}.')
  if pairs_dir is not None:
    pairs_pack = (None if packed_dir is None else
                  packed.pairs_pack_dir(packed_dir, pairs_name))
    verification = load_pairs_set(
        pairs_dir, pairs_file, image_shape=image_shape,
        landmarks_path=pairs_landmarks, name=pairs_name,
        packed_dir=pairs_pack if pairs_pack and os.path.isdir(pairs_pack)
        else None)
  identification = None
  if (probe_dir is None) != (distractor_dir is None):
    raise ValueError(
        'probe_dir and distractor_dir must be set together (or both None), '
        f'got probe_dir={probe_dir!r}, distractor_dir={distractor_dir!r}.')
  if probe_dir is not None:
    identification = load_identification_set(
        probe_dir, distractor_dir, image_shape=image_shape,
        probe_landmarks=probe_landmarks,
        distractor_landmarks=distractor_landmarks, name=identification_name)
  return Dataset(
      name=name, train=splits['train'], test=splits['test'],
      num_classes=num_classes,
      class_names=names, image_shape=image_shape, verification=verification,
      identification=identification)


def identity_folder_images(
    train_dir: str, *, image_shape: tuple[int, int, int],
    landmarks: Optional[str], min_images_per_identity: int
) -> Tuple[ImageFiles, np.ndarray, Tuple[str, ...]]:
  """The lazy images, labels and identity names of a training tree."""
  paths, labels, names = scan_identity_folders(
      train_dir, min_images_per_identity=min_images_per_identity)
  points = (None if landmarks is None else
            _landmarks_for(paths, train_dir, landmarks))
  return ImageFiles(paths, image_shape, points), labels, names


def load_identification_set(
    probe_dir: str, distractor_dir: str, *,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    probe_landmarks: Optional[str] = None,
    distractor_landmarks: Optional[str] = None,
    name: str = 'megaface') -> IdentificationSet:
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
  return IdentificationSet(
      probes=Split(images=probes, labels=labels,
                                  name='probes'),
      distractors=distractors, name=name)

