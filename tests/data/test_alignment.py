"""Tests of data.alignment: the similarity fit, the bilinear warp, the
scaled template and the 5-landmark face crop."""

import numpy as np
from PIL import Image
import pytest

from centerloss_jax.data import alignment
from face_images import apply
from face_images import blob_centres
from face_images import blob_image
from face_images import similarity

# ---------------------------------------------------------------------------
# similarity_transform.
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


# ---------------------------------------------------------------------------
# warp_affine.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def shifted():
  """(image, the image warped by an integer shift of (2, 1))."""
  image = np.arange(5 * 6 * 2, dtype=np.uint8).reshape(5, 6, 2)
  return image, alignment.warp_affine(image, similarity(1.0, 0.0, 2.0, 1.0),
                                      (5, 6))


def test_warp_affine_integer_shift_moves_pixels_exactly(shifted):
  image, out = shifted
  np.testing.assert_array_equal(out[1:, 2:], image[:-1, :-2])


def test_warp_affine_fills_pixels_from_outside_the_source_with_zero(shifted):
  _, out = shifted
  assert not out[0].any() and not out[:, :2].any()


@pytest.fixture(scope='module')
def warped_like_pil():
  """A random image warped by a similarity, with PIL's warp of it and the
  source coordinates of each output pixel."""
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
  return out, reference, source


def test_warp_affine_matches_pil_inside_the_image(warped_like_pil):
  out, reference, source = warped_like_pil
  inside = ((source >= 0) & (source <= [49, 39])).all(-1)
  assert inside.sum() > 1000
  difference = np.abs(out.astype(int) - reference.astype(int))[inside]
  assert difference.max() <= 1  # PIL rounds in fixed point.


def test_warp_affine_is_zero_far_outside_the_image(warped_like_pil):
  out, _, source = warped_like_pil
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
  # placed anywhere, partly outside the image too. Exact by construction:
  # both do the same float64 operations in the same order.
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


# ---------------------------------------------------------------------------
# scale_template.
# ---------------------------------------------------------------------------


def test_scale_template_at_the_template_shape_is_the_template():
  np.testing.assert_allclose(alignment.scale_template((112, 96)),
                             alignment.TEMPLATE_112x96)


def test_scale_template_scales_about_pixel_centres():
  np.testing.assert_allclose(alignment.scale_template((56, 48, 3)),
                             (alignment.TEMPLATE_112x96 + 0.5) / 2 - 0.5)


def test_scale_template_centres_the_template_in_a_wider_crop():
  np.testing.assert_allclose(alignment.scale_template((112, 112)),
                             alignment.TEMPLATE_112x96 + [8.0, 0.0])


# ---------------------------------------------------------------------------
# align_face.
# ---------------------------------------------------------------------------


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
