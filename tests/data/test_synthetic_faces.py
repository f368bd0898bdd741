"""Tests of the data.synthetic_faces package: identities, rendering,
verification pairs (`sample_pairs`) and the whole set
(`load_synthetic_faces`)."""

import numpy as np
import pytest

from centerloss_jax import data
from centerloss_jax.data import synthetic_faces as sf

SHAPE = (28, 24, 3)

# ---------------------------------------------------------------------------
# make_identities and render: each identity and image drawn on its own.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def few_and_many():
  """The first 10 and the first 100 identities of seed 3."""
  return sf.make_identities(10, seed=3), sf.make_identities(100, seed=3)


def test_identity_params_do_not_depend_on_how_many_are_drawn(few_and_many):
  few, many = few_and_many
  for name, values in few.values.items():
    np.testing.assert_array_equal(values[7], many.values[name][7])


def test_an_image_does_not_depend_on_the_other_images_rendered(few_and_many):
  few, many = few_and_many
  alone = sf.render(few, [7], image_ids=[4], seed=3, image_shape=SHAPE)
  among = sf.render(many, np.arange(100), image_ids=np.full(100, 4), seed=3,
                    image_shape=SHAPE)
  np.testing.assert_array_equal(alone[0], among[7])


def test_image_ids_default_to_each_identitys_occurrence_number(few_and_many):
  few, _ = few_and_many
  # The 2nd image of identity 7 is image 1.
  np.testing.assert_array_equal(
      sf.render(few, [2, 7, 7], seed=3, image_shape=SHAPE)[2],
      sf.render(few, [7], image_ids=[1], seed=3, image_shape=SHAPE)[0])


def test_another_seed_draws_another_image(few_and_many):
  few, _ = few_and_many
  alone = sf.render(few, [7], image_ids=[4], seed=3, image_shape=SHAPE)
  other_seed = sf.render(sf.make_identities(10, seed=4), [7], image_ids=[4],
                         seed=4, image_shape=SHAPE)
  assert not np.array_equal(alone, other_seed)


@pytest.fixture(scope='module')
def four_identities():
  """(params, ids): 4 identities, 3 images each."""
  return sf.make_identities(4, seed=0), np.repeat(np.arange(4), 3)


@pytest.fixture(scope='module')
def clean(four_identities):
  params, ids = four_identities
  return sf.render(params, ids, seed=0, difficulty=0.0,
                   image_shape=SHAPE).astype(int)


def test_difficulty_zero_renders_every_image_of_an_identity_alike(clean):
  for i in range(4):
    assert (clean[3 * i] == clean[3 * i + 1:3 * i + 3]).all()


def test_identities_render_differently(clean):
  assert np.abs(clean[0] - clean[3]).mean() > 5


def test_difficulty_one_varies_the_images_of_an_identity(four_identities):
  params, ids = four_identities
  varied = sf.render(params, ids, seed=0, difficulty=1.0,
                     image_shape=SHAPE).astype(int)
  assert np.abs(varied[0] - varied[1]).mean() > 5


def test_render_rejects_an_identity_not_in_params(four_identities):
  params, _ = four_identities
  with pytest.raises(ValueError, match='not in params'):
    sf.render(params, [9], seed=0)


# ---------------------------------------------------------------------------
# sample_pairs.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sampled():
  return sf.sample_pairs(40, 3, num_folds=10, pairs_per_fold=8, seed=0)


def test_sample_pairs_draws_num_folds_times_pairs_per_fold(sampled):
  assert len(sampled.is_same) == 80


def test_sample_pairs_folds_are_half_same_pairs_first(sampled):
  for fold in range(10):
    in_fold = sampled.fold == fold
    assert sampled.is_same[in_fold].tolist() == [True] * 4 + [False] * 4


def test_sample_pairs_folds_share_no_identity(sampled):
  for fold in range(10):
    in_fold = sampled.fold == fold
    others = np.r_[sampled.left_identity[~in_fold],
                   sampled.right_identity[~in_fold]]
    assert not np.isin(sampled.left_identity[in_fold], others).any()


def test_sample_pairs_same_pairs_are_two_images_of_one_identity(sampled):
  same = sampled.is_same
  assert (sampled.left_identity[same] == sampled.right_identity[same]).all()
  assert (sampled.left_image[same] != sampled.right_image[same]).all()


def test_sample_pairs_different_pairs_are_two_identities(sampled):
  same = sampled.is_same
  assert (sampled.left_identity[~same] != sampled.right_identity[~same]).all()


def test_sample_pairs_are_distinct(sampled):
  keys = set(zip(sampled.left_identity, sampled.left_image,
                 sampled.right_identity, sampled.right_image))
  assert len(keys) == 80


def test_sample_pairs_with_too_few_identities_raises():
  with pytest.raises(ValueError, match='fewer than'):
    sf.sample_pairs(20, 2, num_folds=10, pairs_per_fold=8, seed=0)


