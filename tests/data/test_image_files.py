"""Tests of data.image_files.ImageFiles: an array-like of image files,
decoded, centre-cropped or aligned by landmarks when indexed."""

import numpy as np
import pytest

from centerloss_jax.data import alignment
from centerloss_jax.data import image_files
from face_images import apply
from face_images import blob_centres
from face_images import blob_image
from face_images import similarity
from face_trees import write_png

SHAPE = (8, 6, 3)


@pytest.fixture(scope='module')
def three_pngs(tmp_path_factory):
  """(paths, images) of three PNGs: 8x6 (the shape), 8x20 and 16x12."""
  directory = tmp_path_factory.mktemp('three_pngs')
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((8, 6, 3), (8, 20, 3), (16, 12, 3))]
  paths = [str(directory / f'{i}.png') for i in range(3)]
  for path, image in zip(paths, images):
    write_png(path, image)
  return paths, images


@pytest.fixture(scope='module')
def files(three_pngs):
  return image_files.ImageFiles(three_pngs[0], SHAPE)


def test_image_files_has_the_array_attributes_of_n_images_of_its_shape(files):
  assert (files.shape, files.dtype, files.ndim, len(files)) == (
      (3, 8, 6, 3), np.uint8, 4, 3)


def test_image_files_int_index_reads_an_image_of_the_shape_unchanged(
    files, three_pngs):
  np.testing.assert_array_equal(files[0], three_pngs[1][0])


def test_image_files_negative_index_counts_from_the_end(files, three_pngs):
  np.testing.assert_array_equal(files[-3], three_pngs[1][0])


def test_image_files_centre_crops_a_wider_image(files, three_pngs):
  # 20 wide, 8 tall: the centred 6-wide crop at scale 1 is an exact copy.
  np.testing.assert_array_equal(files[1], three_pngs[1][1][:, 7:13])


def test_image_files_int_array_index_stacks_the_images(files, three_pngs):
  stacked = files[np.array([2, 0, 2])]
  assert stacked.shape == (3, 8, 6, 3)
  np.testing.assert_array_equal(stacked[1], three_pngs[1][0])
  np.testing.assert_array_equal(stacked[0], stacked[2])


def test_image_files_slice_is_an_image_files_view(files):
  view = files[1:]
  assert isinstance(view, image_files.ImageFiles) and view.shape == (2, 8, 6,
                                                                    3)
  np.testing.assert_array_equal(view[0], files[1])


def test_image_files_as_an_array_holds_every_image(files):
  np.testing.assert_array_equal(np.asarray(files)[2],
                                files[np.array([2, 0, 2])][0])


def test_image_files_index_past_the_end_raises_index_error(files):
  with pytest.raises(IndexError):
    files[3]  # pylint: disable=pointless-statement


def test_image_files_corrupt_file_error_names_it(tmp_path, three_pngs):
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(b'not an image at all')
  files = image_files.ImageFiles(three_pngs[0] + [str(corrupt)], SHAPE)
  with pytest.raises(ValueError, match='corrupt.jpg'):
    files[np.array([0, 3])]  # pylint: disable=expression-not-assigned


def test_image_files_missing_file_error_names_it(tmp_path):
  missing = image_files.ImageFiles([str(tmp_path / 'gone.png')], SHAPE)
  with pytest.raises(FileNotFoundError, match='gone.png'):
    missing[0]  # pylint: disable=pointless-statement


def test_image_files_aligns_each_image_by_its_landmarks(tmp_path):
  template = alignment.TEMPLATE_112x96
  move = similarity(1.2, np.radians(-10), 15.0, 5.0)
  photo = alignment.warp_affine(blob_image(template, (112, 96, 3)), move,
                                (150, 140))
  write_png(str(tmp_path / 'face.png'), photo)
  files = image_files.ImageFiles([str(tmp_path / 'face.png')], (56, 48, 3),
                                 landmarks=apply(move, template)[None])
  target = alignment.scale_template((56, 48))
  assert np.abs(blob_centres(files[0], target, 3) - target).max() < 1.0


def test_image_files_rejects_landmarks_not_one_set_per_image():
  with pytest.raises(ValueError, match='landmarks must have shape'):
    image_files.ImageFiles(['a.png'], landmarks=np.zeros((2, 5, 2)))


@pytest.fixture
def black_face(tmp_path):
  """The path of a black 100x80 PNG."""
  path = str(tmp_path / 'face.png')
  write_png(path, np.zeros((100, 80, 3), np.uint8))
  return path


def test_image_files_degenerate_landmarks_error_names_the_image(black_face):
  degenerate = np.full((1, 5, 2), 40.0)            # Five coinciding points.
  with pytest.raises(ValueError, match=f'Cannot align image file {black_face}'
                     ': Source points all coincide'):
    image_files.ImageFiles([black_face], (56, 48, 3),
                           landmarks=degenerate)[0]


def test_image_files_refuses_a_landmark_far_outside_the_image(black_face):
  far = alignment.TEMPLATE_112x96.copy()[None]
  far[0, 2] = (30.0, 400.0)                        # y far below 100 rows.
  with pytest.raises(ValueError, match=rf'{black_face}: landmark 2 at '
                     r'.*400.0.* far outside the 80x100 image'):
    image_files.ImageFiles([black_face], (56, 48, 3), landmarks=far)[0]


def test_image_files_aligns_a_face_cut_by_the_border(black_face):
  near = alignment.TEMPLATE_112x96.copy()[None]
  near[0, 0] = (-5.0, 40.0)                        # Slightly outside.
  assert image_files.ImageFiles([black_face], (56, 48, 3),
                                landmarks=near)[0].shape == (56, 48, 3)
