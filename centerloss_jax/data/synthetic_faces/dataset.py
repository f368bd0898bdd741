"""The synthetic identity set as a `Dataset`: splits, pairs, identification.

The parts of the set are drawn from disjoint, far-apart ranges of identity
numbers (`*_FIRST_IDENTITY`), so each part is the same whatever the sizes of
the others, and no identity is in two parts.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from centerloss_jax.data.image_files import check_image_shape
from centerloss_jax.data.synthetic_faces import identities
from centerloss_jax.data.synthetic_faces.rendering import DEFAULT_IMAGE_SHAPE
from centerloss_jax.data.synthetic_faces.rendering import render
from centerloss_jax.data.types import check_num_classes
from centerloss_jax.data.types import Dataset
from centerloss_jax.data.types import IdentificationSet
from centerloss_jax.data.types import PairsSet
from centerloss_jax.data.types import Split
from centerloss_jax.data.types import take_subset

# First identity number of each part of `load_synthetic_faces`, far apart so
# that a part's identities do not depend on the size of the others (the
# verification set is the same whatever the number of training identities).
TRAIN_FIRST_IDENTITY = 0
VERIFICATION_FIRST_IDENTITY = 1 << 24
PROBE_FIRST_IDENTITY = 2 << 24
DISTRACTOR_FIRST_IDENTITY = 3 << 24
MAX_IDENTITIES_PER_PART = 1 << 24

# Salt of the pairs' random stream (see `identities._IDENTITY_STREAM`).
_PAIRS_STREAM = 2


@dataclasses.dataclass(frozen=True)
class SampledPairs:
  """Verification pairs over identities `0..num_identities - 1`.

  Attributes:
    left_identity, left_image, right_identity, right_image: int64 (P,)
      identity (relative to the set's first) and image number of each side.
    is_same: bool (P,).
    fold: int32 (P,).
  """
  left_identity: np.ndarray
  left_image: np.ndarray
  right_identity: np.ndarray
  right_image: np.ndarray
  is_same: np.ndarray
  fold: np.ndarray


def sample_pairs(num_identities: int, images_per_identity: int, *,
                 num_folds: int, pairs_per_fold: int,
                 seed: int) -> SampledPairs:
  """Distinct matched and mismatched pairs in folds of disjoint identities.

  Like LFW's protocol: identities are split into `num_folds` contiguous
  groups, so no identity appears in two folds; each fold has
  `pairs_per_fold // 2` matched pairs (two different images of one of its
  identities) followed by as many mismatched pairs (images of two of its
  identities), all distinct, drawn without replacement.

  Args:
    num_identities: identities in the set, >= 2 per fold.
    images_per_identity: images numbered `0..images_per_identity - 1` to
      draw from, >= 2.
    num_folds: number of folds.
    pairs_per_fold: pairs per fold (an odd count loses one).
    seed: the pairs depend on it only (and on the arguments above).

  Returns:
    The `SampledPairs`.

  Raises:
    ValueError: too few identities or images for that many distinct pairs.
  """
  half = pairs_per_fold // 2
  if num_folds < 1 or half < 1 or images_per_identity < 2 or (
      num_identities < 2 * num_folds):
    raise ValueError(
        f'Verification pairs need num_folds >= 1, pairs_per_fold >= 2, >= 2 '
        f'images per identity and >= 2 identities per fold; got num_folds='
        f'{num_folds}, pairs_per_fold={pairs_per_fold}, images_per_identity='
        f'{images_per_identity}, num_identities={num_identities}.')
  rng = np.random.default_rng((seed, _PAIRS_STREAM))
  k = images_per_identity
  image_a, image_b = np.triu_indices(k, 1)
  columns = {name: [] for name in ('li', 'lj', 'ri', 'rj', 'same', 'fold')}
  for fold, fold_identities in enumerate(np.array_split(
      np.arange(num_identities), num_folds)):
    n = len(fold_identities)
    num_matched, num_mismatched = n * len(image_a), n * (n - 1) // 2 * k * k
    if min(num_matched, num_mismatched) < half:
      raise ValueError(
          f'Fold {fold} has {n} identities with {k} images each: '
          f'{num_matched} distinct matched and {num_mismatched} mismatched '
          f'pairs, fewer than the {half} of each asked for; raise '
          'num_verification_identities or images_per_identity, or lower '
          'pairs_per_fold.')
    matched = rng.choice(num_matched, half, replace=False)
    identity, pair = np.divmod(matched, len(image_a))
    columns['li'].append(fold_identities[identity])
    columns['ri'].append(fold_identities[identity])
    columns['lj'].append(image_a[pair])
    columns['rj'].append(image_b[pair])
    id_a, id_b = np.triu_indices(n, 1)
    mismatched = rng.choice(num_mismatched, half, replace=False)
    identity_pair, images = np.divmod(mismatched, k * k)
    columns['li'].append(fold_identities[id_a[identity_pair]])
    columns['ri'].append(fold_identities[id_b[identity_pair]])
    columns['lj'].append(images // k)
    columns['rj'].append(images % k)
    columns['same'].append(np.r_[np.ones(half, bool), np.zeros(half, bool)])
    columns['fold'].append(np.full(2 * half, fold, np.int32))
  joined = {name: np.concatenate(parts) for name, parts in columns.items()}
  return SampledPairs(
      left_identity=joined['li'].astype(np.int64),
      left_image=joined['lj'].astype(np.int64),
      right_identity=joined['ri'].astype(np.int64),
      right_image=joined['rj'].astype(np.int64),
      is_same=joined['same'], fold=joined['fold'])


def load_synthetic_faces(
    *, num_train_identities: int, images_per_identity: int,
    name: str = 'synthetic_faces', seed: int = 0,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    difficulty: float = 1.0, test_images_per_identity: int = 1,
    num_verification_identities: int = 0, num_folds: int = 10,
    pairs_per_fold: int = 600, num_probe_identities: int = 0,
    probe_images_per_identity: int = 2, num_distractors: int = 0,
    num_classes: Optional[int] = None, train_subset: Optional[int] = None,
    test_subset: Optional[int] = None) -> Dataset:
  """The synthetic identity set as a `Dataset`, all in memory.

  Everything is a function of the arguments.

  Args:
    num_train_identities: training classes, identities
      `0..num_train_identities - 1`.
    images_per_identity: training images per identity (image numbers
      `0..images_per_identity - 1`); also the pool of images the
      verification pairs are drawn from.
    name: the dataset's name, for plot titles.
    seed: the set's seed.
    image_shape: (H, W, C).
    difficulty: nuisance scale (see `render`).
    test_images_per_identity: extra images (numbers from
      `images_per_identity` on) of each training identity: the closed-set
      `test` split.
    num_verification_identities: identities of the open-set pairs
      (`VERIFICATION_FIRST_IDENTITY` on, disjoint from training), split into
      `num_folds` folds of disjoint identities with `pairs_per_fold // 2`
      matched and as many mismatched pairs each (`sample_pairs`). 0: no
      verification set.
    num_folds: see `num_verification_identities`.
    pairs_per_fold: 600 by default, as LFW.
    num_probe_identities: the MegaFace-style identification set's probe
      identities, from `PROBE_FIRST_IDENTITY` on; 0: no identification set.
    probe_images_per_identity: images of each probe identity.
    num_distractors: one image of each of this many further identities from
      `DISTRACTOR_FIRST_IDENTITY` on.
    num_classes: optional, `num_train_identities` by default; more pads the
      classifier with classes no image has (`types.check_num_classes`).
    train_subset: keep the first N training examples.
    test_subset: keep the first N test examples.

  Returns:
    The `Dataset` with `verification` and `identification` as configured.

  Raises:
    ValueError: inconsistent counts (see the arguments above).
  """
  seed = int(seed)
  image_shape = check_image_shape(image_shape)
  difficulty = float(difficulty)
  num_train = int(num_train_identities)
  per_identity = int(images_per_identity)
  test_per_identity = int(test_images_per_identity)
  num_verification = int(num_verification_identities)
  num_probes = int(num_probe_identities)
  probe_images = int(probe_images_per_identity)
  num_distractors = int(num_distractors)
  counts = {'num_train_identities': num_train,
            'num_verification_identities': num_verification,
            'num_probe_identities': num_probes,
            'num_distractors': num_distractors}
  for field, count in counts.items():
    if not 0 <= count <= MAX_IDENTITIES_PER_PART:
      raise ValueError(f'{field} must be in [0, {MAX_IDENTITIES_PER_PART}], '
                       f'got {count}.')
  if num_train < 1 or per_identity < 1 or test_per_identity < 0:
    raise ValueError(
        'Need num_train_identities >= 1, images_per_identity >= 1 and '
        f'test_images_per_identity >= 0; got {num_train}, {per_identity}, '
        f'{test_per_identity}.')
  num_classes = num_train if num_classes is None else check_num_classes(
      num_classes, num_train,
      'the synthetic training set (num_train_identities)')
  if num_probes and probe_images < 2:
    raise ValueError(f'probe_images_per_identity must be >= 2 (a probe and '
                     f'a mate), got {probe_images}.')
  draw = dict(image_shape=image_shape, seed=seed, difficulty=difficulty)

  train, test = _training_splits(
      num_train, per_identity, test_per_identity,
      train_subset=train_subset, test_subset=test_subset,
      **draw)
  verification = None
  if num_verification:
    verification = _verification_set(
        num_verification, per_identity, num_folds=int(num_folds),
        pairs_per_fold=int(pairs_per_fold), **draw)
  identification = None
  if num_probes:
    identification = _identification_set(num_probes, probe_images,
                                         num_distractors, **draw)
  return Dataset(
      name=name, train=train, test=test, num_classes=num_classes,
      class_names=tuple(f'identity_{i}' for i in range(num_train)),
      image_shape=image_shape, verification=verification,
      identification=identification)


def _training_splits(
    num_train: int, per_identity: int, test_per_identity: int, *,
    train_subset: Optional[int], test_subset: Optional[int],
    image_shape: Tuple[int, int, int], seed: int, difficulty: float
) -> Tuple[Split, Split]:
  """The `train` and `test` splits: images of identities 0..num_train - 1.

  Args:
    num_train: training identities (the classes).
    per_identity: training images per identity, numbers 0..per_identity - 1.
    test_per_identity: test images per identity, the numbers after those.
    train_subset: keep the first N training examples; None for all.
    test_subset: likewise for the test split.
    image_shape: (H, W, C) of the images.
    seed: the set's seed.
    difficulty: nuisance scale.

  Returns:
    The train and test `Split`s.
  """
  params = identities.make_identities(num_train, seed=seed,
                                      first_identity=TRAIN_FIRST_IDENTITY)
  # Train and test images in one call, so each identity's canvas is drawn
  # once.
  per_all = per_identity + test_per_identity
  identity_numbers = np.repeat(np.arange(num_train), per_all)
  image_numbers = np.tile(np.arange(per_all), num_train)
  images = render(params, identity_numbers + TRAIN_FIRST_IDENTITY,
                  image_ids=image_numbers, image_shape=image_shape, seed=seed,
                  difficulty=difficulty)
  is_test = image_numbers >= per_identity
  splits = []
  for split, mask, subset in (('train', ~is_test, train_subset),
                              ('test', is_test, test_subset)):
    split_images, labels = take_subset(
        images[mask], identity_numbers[mask].astype(np.int32), subset, split)
    splits.append(Split(split_images, labels, split))
  return splits[0], splits[1]


def _verification_set(
    num_identities: int, images_per_identity: int, *, num_folds: int,
    pairs_per_fold: int, image_shape: Tuple[int, int, int], seed: int,
    difficulty: float) -> PairsSet:
  """The open-set pairs, over identities from `VERIFICATION_FIRST_IDENTITY`.

  Args:
    num_identities: identities of the pairs.
    images_per_identity: the pool of image numbers the pairs draw from.
    num_folds: folds of disjoint identities (`sample_pairs`).
    pairs_per_fold: matched plus mismatched pairs per fold.
    image_shape: (H, W, C) of the images.
    seed: the set's seed.
    difficulty: nuisance scale.

  Returns:
    The `PairsSet`, each distinct image stored once.
  """
  pairs = sample_pairs(num_identities, images_per_identity,
                       num_folds=num_folds, pairs_per_fold=pairs_per_fold,
                       seed=seed)
  keys = np.concatenate([
      pairs.left_identity * images_per_identity + pairs.left_image,
      pairs.right_identity * images_per_identity + pairs.right_image])
  unique_keys, inverse = np.unique(keys, return_inverse=True)
  identity, number = np.divmod(unique_keys, images_per_identity)
  params = identities.make_identities(
      num_identities, seed=seed, first_identity=VERIFICATION_FIRST_IDENTITY)
  pair_images = render(params, identity + VERIFICATION_FIRST_IDENTITY,
                       image_ids=number, image_shape=image_shape, seed=seed,
                       difficulty=difficulty)
  num_pairs = len(pairs.is_same)
  return PairsSet(
      images=pair_images, left=inverse[:num_pairs].astype(np.int64),
      right=inverse[num_pairs:].astype(np.int64), is_same=pairs.is_same,
      fold=pairs.fold, name='synthetic_pairs')


def _identification_set(
    num_probes: int, probe_images: int, num_distractors: int, *,
    image_shape: Tuple[int, int, int], seed: int,
    difficulty: float) -> IdentificationSet:
  """The MegaFace-style set: probe identities and one-image distractors.

  Args:
    num_probes: probe identities, from `PROBE_FIRST_IDENTITY` on.
    probe_images: images of each probe identity (a probe and its mates).
    num_distractors: distractor identities, from `DISTRACTOR_FIRST_IDENTITY`
      on, one image (number 0) each.
    image_shape: (H, W, C) of the images.
    seed: the set's seed.
    difficulty: nuisance scale.

  Returns:
    The `IdentificationSet`.
  """
  draw = dict(image_shape=image_shape, seed=seed, difficulty=difficulty)
  probe_params = identities.make_identities(
      num_probes, seed=seed, first_identity=PROBE_FIRST_IDENTITY)
  probe_ids = np.repeat(np.arange(num_probes), probe_images)
  probes = render(probe_params, probe_ids + PROBE_FIRST_IDENTITY,
                  image_ids=np.tile(np.arange(probe_images), num_probes),
                  **draw)
  distractors = np.zeros((0,) + image_shape, np.uint8)
  if num_distractors:
    distractor_params = identities.make_identities(
        num_distractors, seed=seed, first_identity=DISTRACTOR_FIRST_IDENTITY)
    distractors = render(
        distractor_params,
        np.arange(num_distractors) + DISTRACTOR_FIRST_IDENTITY,
        image_ids=np.zeros(num_distractors, np.int64), **draw)
  return IdentificationSet(
      probes=Split(probes, probe_ids.astype(np.int32),
                                  'probes'),
      distractors=distractors, name='synthetic_identification')
