"""Face alignment: a 5-landmark similarity transform to a fixed template.

Face recognition models are trained and tested on crops in which the eyes,
the nose and the mouth corners sit at fixed positions. Given five landmarks
per image (left eye, right eye, nose tip, left and right mouth corners, in
that order, as `(x, y)` pixels of the source image), `align_face` fits the
least-squares similarity (rotation, uniform scale, translation) that maps them
onto `TEMPLATE_112x96` and resamples the image through it. No face detector is
bundled: the landmarks must come with the dataset (CASIA-WebFace, MS1M and
LFW are all distributed with landmark lists).

Coordinates. A pixel's centre has integer coordinates: pixel `(row, col)` is
the point `(x, y) = (col, row)`, as in OpenCV's `warpAffine` with which the
reference crops were made, so the template values carry over unchanged.

Other crop sizes. The template is defined for 112x96 crops. For another
output shape, `scale_template` scales it uniformly by
`min(H / 112, W / 96)` about the pixel grid (point `p` maps to
`(p + 0.5) * s - 0.5`, so the image extent, not the centre of the first
pixel, is what scales) and centres the scaled 112x96 box in the output. A
56x48 crop gets the template halved; a 112x112 crop gets it shifted 8 pixels
right, the usual convention for square crops.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

# (x, y) pixels of left eye, right eye, nose tip, left and right mouth
# corners in a 112x96 (height x width) crop: the template of the SphereFace
# and center loss reference preprocessing.
TEMPLATE_112x96 = np.array(
    [[30.2946, 51.6963],
     [65.5318, 51.5014],
     [48.0252, 71.7366],
     [33.5493, 92.3655],
     [62.7299, 92.2041]], dtype=np.float64)

TEMPLATE_SHAPE = (112, 96)


def _output_hw(output_shape: Sequence[int]) -> Tuple[int, int]:
  """(H, W) from an `(H, W)` or `(H, W, C)` shape, validated."""
  if len(output_shape) not in (2, 3) or any(
      int(d) <= 0 for d in output_shape[:2]):
    raise ValueError(
        f'output_shape must be (H, W) or (H, W, C) with positive H and W, '
        f'got {tuple(output_shape)}.')
  return int(output_shape[0]), int(output_shape[1])


def scale_template(output_shape: Sequence[int],
                   template: np.ndarray = TEMPLATE_112x96,
                   template_shape: Sequence[int] = TEMPLATE_SHAPE
                   ) -> np.ndarray:
  """The template's landmarks for a crop of another size (see module doc).

  Args:
    output_shape: (H, W) or (H, W, C) of the crop.
    template: (5, 2) landmarks, (x, y) pixels, for crops of `template_shape`.
    template_shape: (H, W) the template's coordinates refer to.

  Returns:
    (5, 2) float64 landmarks for `output_shape`: the template scaled
    uniformly by `min(H / H_t, W / W_t)` and centred; unchanged when the
    shapes agree.
  """
  height, width = _output_hw(output_shape)
  template_height, template_width = _output_hw(template_shape)
  template = np.asarray(template, dtype=np.float64)
  scale = min(height / template_height, width / template_width)
  # Centre the scaled template box in the output along the looser axis.
  offset = np.array([(width - template_width * scale) / 2,
                     (height - template_height * scale) / 2])
  return (template + 0.5) * scale - 0.5 + offset


def similarity_transform(src_points: np.ndarray,
                         dst_points: np.ndarray) -> np.ndarray:
  """Least-squares similarity mapping `src_points` onto `dst_points`.

  Umeyama (1991), "Least-squares estimation of transformation parameters
  between two point patterns": the rotation comes from the SVD of the
  cross-covariance, with the sign of its last singular direction flipped
  when needed so that it is a rotation and never a reflection (a mirrored
  face is another face).

  Args:
    src_points: (K, 2) points (x, y), K >= 2, not all equal.
    dst_points: (K, 2) points they should map to.

  Returns:
    float64 (2, 3) matrix `M` with `dst ~= M[:, :2] @ src + M[:, 2]`.

  Raises:
    ValueError: shapes that are not (K, 2) with K >= 2 and equal, non-finite
      values, or coincident source points (no scale can be fitted).
  """
  src = np.asarray(src_points, dtype=np.float64)
  dst = np.asarray(dst_points, dtype=np.float64)
  if src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2 or (
      dst.shape != src.shape):
    raise ValueError(
        'src_points and dst_points must both have shape (K, 2) with K >= 2, '
        f'got {src.shape} and {dst.shape}.')
  if not (np.isfinite(src).all() and np.isfinite(dst).all()):
    raise ValueError(f'Points must be finite, got src {src.tolist()} and '
                     f'dst {dst.tolist()}.')
  src_mean = src.mean(axis=0)
  dst_mean = dst.mean(axis=0)
  src_centered = src - src_mean
  dst_centered = dst - dst_mean
  src_variance = (src_centered ** 2).sum() / len(src)
  if src_variance <= 1e-12:
    raise ValueError(f'Source points all coincide ({src.tolist()}); a '
                     'similarity transform needs distinct points.')
  covariance = dst_centered.T @ src_centered / len(src)
  u, singular_values, vt = np.linalg.svd(covariance)
  signs = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    signs[-1] = -1.0
  rotation = u @ np.diag(signs) @ vt
  scale = (singular_values * signs).sum() / src_variance
  translation = dst_mean - scale * rotation @ src_mean
  return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def warp_affine(image: np.ndarray, matrix: np.ndarray,
                output_shape: Sequence[int]) -> np.ndarray:
  """Resamples `image` through an affine map, bilinearly, zeros outside.

  Each output pixel `p` takes the bilinear interpolation of the source at
  `A^-1 (p - b)`, where `matrix = [A | b]` maps source to output
  coordinates. Neighbours that fall outside the source count as 0 (black),
  like OpenCV's `warpAffine` with a constant border; no antialiasing, which
  suits alignment (scale factors near 1).

  Args:
    image: uint8 (H, W, C) or (H, W).
    matrix: (2, 3) affine map from source to output (x, y) coordinates.
    output_shape: (H_out, W_out) or (H_out, W_out, C).

  Returns:
    uint8 (H_out, W_out, C) (or (H_out, W_out) for a 2-D input).

  Raises:
    ValueError: an image that is not uint8 2-D/3-D, a matrix that is not
      (2, 3) or not invertible.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f'image must be uint8 (H, W, C) or (H, W), got '
                     f'{image.dtype} {image.shape}.')
  matrix = np.asarray(matrix, dtype=np.float64)
  if matrix.shape != (2, 3):
    raise ValueError(f'matrix must have shape (2, 3), got {matrix.shape}.')
  linear = matrix[:, :2]
  if abs(np.linalg.det(linear)) < 1e-12:
    raise ValueError(f'matrix is not invertible: {matrix.tolist()}.')
  out_height, out_width = _output_hw(output_shape)
  squeeze = image.ndim == 2
  if squeeze:
    image = image[:, :, None]
  in_height, in_width, channels = image.shape

  inverse = np.linalg.inv(linear)
  inverse_offset = -inverse @ matrix[:, 2]
  out_y, out_x = np.mgrid[0:out_height, 0:out_width].astype(np.float64)
  src_x = inverse[0, 0] * out_x + inverse[0, 1] * out_y + inverse_offset[0]
  src_y = inverse[1, 0] * out_x + inverse[1, 1] * out_y + inverse_offset[1]

  x0 = np.floor(src_x)
  y0 = np.floor(src_y)
  frac_x = (src_x - x0)[..., None]
  frac_y = (src_y - y0)[..., None]
  x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
  # A zero-padded uint8 copy makes every neighbour within one pixel of the
  # image readable; neighbours further out are clipped onto the zero frame.
  # Only the gathered neighbours become float64 (not the whole source, which
  # cost most of the time at 250x250), read by flat row offsets with one
  # `take` each: the same values and arithmetic, several times faster.
  padded = np.zeros((in_height + 2, in_width + 2, channels), np.uint8)
  padded[1:-1, 1:-1] = image
  flat = padded.reshape(-1, channels)
  left = np.clip(x0 + 1, 0, in_width + 1)
  right = np.clip(x0 + 2, 0, in_width + 1)
  upper = np.clip(y0 + 1, 0, in_height + 1) * (in_width + 2)
  lower = np.clip(y0 + 2, 0, in_height + 1) * (in_width + 2)

  def read(row_offset, column):
    return np.take(flat, row_offset + column, axis=0).astype(np.float64)

  top = read(upper, left) * (1 - frac_x) + read(upper, right) * frac_x
  bottom = read(lower, left) * (1 - frac_x) + read(lower, right) * frac_x
  out = top * (1 - frac_y) + bottom * frac_y
  out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out[:, :, 0] if squeeze else out


