"""Tests for data.alignment, face_folders, image_files and synthetic_faces,
on files made here."""

import os

import numpy as np
import pytest
from PIL import Image

from centerloss_jax import data
from centerloss_jax.data import alignment
from centerloss_jax.data import face_folders
from centerloss_jax.data import image_files
from centerloss_jax.data import synthetic_faces as sf


def similarity(scale, angle, shift_x, shift_y):
  """The (2, 3) matrix of a known similarity."""
  cos, sin = scale * np.cos(angle), scale * np.sin(angle)
  return np.array([[cos, -sin, shift_x], [sin, cos, shift_y]])


def apply(matrix, points):
  return points @ matrix[:, :2].T + matrix[:, 2]


def write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


# ---------------------------------------------------------------------------
# Alignment.
# ---------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_similarity():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  matrix = similarity(1.3, 0.4, 5.0, -7.0)
  np.testing.assert_allclose(
      alignment.similarity_transform(src, apply(matrix, src)), matrix,
      atol=1e-9)


def test_similarity_transform_never_reflects():
  src = alignment.TEMPLATE_112x96
  mirrored = src * np.array([-1.0, 1.0])
  linear = alignment.similarity_transform(src, mirrored)[:, :2]
  assert np.linalg.det(linear) > 0


def test_similarity_transform_rejects_coincident_points():
  with pytest.raises(ValueError, match='coincide'):
    alignment.similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))


def test_warp_affine_integer_shift_is_exact_with_zero_fill():
  image = np.arange(5 * 6 * 2, dtype=np.uint8).reshape(5, 6, 2)
  out = alignment.warp_affine(image, similarity(1.0, 0.0, 2.0, 1.0), (5, 6))
  np.testing.assert_array_equal(out[1:, 2:], image[:-1, :-2])
  assert not out[0].any() and not out[:, :2].any()


def test_warp_affine_matches_pil_inside_the_image():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  matrix = similarity(1.2, 0.3, 5.0, -3.0)
  out = alignment.warp_affine(image, matrix, (45, 55))
  # PIL maps output to input with pixel centres at +0.5.
  inverse = np.linalg.inv(matrix[:, :2])
  offset = -inverse @ matrix[:, 2]
  constant = offset + 0.5 - inverse @ np.array([0.5, 0.5])
  reference = np.asarray(Image.fromarray(image).transform(
      (55, 45), Image.AFFINE,
      (inverse[0, 0], inverse[0, 1], constant[0], inverse[1, 0],
       inverse[1, 1], constant[1]), resample=Image.BILINEAR))
  ys, xs = np.mgrid[0:45, 0:55]
  source = np.stack([xs, ys], -1) @ inverse.T + offset
  inside = ((source >= 0) & (source <= [49, 39])).all(-1)
  assert inside.sum() > 1000
  difference = np.abs(out.astype(int) - reference.astype(int))[inside]
  assert difference.max() <= 1  # PIL rounds in fixed point.
  far_outside = ((source < -1) | (source > [50, 40])).any(-1)
  assert not out[far_outside].any()