# ---------------------------------------------------------------------------
# load_synthetic_faces.
# ---------------------------------------------------------------------------

SYNTHETIC_CONFIG = dict(
    seed=1, image_shape=SHAPE, num_train_identities=6, images_per_identity=3,
    test_images_per_identity=1, num_verification_identities=20,
    pairs_per_fold=4, num_probe_identities=3, probe_images_per_identity=2,
    num_distractors=5, difficulty=1.0)


@pytest.fixture(scope='module')
def dataset():
  return sf.load_synthetic_faces(**SYNTHETIC_CONFIG)


def test_load_synthetic_faces_is_deterministic(dataset):
  again = sf.load_synthetic_faces(**SYNTHETIC_CONFIG)
  np.testing.assert_array_equal(dataset.train.images, again.train.images)
  np.testing.assert_array_equal(dataset.verification.images,
                                again.verification.images)


def test_synthetic_faces_has_a_class_per_train_identity(dataset):
  assert dataset.num_classes == 6 and dataset.image_shape == SHAPE


def test_train_split_holds_images_per_identity_of_each_identity(dataset):
  assert dataset.train.images.shape == (18,) + SHAPE
  assert dataset.train.labels.tolist() == np.repeat(np.arange(6), 3).tolist()


def test_test_split_holds_test_images_per_identity_of_each_identity(dataset):
  assert dataset.test.labels.tolist() == list(range(6))


def test_test_images_are_extra_images_of_the_training_identities(dataset):
  # Image number 3, after the 3 training images.
  train_params = sf.make_identities(6, seed=1)
  np.testing.assert_array_equal(
      dataset.test.images[2],
      sf.render(train_params, [2], image_ids=[3], seed=1, image_shape=SHAPE)[0])


def test_verification_set_has_ten_folds_of_pairs_per_fold(dataset):
  pairs = dataset.verification
  assert pairs.num_folds == 10
  assert np.bincount(pairs.fold).tolist() == [4] * 10


def test_verification_folds_are_half_same_pairs(dataset):
  pairs = dataset.verification
  assert np.bincount(pairs.fold[pairs.is_same]).tolist() == [2] * 10


@pytest.fixture(scope='module')
def sampled_verification():
  """The pairs `load_synthetic_faces(**SYNTHETIC_CONFIG)` should sample."""
  return sf.sample_pairs(20, 3, num_folds=10, pairs_per_fold=4, seed=1)


def test_verification_pairs_are_the_sampled_pairs(dataset,
                                                  sampled_verification):
  assert sampled_verification.is_same.tolist() == (
      dataset.verification.is_same.tolist())


def test_verification_images_are_the_sampled_identities_images(
    dataset, sampled_verification):
  # From a range of identities disjoint from training.
  pairs = dataset.verification
  verification_params = sf.make_identities(
      20, seed=1, first_identity=sf.VERIFICATION_FIRST_IDENTITY)
  for k in (0, 1, 10, 39):
    expected = sf.render(
        verification_params,
        [sf.VERIFICATION_FIRST_IDENTITY + sampled_verification.right_identity[k]],
        image_ids=[sampled_verification.right_image[k]], seed=1,
        image_shape=SHAPE)[0]
    np.testing.assert_array_equal(pairs.images[pairs.right[k]], expected)


def test_the_parts_draw_from_disjoint_identity_ranges():
  starts = [sf.TRAIN_FIRST_IDENTITY, sf.VERIFICATION_FIRST_IDENTITY,
            sf.PROBE_FIRST_IDENTITY, sf.DISTRACTOR_FIRST_IDENTITY]
  assert np.diff(starts).min() >= sf.MAX_IDENTITIES_PER_PART


def test_identification_probes_are_probe_images_per_identity(dataset):
  assert dataset.identification.probes.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_identification_has_num_distractors_distractors(dataset):
  assert dataset.identification.distractors.shape == (5,) + SHAPE


def test_synthetic_train_split_makes_batches(dataset):
  batch = next(data.batching.epoch_batches(
      dataset.train, global_batch_size=4, epoch=0, seed=0, shuffle=True))
  assert batch['image'].shape == (4,) + SHAPE


def test_fewer_num_classes_than_train_identities_raises():
  with pytest.raises(ValueError,
                     match=r'num_classes=5 but .*num_train_identities\) has 6'):
    sf.load_synthetic_faces(**dict(SYNTHETIC_CONFIG, num_classes=5))


def test_more_num_classes_than_train_identities_pads_the_classifier(dataset):
  padded = sf.load_synthetic_faces(**dict(SYNTHETIC_CONFIG, num_classes=16))
  assert padded.num_classes == 16 and len(padded.class_names) == 6
  np.testing.assert_array_equal(padded.train.labels, dataset.train.labels)