def align_face(image: np.ndarray, landmarks: np.ndarray,
               output_shape: Sequence[int] = TEMPLATE_SHAPE,
               template: np.ndarray = TEMPLATE_112x96,
               template_shape: Sequence[int] = TEMPLATE_SHAPE) -> np.ndarray:
  """Crops a face so that its 5 landmarks land on the template.

  Args:
    image: uint8 (H, W, C) or (H, W) source image.
    landmarks: (5, 2) (x, y) pixels of left eye, right eye, nose tip, left
      and right mouth corners in `image`.
    output_shape: (H_out, W_out) or (H_out, W_out, C) of the crop.
    template: (5, 2) target landmarks for crops of `template_shape`.
    template_shape: (H, W) `template` refers to; the template is rescaled
      by `scale_template` when `output_shape` differs.

  Returns:
    uint8 aligned crop (H_out, W_out, C).

  Raises:
    ValueError: landmarks that are not (5, 2) finite values, one more than
      half the image beyond its border, or the errors of
      `similarity_transform` and `warp_affine`.
  """
  landmarks = np.asarray(landmarks, dtype=np.float64)
  template = np.asarray(template, dtype=np.float64)
  if landmarks.shape != template.shape:
    raise ValueError(f'landmarks must have shape {template.shape} (one (x, y) '
                     f'per template point), got {landmarks.shape}.')
  height, width = np.shape(image)[:2]
  # A face may be cut by the border, but a landmark more than half the image
  # beyond it is in another coordinate system (another image's, or (y, x)).
  far = ((landmarks[:, 0] < -0.5 * width) | (landmarks[:, 0] > 1.5 * width)
         | (landmarks[:, 1] < -0.5 * height)
         | (landmarks[:, 1] > 1.5 * height))
  if far.any():
    point = int(np.argmax(far))
    raise ValueError(
        f'landmark {point} at (x, y) = {landmarks[point].tolist()} lies far '
        f'outside the {width}x{height} image (more than half its size beyond '
        'the border): landmarks of another image, or (y, x) order?')
  target = scale_template(output_shape, template, template_shape)
  matrix = similarity_transform(landmarks, target)
  return warp_affine(image, matrix, output_shape)