def _float64_padded_warp(image, matrix, output_shape):
  """The first `warp_affine`: the whole source as float64, padded."""
  inverse = np.linalg.inv(matrix[:, :2])
  inverse_offset = -inverse @ matrix[:, 2]
  out_y, out_x = np.mgrid[0:output_shape[0], 0:output_shape[1]].astype(
      np.float64)
  src_x = inverse[0, 0] * out_x + inverse[0, 1] * out_y + inverse_offset[0]
  src_y = inverse[1, 0] * out_x + inverse[1, 1] * out_y + inverse_offset[1]
  x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
  frac_x, frac_y = (src_x - x0)[..., None], (src_y - y0)[..., None]
  height, width, _ = image.shape
  padded = np.zeros((height + 2, width + 2, image.shape[2]), np.float64)
  padded[1:-1, 1:-1] = image

  def read(y, x):
    return padded[np.clip(y + 1, 0, height + 1), np.clip(x + 1, 0, width + 1)]

  top = read(y0, x0) * (1 - frac_x) + read(y0, x0 + 1) * frac_x
  bottom = read(y0 + 1, x0) * (1 - frac_x) + read(y0 + 1, x0 + 1) * frac_x
  out = top * (1 - frac_y) + bottom * frac_y
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_warp_affine_is_bit_identical_to_the_float64_padded_warp():
  # The faster gather changed no pixel: random sources, sizes and faces
  # placed anywhere, partly outside the image too.
  rng = np.random.default_rng(2)
  for _ in range(30):
    height, width = rng.integers(40, 260, size=2)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    points = alignment.scale_template((height, width)) + rng.normal(
        0, 0.15 * min(height, width), (5, 2))
    matrix = alignment.similarity_transform(points, alignment.TEMPLATE_112x96)
    np.testing.assert_array_equal(
        alignment.warp_affine(image, matrix, (112, 96)),
        _float64_padded_warp(image, matrix, (112, 96)))


def test_scale_template():
  template = alignment.TEMPLATE_112x96
  np.testing.assert_allclose(alignment.scale_template((112, 96)), template)
  np.testing.assert_allclose(alignment.scale_template((56, 48, 3)),
                             (template + 0.5) / 2 - 0.5)
  np.testing.assert_allclose(alignment.scale_template((112, 112)),
                             template + [8.0, 0.0])


def blob_image(points, shape):
  """uint8 image with a Gaussian blob (sigma 2 px) at each (x, y) point."""
  ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
  image = np.zeros(shape[:2])
  for x, y in points:
    image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8)
  return np.repeat((255 * np.clip(image, 0, 1)).astype(np.uint8)[..., None],
                   3, axis=2)


def blob_centres(image, near, radius=6):
  """Intensity-weighted centroid of the blob near each point."""
  plane = image[..., 0].astype(float)
  ys, xs = np.mgrid[0:plane.shape[0], 0:plane.shape[1]]
  centres = []
  for x, y in near:
    weight = plane * (((xs - x) ** 2 + (ys - y) ** 2) <= radius ** 2)
    centres.append([(weight * xs).sum() / weight.sum(),
                    (weight * ys).sum() / weight.sum()])
  return np.array(centres)


@pytest.mark.parametrize('output_shape', [(112, 96), (56, 48)])
def test_align_face_puts_moved_landmarks_back_on_the_template(output_shape):
  template = alignment.TEMPLATE_112x96
  # A face whose landmarks a known similarity moved into a larger photo.
  move = similarity(1.5, np.radians(20), 40.0, 10.0)
  photo = alignment.warp_affine(blob_image(template, (112, 96, 3)), move,
                                (220, 200))
  aligned = alignment.align_face(photo, apply(move, template), output_shape)
  target = alignment.scale_template(output_shape)
  centres = blob_centres(aligned, target,
                         radius=6 * output_shape[0] / 112)
  assert np.abs(centres - target).max() < 1.0


# ---------------------------------------------------------------------------
# ImageFiles.
# ---------------------------------------------------------------------------


@pytest.fixture
def three_pngs(tmp_path):
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((8, 6, 3), (8, 20, 3), (16, 12, 3))]
  paths = [str(tmp_path / f'{i}.png') for i in range(3)]
  for path, image in zip(paths, images):
    write_png(path, image)
  return paths, images


def test_image_files_reads_by_int_array_and_slice(three_pngs):
  paths, images = three_pngs
  files = image_files.ImageFiles(paths, (8, 6, 3))
  assert (files.shape, files.dtype, files.ndim, len(files)) == (
      (3, 8, 6, 3), np.uint8, 4, 3)
  np.testing.assert_array_equal(files[0], images[0])  # Already (8, 6).
  np.testing.assert_array_equal(files[-3], images[0])
  # 20 wide, 8 tall: the centred 6-wide crop at scale 1 is an exact copy.
  np.testing.assert_array_equal(files[1], images[1][:, 7:13])
  stacked = files[np.array([2, 0, 2])]
  assert stacked.shape == (3, 8, 6, 3)
  np.testing.assert_array_equal(stacked[1], images[0])
  np.testing.assert_array_equal(stacked[0], stacked[2])
  view = files[1:]
  assert isinstance(view, image_files.ImageFiles) and view.shape == (2, 8, 6,
                                                                    3)
  np.testing.assert_array_equal(view[0], files[1])
  np.testing.assert_array_equal(np.asarray(files)[2], stacked[0])
  with pytest.raises(IndexError):
    files[3]  # pylint: disable=pointless-statement


