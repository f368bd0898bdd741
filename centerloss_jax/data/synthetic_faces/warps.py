"""The geometric nuisances: pose-like and expression warps of the canvas.

* pose-like warps: a random similarity (rotation, scale, shift), a
  horizontal squeeze and a bulge toward one side that mimic yaw, and a
  vertical bulge that mimics pitch;
* expression: local warps that widen the mouth, open or curve it (a smile)
  and narrow the eyes.

All are computed as a batched product of separable terms that gives every
output pixel the canvas pixel it shows (`canvas_pixels`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np

from centerloss_jax.data.synthetic_faces import drawing
from centerloss_jax.data.synthetic_faces.draws import ImageDraws
from centerloss_jax.data.synthetic_faces.draws import per_image
from centerloss_jax.data.synthetic_faces.draws import pixel_coords

# Nuisance magnitudes at difficulty 1 (all scale linearly with difficulty).
_MAX_ROTATION_DEGREES = 12.0
_MAX_LOG_SCALE = 0.12
_MAX_SHIFT = 0.07  # Fraction of the image size.
_MAX_YAW = 0.35  # Shift of the face's middle, in face half-widths.
_YAW_SQUEEZE = 0.4  # Horizontal squeeze per unit of |yaw|.
_MAX_PITCH = 0.12  # Shift of the face's middle, in face half-heights.
_MAX_MOUTH_WIDTH = 0.15  # Relative stretch around the mouth.
_MAX_MOUTH_OPEN = 0.4
_MAX_SMILE = 3.0  # Template units the mouth corners move.
_MAX_EYE_SQUEEZE = 0.4


def _gaussian(t: np.ndarray, center: np.ndarray, sigma: np.ndarray):
  """The unnormalised Gaussian bump `exp(-(t - center)^2 / (2 sigma^2))`."""
  return np.exp(-0.5 * ((t - center) / sigma) ** 2)


@dataclasses.dataclass(frozen=True)
class _Pose:
  """The similarity part of each image's pose, float32 (m,) each.

  Output p = c + scale * R(angle) * diag(squeeze, 1) * (q - c) + T for
  canonical q (c: the face's centre); sampling needs the inverse,
  q = c + A (p - c - T) = A p + t0.

  Attributes:
    center_x, center_y: the face's centre c, output pixels.
    moved_x, moved_y: where the pose puts it, c + T.
    scale, squeeze, cos, sin: the pose's scale, horizontal squeeze and
      rotation.
    yaw: the yaw, in face half-widths (also behind the squeeze).
    a00, a01, a10, a11: A.
    t0x, t0y: t0 plus the canvas margin and 0.5, so that truncating a
      sampling position to int gives the nearest canvas pixel.
  """
  center_x: np.ndarray
  center_y: np.ndarray
  moved_x: np.ndarray
  moved_y: np.ndarray
  scale: np.ndarray
  squeeze: np.ndarray
  cos: np.ndarray
  sin: np.ndarray
  yaw: np.ndarray
  a00: np.ndarray
  a01: np.ndarray
  a10: np.ndarray
  a11: np.ndarray
  t0x: np.ndarray
  t0y: np.ndarray

  def posed(self, qx, qy):
    """Where canonical output point (qx, qy) lands after the pose."""
    dx, dy = qx - self.center_x, qy - self.center_y
    return (self.moved_x + self.scale * (self.cos * self.squeeze * dx
                                         - self.sin * dy),
            self.moved_y + self.scale * (self.sin * self.squeeze * dx
                                         + self.cos * dy))


def draw_pose(face: Dict[str, np.ndarray], draws: ImageDraws,
               geometry: drawing.Geometry, difficulty: float) -> _Pose:
  """Random rotation, scale, shift and yaw squeeze of each image."""
  g = geometry
  d = np.float32(difficulty)
  center_x = g.to_output_x(face['face_x'])
  center_y = g.to_output_y(face['face_y'])
  angle = np.radians(_MAX_ROTATION_DEGREES) * d * draws.symmetric('rotation')
  scale = np.exp(_MAX_LOG_SCALE * d * draws.symmetric('scale'))
  yaw = _MAX_YAW * d * draws.symmetric('yaw')
  squeeze = 1 - _YAW_SQUEEZE * np.abs(yaw)
  shift_x = _MAX_SHIFT * g.width * d * draws.symmetric('shift_x')
  shift_y = _MAX_SHIFT * g.height * d * draws.symmetric('shift_y')
  cos, sin = np.cos(angle), np.sin(angle)
  a00, a01 = cos / (scale * squeeze), sin / (scale * squeeze)
  a10, a11 = -sin / scale, cos / scale
  moved_x, moved_y = center_x + shift_x, center_y + shift_y
  # Offsets include the canvas margin (q is looked up on the canvas) and
  # 0.5, so that truncating to int rounds to the nearest canvas pixel.
  t0x = center_x - a00 * moved_x - a01 * moved_y + g.margin_x + 0.5
  t0y = center_y - a10 * moved_x - a11 * moved_y + g.margin_y + 0.5
  return _Pose(center_x=center_x, center_y=center_y, moved_x=moved_x,
               moved_y=moved_y, scale=scale, squeeze=squeeze, cos=cos,
               sin=sin, yaw=yaw, a00=a00, a01=a01, a10=a10, a11=a11,
               t0x=t0x, t0y=t0y)


def pose_bulges(face: Dict[str, np.ndarray], pose: _Pose,
                 draws: ImageDraws, geometry: drawing.Geometry,
                 difficulty: float) -> Tuple[np.ndarray, np.ndarray]:
  """Yaw and pitch: bulges that shift the face's middle more than its rim.

  Args:
    face: identity parameters per image, float32 (m,) each.
    pose: the images' `_Pose`.
    draws: the images' random numbers.
    geometry: the image geometry.
    difficulty: nuisance scale.

  Returns:
    The horizontal shift of each column (m, W) and the vertical shift of
    each row (m, H), pixels.
  """
  g = geometry
  d = np.float32(difficulty)
  s = np.float32(g.scale)
  xs, ys = pixel_coords(g.height, g.width)
  face_w = face['face_half_width'] * s * pose.scale
  face_h = 0.5 * (face['face_top'] + face['face_chin']) * s * pose.scale
  yaw_shift = per_image(pose.yaw * face_w) * np.maximum(
      0, 1 - ((xs - per_image(pose.moved_x)) / per_image(face_w)) ** 2)
  pitch = _MAX_PITCH * d * draws.symmetric('pitch')
  pitch_shift = per_image(pitch * face_h) * np.maximum(
      0, 1 - ((ys - per_image(pose.moved_y)) / per_image(face_h)) ** 2)
  return yaw_shift, pitch_shift


@dataclasses.dataclass(frozen=True)
class _Expression:
  """Local warps around the (posed) mouth and eyes, separable in x and y.

  The displacement of output pixel (x, y) is `mouth_gy * mouth_width`
  horizontally and `mouth_gy * smile + mouth_hy * mouth_open + eye_hy *
  eye_squeeze` vertically: functions of y (m, H) times functions of x (m, W).
  """
  mouth_gy: np.ndarray
  mouth_hy: np.ndarray
  eye_hy: np.ndarray
  mouth_width: np.ndarray
  smile: np.ndarray
  mouth_open: np.ndarray
  eye_squeeze: np.ndarray


def draw_expression(face: Dict[str, np.ndarray], pose: _Pose,
                     draws: ImageDraws, geometry: drawing.Geometry,
                     difficulty: float) -> _Expression:
  """Random mouth widening, opening and smile, and eye narrowing."""
  g = geometry
  d = np.float32(difficulty)
  s = np.float32(g.scale)
  xs, ys = pixel_coords(g.height, g.width)
  mouth_x, mouth_y = pose.posed(g.to_output_x(np.float32(48.0)),
                                g.to_output_y(face['mouth_y']))
  mouth_sigma_x = per_image(face['mouth_half_width'] * s)
  mouth_gx = _gaussian(xs, per_image(mouth_x), mouth_sigma_x)
  mouth_gy = _gaussian(ys, per_image(mouth_y), 7.0 * s)
  mouth_hy = (ys - per_image(mouth_y)) * mouth_gy
  eye_gx = 0
  for side in (-1.0, 1.0):
    eye_x, eye_y = pose.posed(
        g.to_output_x(48.0 + side * face['eye_spacing'] / 2),
        g.to_output_y(face['eye_y']))
    eye_gx = eye_gx + _gaussian(
        xs, per_image(eye_x), per_image(1.3 * face['eye_half_width'] * s))
  # The vertical profile is centred on the second (side +1) eye's posed y,
  # which a rotation moves a little away from the other eye's.
  eye_sigma_y = per_image(2.5 * face['eye_half_height'] * s + 1)
  eye_hy = (ys - per_image(eye_y)) * _gaussian(ys, per_image(eye_y),
                                                eye_sigma_y)
  mouth_width = -_MAX_MOUTH_WIDTH * d * per_image(
      draws.symmetric('mouth_width')) * (xs - per_image(mouth_x)) * mouth_gx
  smile = _MAX_SMILE * s * d * per_image(draws.symmetric('smile')) * (
      (xs - per_image(mouth_x)) / mouth_sigma_x) ** 2 * mouth_gx
  mouth_open = -_MAX_MOUTH_OPEN * d * per_image(
      draws.uniform('mouth_open')) * (mouth_gx)
  eye_squeeze = _MAX_EYE_SQUEEZE * d * per_image(
      draws.symmetric('eye_squeeze')) * (eye_gx)
  return _Expression(mouth_gy=mouth_gy, mouth_hy=mouth_hy, eye_hy=eye_hy,
                     mouth_width=mouth_width, smile=smile,
                     mouth_open=mouth_open, eye_squeeze=eye_squeeze)


def canvas_pixels(pose: _Pose, yaw_shift: np.ndarray,
                   pitch_shift: np.ndarray, expression: _Expression,
                   canvas_index: np.ndarray,
                   geometry: drawing.Geometry) -> np.ndarray:
  """The canvas pixel each output pixel samples, after all the warps.

  Args:
    pose: the images' `_Pose`.
    yaw_shift: (m, W) from `pose_bulges`.
    pitch_shift: (m, H) from `pose_bulges`.
    expression: the images' `_Expression`.
    canvas_index: int (m,) canvas of each image.
    geometry: the image geometry.

  Returns:
    int32 (m, H, W) indices into the flattened canvases.
  """
  g = geometry
  m, width = len(canvas_index), g.width
  xs, ys = pixel_coords(g.height, g.width)
  e = expression
  # Sampling position q = A (p + displacement) + t0, with every term a
  # product of a function of y and a function of x: one batched matmul.
  left = np.stack([np.ones_like(e.mouth_gy), ys + pitch_shift, e.mouth_gy,
                   e.mouth_hy, e.eye_hy], axis=2)  # (m, H, 5)
  x_warped = xs + yaw_shift
  a00, a01, a10, a11 = (per_image(a)
                        for a in (pose.a00, pose.a01, pose.a10, pose.a11))
  right_u = np.stack([
      a00 * x_warped + per_image(pose.t0x), np.broadcast_to(a01, (m, width)),
      a00 * e.mouth_width + a01 * e.smile, a01 * e.mouth_open,
      a01 * e.eye_squeeze], axis=1)
  right_v = np.stack([
      a10 * x_warped + per_image(pose.t0y), np.broadcast_to(a11, (m, width)),
      a10 * e.mouth_width + a11 * e.smile, a11 * e.mouth_open,
      a11 * e.eye_squeeze], axis=1)
  coords = left @ np.concatenate([right_u, right_v], axis=2)  # (m, H, 2W)
  canvas_height, canvas_width = g.canvas_shape
  # Outside the canvas, the nearest border pixel (the border is background,
  # or neck and hair continuing beyond the canvas).
  for half, size in ((slice(0, width), canvas_width),
                     (slice(width, None), canvas_height)):
    np.clip(coords[..., half], 0, size - 0.5, out=coords[..., half])
  pixel = coords.astype(np.int32)
  flat = pixel[..., width:] * canvas_width
  flat += pixel[..., :width]
  flat += (canvas_index.astype(np.int32) * (canvas_height * canvas_width)
           )[:, None, None]
  return flat