def test_image_files_errors_name_the_file(tmp_path, three_pngs):
  paths, _ = three_pngs
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(b'not an image at all')
  files = image_files.ImageFiles(paths + [str(corrupt)], (8, 6, 3))
  with pytest.raises(ValueError, match='corrupt.jpg'):
    files[np.array([0, 3])]  # pylint: disable=expression-not-assigned
  missing = image_files.ImageFiles([str(tmp_path / 'gone.png')], (8, 6, 3))
  with pytest.raises(FileNotFoundError, match='gone.png'):
    missing[0]  # pylint: disable=pointless-statement


def test_image_files_aligns_with_landmarks(tmp_path):
  template = alignment.TEMPLATE_112x96
  move = similarity(1.2, np.radians(-10), 15.0, 5.0)
  photo = alignment.warp_affine(blob_image(template, (112, 96, 3)), move,
                                (150, 140))
  write_png(str(tmp_path / 'face.png'), photo)
  files = image_files.ImageFiles([str(tmp_path / 'face.png')], (56, 48, 3),
                               landmarks=apply(move, template)[None])
  target = alignment.scale_template((56, 48))
  assert np.abs(blob_centres(files[0], target, 3) - target).max() < 1.0
  with pytest.raises(ValueError, match='landmarks must have shape'):
    image_files.ImageFiles(['a.png'], landmarks=np.zeros((2, 5, 2)))


def test_bad_landmarks_name_the_image_and_far_ones_are_refused(tmp_path):
  write_png(str(tmp_path / 'face.png'), np.zeros((100, 80, 3), np.uint8))
  path = str(tmp_path / 'face.png')
  degenerate = np.full((1, 5, 2), 40.0)            # Five coinciding points.
  with pytest.raises(ValueError, match=f'Cannot align image file {path}: '
                     'Source points all coincide'):
    image_files.ImageFiles([path], (56, 48, 3), landmarks=degenerate)[0]
  far = alignment.TEMPLATE_112x96.copy()[None]
  far[0, 2] = (30.0, 400.0)                        # y far below 100 rows.
  with pytest.raises(ValueError, match=rf'{path}: landmark 2 at .*400.0.* '
                     r'far outside the 80x100 image'):
    image_files.ImageFiles([path], (56, 48, 3), landmarks=far)[0]
  # Slightly outside (a face cut by the border) is still aligned.
  near = alignment.TEMPLATE_112x96.copy()[None]
  near[0, 0] = (-5.0, 40.0)
  assert image_files.ImageFiles([path], (56, 48, 3),
                                landmarks=near)[0].shape == (56, 48, 3)


# ---------------------------------------------------------------------------
# Identity folders, landmarks, pairs.
# ---------------------------------------------------------------------------


def test_scan_identity_folders(tmp_path):
  tiny = np.zeros((2, 2, 3))
  write_png(str(tmp_path / 'b_person' / '2.png'), tiny)
  write_png(str(tmp_path / 'b_person' / '1.png'), tiny)
  (tmp_path / 'b_person' / 'notes.txt').write_text('not an image')
  write_png(str(tmp_path / 'a_person' / 'x.png'), tiny)
  (tmp_path / 'c_empty').mkdir()
  write_png(str(tmp_path / '.hidden' / 'h.png'), tiny)
  paths, labels, names = face_folders.scan_identity_folders(str(tmp_path))
  assert names == ('a_person', 'b_person')
  assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 1]
  assert [os.path.relpath(p, tmp_path) for p in paths] == [
      'a_person/x.png', 'b_person/1.png', 'b_person/2.png']
  _, labels, names = face_folders.scan_identity_folders(
      str(tmp_path), min_images_per_identity=2)
  assert names == ('b_person',) and labels.tolist() == [0, 0]
  with pytest.raises(ValueError, match='No identity found'):
    face_folders.scan_identity_folders(str(tmp_path / 'c_empty'))
  with pytest.raises(FileNotFoundError, match='missing'):
    face_folders.scan_identity_folders(str(tmp_path / 'missing'))


def test_read_landmarks_both_formats_and_errors(tmp_path):
  numbers = ' '.join(str(v) for v in range(1, 11))
  good = tmp_path / 'landmarks.txt'
  good.write_text(f'# comment\na/1.png {numbers}\n\n'
                  f'{tmp_path}/b/2.png 17 {numbers}\n')
  table = face_folders.read_landmarks(str(good), root=str(tmp_path))
  assert sorted(table) == ['a/1.png', 'b/2.png']
  np.testing.assert_array_equal(table['b/2.png'],
                                np.arange(1, 11).reshape(5, 2))
  for content, message in (('a.png 1 2 3\n', 'line 1'),
                           (f'a.png {numbers}\nb.png 1 2 x 4 5 6 7 8 9 10\n',
                            'line 2'),
                           (f'a.png {numbers}\na.png {numbers}\n',
                            'already listed on line 1')):
    bad = tmp_path / 'bad.txt'
    bad.write_text(content)
    with pytest.raises(ValueError, match=message):
      face_folders.read_landmarks(str(bad))


PAIRS = '2 1\nAlice 1 2\nAlice 1 Bob 1\nBob 1 2\nBob 2 Carol 1\n'


def write_lfw_tree(root):
  """Alice 1-2, Bob 1-2, Carol 1, each a flat 8x6 image of its own grey."""
  for grey, (name, number) in enumerate([('Alice', 1), ('Alice', 2),
                                         ('Bob', 1), ('Bob', 2),
                                         ('Carol', 1)]):
    write_png(str(root / name / f'{name}_{number:04d}.png'),
              np.full((8, 6, 3), 40 * grey))


def test_read_pairs(tmp_path):
  path = tmp_path / 'pairs.txt'
  path.write_text(PAIRS)
  pairs = face_folders.read_pairs(str(path))
  assert len(pairs) == 4 and pairs.num_folds == 2
  assert pairs.is_same.tolist() == [True, False, True, False]
  assert pairs.fold.tolist() == [0, 0, 1, 1]
  assert pairs.left_name.tolist() == ['Alice', 'Alice', 'Bob', 'Bob']
  assert pairs.right_name.tolist() == ['Alice', 'Bob', 'Bob', 'Carol']
  assert pairs.right_number.tolist() == [2, 1, 2, 1]
  for content, message in (('Alice 1 2\nAlice 1 Bob 1\n', 'header'),
                           ('2 1\nAlice 1 2\nAlice 1 Bob 1\n', '4 pair lines'),
                           ('1 1\nAlice 1 2\nAlice 1 2\n', 'fold 0 has 2'),
                           ('1 1\nAlice 1\nAlice 1 Bob 1\n', 'line 2')):
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
      face_folders.read_pairs(str(path))


def test_load_pairs_set(tmp_path):
  write_lfw_tree(tmp_path / 'lfw')
  (tmp_path / 'pairs.txt').write_text(PAIRS)
  pairs_set = face_folders.load_pairs_set(
      str(tmp_path / 'lfw'), str(tmp_path / 'pairs.txt'),
      image_shape=(8, 6, 3), name='tiny')
  assert isinstance(pairs_set, data.types.PairsSet)
  assert pairs_set.name == 'tiny' and pairs_set.num_folds == 2
  assert len(pairs_set.images) == 5  # Each distinct image once.
  # Each image is a flat grey of its own, so pixels identify the file.
  greys = np.asarray(pairs_set.images)[:, 0, 0, 0]
  assert greys[pairs_set.left].tolist() == [0, 0, 80, 120]
  assert greys[pairs_set.right].tolist() == [40, 80, 120, 160]
  assert pairs_set.is_same.tolist() == [True, False, True, False]
  os.remove(tmp_path / 'lfw' / 'Carol' / 'Carol_0001.png')
  with pytest.raises(FileNotFoundError, match='Carol_0001'):
    face_folders.load_pairs_set(str(tmp_path / 'lfw'),
                             str(tmp_path / 'pairs.txt'))


def test_load_identity_folders(tmp_path):
  train = tmp_path / 'train'
  value = 0
  for name, count in (('id_a', 3), ('id_b', 1), ('id_c', 2)):
    for i in range(count):
      write_png(str(train / name / f'{i}.png'), np.full((8, 6, 3), value))
      value += 10
  write_lfw_tree(tmp_path / 'lfw')
  (tmp_path / 'pairs.txt').write_text(PAIRS)
  config = dict(train_dir=str(train), image_shape=(8, 6, 3), num_classes=3,
                test_images_per_identity=1, test_split='last',
                pairs_dir=str(tmp_path / 'lfw'),
                pairs_file=str(tmp_path / 'pairs.txt'))
  dataset = face_folders.load_identity_folders(**config)
  assert dataset.class_names == ('id_a', 'id_b', 'id_c')
  assert dataset.image_shape == (8, 6, 3) and dataset.num_classes == 3
  # 'last': the last image of identities with more than one goes to test.
  assert dataset.train.labels.tolist() == [0, 0, 1, 2]
  assert dataset.test.labels.tolist() == [0, 2]
  assert isinstance(dataset.train.images, image_files.ImageFiles)
  assert np.asarray(dataset.train.images)[:, 0, 0, 0].tolist() == [
      0, 10, 30, 40]
  assert np.asarray(dataset.test.images)[:, 0, 0, 0].tolist() == [20, 50]
  assert dataset.verification.num_folds == 2
  batch = next(data.batching.epoch_batches(
      dataset.train, global_batch_size=2, epoch=0, seed=0, shuffle=True))
  assert batch['image'].shape == (2, 8, 6, 3)

  subset = face_folders.load_identity_folders(
      **dict(config, train_subset=2, pairs_dir=None, pairs_file=None))
  assert subset.train.labels.tolist() == [0, 0]
  assert subset.verification is None
  with pytest.raises(ValueError, match='num_classes=2 but .* has 3 identities'):
    face_folders.load_identity_folders(**dict(config, num_classes=2))
  # More classes than identities: a padded classifier, classes 3.. unseen.
  padded = face_folders.load_identity_folders(**dict(config, num_classes=8))
  assert padded.num_classes == 8 and len(padded.class_names) == 3
  assert padded.train.labels.tolist() == dataset.train.labels.tolist()
  with pytest.raises(ValueError, match="test_split must be one of .*'first'"):
    face_folders.load_identity_folders(**dict(config, test_split='first'))
  landmarks = tmp_path / 'landmarks.txt'
  landmarks.write_text('id_a/0.png ' + ' '.join(['1'] * 10) + '\n')
  with pytest.raises(ValueError, match='5 of 6 images have no landmarks'):
    face_folders.load_identity_folders(**dict(config, landmarks=str(landmarks)))


def test_random_test_split_is_seeded_per_identity_and_unbiased(tmp_path):
  # Ten images per identity whose sorted names encode a condition (the last
  # ones 'z_dark'): the 'last' split tests on that condition only.
  train = tmp_path / 'train'
  value = 0
  for name in ('id_a', 'id_b', 'id_c'):
    for i in range(10):
      condition = 'z_dark' if i >= 7 else 'lit'
      write_png(str(train / name / f'{condition}_{i}.png'),
                np.full((8, 6, 3), value))
      value += 1
  config = dict(train_dir=str(train), image_shape=(8, 6, 3), num_classes=3,
                test_images_per_identity=3)

  def test_files(**kwargs):
    dataset = face_folders.load_identity_folders(**config, **kwargs)
    assert dataset.test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert dataset.train.num_examples == 21
    train_files = set(dataset.train.images.paths)
    test_files = [os.path.basename(p) for p in dataset.test.images.paths]
    assert not train_files & set(dataset.test.images.paths)
    return test_files

  last = test_files(test_split='last')
  assert all(name.startswith('z_dark') for name in last)
  default = test_files()  # 'random', split_seed 0.
  assert default == test_files(test_split='random', split_seed=0)
  assert default != last and default != test_files(split_seed=1)
  # 3 of 10 images per identity: a random choice picks exactly the 3 dark
  # ones of every identity with probability (1/120)^3.
  assert not all(name.startswith('z_dark') for name in default)


# ---------------------------------------------------------------------------
# Synthetic faces.
# ---------------------------------------------------------------------------

SHAPE = (28, 24, 3)


def test_identities_and_images_do_not_depend_on_what_else_is_drawn():
  few = sf.make_identities(10, seed=3)
  many = sf.make_identities(100, seed=3)
  for name, values in few.values.items():
    np.testing.assert_array_equal(values[7], many.values[name][7])
  alone = sf.render(few, [7], image_ids=[4], seed=3, image_shape=SHAPE)
  among = sf.render(many, np.arange(100), image_ids=np.full(100, 4), seed=3,
                    image_shape=SHAPE)
  np.testing.assert_array_equal(alone[0], among[7])
  # Occurrence numbering: the 2nd image of identity 7 is image 1.
  np.testing.assert_array_equal(
      sf.render(few, [2, 7, 7], seed=3, image_shape=SHAPE)[2],
      sf.render(few, [7], image_ids=[1], seed=3, image_shape=SHAPE)[0])
  other_seed = sf.render(sf.make_identities(10, seed=4), [7], image_ids=[4],
                         seed=4, image_shape=SHAPE)
  assert not np.array_equal(alone, other_seed)


def test_difficulty_scales_the_variation_within_an_identity():
  params = sf.make_identities(4, seed=0)
  ids = np.repeat(np.arange(4), 3)
  clean = sf.render(params, ids, seed=0, difficulty=0.0,
                    image_shape=SHAPE).astype(int)
  for i in range(4):
    assert (clean[3 * i] == clean[3 * i + 1:3 * i + 3]).all()
  assert np.abs(clean[0] - clean[3]).mean() > 5  # Identities differ.
  varied = sf.render(params, ids, seed=0, difficulty=1.0,
                     image_shape=SHAPE).astype(int)
  assert np.abs(varied[0] - varied[1]).mean() > 5
  with pytest.raises(ValueError, match='not in params'):
    sf.render(params, [9], seed=0)


def test_sample_pairs_folds_are_disjoint_and_pairs_distinct():
  pairs = sf.sample_pairs(40, 3, num_folds=10, pairs_per_fold=8, seed=0)
  assert len(pairs.is_same) == 80
  for fold in range(10):
    in_fold = pairs.fold == fold
    assert pairs.is_same[in_fold].tolist() == [True] * 4 + [False] * 4
    others = np.r_[pairs.left_identity[~in_fold],
                   pairs.right_identity[~in_fold]]
    assert not np.isin(pairs.left_identity[in_fold], others).any()
  same = pairs.is_same
  assert (pairs.left_identity[same] == pairs.right_identity[same]).all()
  assert (pairs.left_image[same] != pairs.right_image[same]).all()
  assert (pairs.left_identity[~same] != pairs.right_identity[~same]).all()
  keys = set(zip(pairs.left_identity, pairs.left_image, pairs.right_identity,
                 pairs.right_image))
  assert len(keys) == 80
  with pytest.raises(ValueError, match='fewer than'):
    sf.sample_pairs(20, 2, num_folds=10, pairs_per_fold=8, seed=0)


SYNTHETIC_CONFIG = dict(
    seed=1, image_shape=SHAPE, num_train_identities=6, images_per_identity=3,
    test_images_per_identity=1, num_verification_identities=20,
    pairs_per_fold=4, num_probe_identities=3, probe_images_per_identity=2,
    num_distractors=5, difficulty=1.0)


def test_registry_names_a_missing_required_field():
  with pytest.raises(ValueError, match="'synthetic_faces' needs "
                     "'num_train_identities'"):
    data.load_dataset('synthetic_faces', images_per_identity=2,
                      num_train_identities=None)


def test_load_synthetic_faces():
  dataset = sf.load_synthetic_faces(**SYNTHETIC_CONFIG)
  again = sf.load_synthetic_faces(**SYNTHETIC_CONFIG)
  np.testing.assert_array_equal(dataset.train.images, again.train.images)
  np.testing.assert_array_equal(dataset.verification.images,
                                again.verification.images)
  assert dataset.num_classes == 6 and dataset.image_shape == SHAPE
  assert dataset.train.images.shape == (18,) + SHAPE
  assert dataset.train.labels.tolist() == np.repeat(np.arange(6), 3).tolist()
  assert dataset.test.labels.tolist() == list(range(6))
  # Test images are extra images (number 3) of the training identities.
  train_params = sf.make_identities(6, seed=1)
  np.testing.assert_array_equal(
      dataset.test.images[2],
      sf.render(train_params, [2], image_ids=[3], seed=1, image_shape=SHAPE)[0])

  pairs = dataset.verification
  assert pairs.num_folds == 10
  assert np.bincount(pairs.fold).tolist() == [4] * 10
  assert np.bincount(pairs.fold[pairs.is_same]).tolist() == [2] * 10
  # The pairs' images are the sampled identities' images, from a range
  # disjoint from training.
  sampled = sf.sample_pairs(20, 3, num_folds=10, pairs_per_fold=4, seed=1)
  verification_params = sf.make_identities(
      20, seed=1, first_identity=sf.VERIFICATION_FIRST_IDENTITY)
  for k in (0, 1, 10, 39):
    expected = sf.render(
        verification_params,
        [sf.VERIFICATION_FIRST_IDENTITY + sampled.right_identity[k]],
        image_ids=[sampled.right_image[k]], seed=1, image_shape=SHAPE)[0]
    np.testing.assert_array_equal(pairs.images[pairs.right[k]], expected)
  assert sampled.is_same.tolist() == pairs.is_same.tolist()
  starts = [sf.TRAIN_FIRST_IDENTITY, sf.VERIFICATION_FIRST_IDENTITY,
            sf.PROBE_FIRST_IDENTITY, sf.DISTRACTOR_FIRST_IDENTITY]
  assert np.diff(starts).min() >= sf.MAX_IDENTITIES_PER_PART

  identification = dataset.identification
  assert identification.probes.labels.tolist() == [0, 0, 1, 1, 2, 2]
  assert identification.distractors.shape == (5,) + SHAPE
  batch = next(data.batching.epoch_batches(
      dataset.train, global_batch_size=4, epoch=0, seed=0, shuffle=True))
  assert batch['image'].shape == (4,) + SHAPE

  with pytest.raises(ValueError,
                     match=r'num_classes=5 but .*num_train_identities\) has 6'):
    sf.load_synthetic_faces(**dict(SYNTHETIC_CONFIG, num_classes=5))
  padded = sf.load_synthetic_faces(**dict(SYNTHETIC_CONFIG, num_classes=16))
  assert padded.num_classes == 16 and len(padded.class_names) == 6
  np.testing.assert_array_equal(padded.train.labels, dataset.train.labels)
  # Through the registry, as from a config: None is the loader's default.
  only_train = data.load_dataset('synthetic_faces', **dict(
      SYNTHETIC_CONFIG, num_verification_identities=0,
      num_probe_identities=None))
  assert only_train.verification is None and only_train.identification is None
