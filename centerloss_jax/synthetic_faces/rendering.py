"""Images of the synthetic identities: their faces under nuisances.

An image of an identity (`render`) is its face under nuisance variation,
all scaled by `difficulty` (0: every image of an identity is the same):

* pose-like warps: a random similarity (rotation, scale, shift), a
  horizontal squeeze and a bulge toward one side that mimic yaw, and a
  vertical bulge that mimics pitch;
* expression: local warps that widen the mouth, open or curve it (a smile)
  and narrow the eyes;
* illumination: a directional gain gradient, a global gain, a colour cast
  and a gamma-like tone curve;
* a random background colour behind the head;
* an occluding rectangle of random colour and size, with some probability;
* sensor noise.

Image `j` of identity `i` draws its nuisances from a counter-based hash of
`(seed, i, j)` (`image_uniforms`), so it is the same whatever other images
are rendered with it.

Speed. Each identity's canvas is drawn once per `render` call
(`identities.draw_faces`). Every image is then one nearest-neighbour gather
from that canvas (the warps of all images computed as one batched matrix
product of separable terms) followed by a dozen elementwise operations on
channel-planar chunks, in threads. Measured on this project's shared 2-core
CPU (another job using most of it), single-threaded: 2,000 identities x 20
images at 56x48 in 4.1-5.2 s (8,000-10,000 images/s), 1,600-1,800 images/s
at 112x96.

Difficulty. Raw-pixel cosine similarity ((x - 127.5) / 128, 10-fold
best-threshold verification on 3,000 + 3,000 pairs of 400 held-out
identities, 56x48) reaches 79% at difficulty 0.5, 64% at 1.0 and 58% at 1.5
(and 100% at 0): pixels alone are poor, so a learned model has room.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from centerloss_jax import face_data
from centerloss_jax.synthetic_faces import identities

DEFAULT_IMAGE_SHAPE = (56, 48, 3)

# Salts of the noise bank's and the images' random streams (see
# `identities._IDENTITY_STREAM`).
_NOISE_STREAM = 1
_IMAGE_STREAM = 0x5EED

_NOISE_BANK_SIZE = 256

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
_MAX_LIGHT_GRADIENT = 0.8  # Gain difference across the image.
_MAX_LOG_GAIN = 0.35
_MAX_LOG_COLOUR_CAST = 0.12
_MAX_TONE_CURVE = 0.7  # Of x + k x (1 - x), a gamma-like curve.
_MAX_NOISE_STD = 10.0  # In 0..255 units.
_OCCLUSION_PROBABILITY = 0.3  # Capped at 0.6 for high difficulty.

# The per-image random numbers, two uniforms each (a symmetric one is their
# sum minus 1, triangular on [-1, 1]).
_IMAGE_VARIABLES = (
    'rotation', 'scale', 'shift_x', 'shift_y', 'yaw', 'pitch', 'mouth_width',
    'mouth_open', 'smile', 'eye_squeeze', 'light_angle', 'light_gradient',
    'gain', 'cast_r', 'cast_g', 'cast_b', 'tone', 'noise', 'noise_pattern',
    'background_level', 'background_r', 'background_g', 'background_b',
    'occlusion',
    'occluder_x', 'occluder_y', 'occluder_width', 'occluder_height',
    'occluder_r', 'occluder_g', 'occluder_b')
_IMAGE_COLUMN = {name: 2 * k for k, name in enumerate(_IMAGE_VARIABLES)}

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijective scramble of uint64 values."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def image_uniforms(seed: int, identity_ids: np.ndarray, image_ids: np.ndarray,
                   count: int) -> np.ndarray:
  """Uniforms in [0, 1) that depend only on `(seed, identity, image, k)`.

  A counter-based generator (SplitMix64 applied to a key hashed from the
  three numbers), so that any set of images is drawn at once, vectorised,
  and each image's randomness is its own.

  Args:
    seed: non-negative seed.
    identity_ids: int (M,) identity numbers.
    image_ids: int (M,) image numbers.
    count: uniforms per image.

  Returns:
    float64 (M, count).
  """
  with np.errstate(over='ignore'):
    ids = np.asarray(identity_ids, np.int64).reshape(-1).astype(np.uint64)
    jds = np.asarray(image_ids, np.int64).reshape(-1).astype(np.uint64)
    key = _mix64(np.full(ids.shape, seed, np.uint64) * _GOLDEN_GAMMA
                 + np.uint64(_IMAGE_STREAM))
    key = _mix64(key ^ ids)
    key = _mix64((key + jds) * _GOLDEN_GAMMA)
    counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN_GAMMA
    bits = _mix64(key[:, None] + counters[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _occurrence_index(identity_ids: np.ndarray) -> np.ndarray:
  """0, 1, 2, ... over the successive occurrences of each identity."""
  order = np.argsort(identity_ids, kind='stable')
  sorted_ids = identity_ids[order]
  starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
  run_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_ids)]))
  index = np.empty(len(identity_ids), np.int64)
  index[order] = np.arange(len(identity_ids)) - run_start
  return index


def _gaussian(t: np.ndarray, center: np.ndarray, sigma: np.ndarray):
  """The unnormalised Gaussian bump `exp(-(t - center)^2 / (2 sigma^2))`."""
  return np.exp(-0.5 * ((t - center) / sigma) ** 2)


# ---------------------------------------------------------------------------
# One chunk of images, nuisance by nuisance.
# ---------------------------------------------------------------------------


class _ImageDraws:
  """The random numbers of a chunk of images, by `_IMAGE_VARIABLES` name."""

  def __init__(self, uniforms: np.ndarray):
    """Wraps (m, 2 * len(_IMAGE_VARIABLES)) uniforms from `image_uniforms`."""
    self._uniforms = uniforms

  def uniform(self, name: str) -> np.ndarray:
    """float32 (m,) uniform on [0, 1)."""
    return self._uniforms[:, _IMAGE_COLUMN[name]].astype(np.float32)

  def symmetric(self, name: str) -> np.ndarray:
    """float32 (m,) triangular on [-1, 1]: the two uniforms' sum minus 1."""
    column = _IMAGE_COLUMN[name]
    return (self._uniforms[:, column] + self._uniforms[:, column + 1]
            - 1).astype(np.float32)


def _per_image(a) -> np.ndarray:
  """(m,) -> float32 (m, 1), to broadcast along x or y."""
  return np.asarray(a, np.float32)[:, None]


def _pixel_coords(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """float32 x of the image columns (1, W) and y of its rows (1, H)."""
  return (np.arange(width, dtype=np.float32)[None, :],
          np.arange(height, dtype=np.float32)[None, :])


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


def _draw_pose(face: Dict[str, np.ndarray], draws: _ImageDraws,
               geometry: identities.Geometry, difficulty: float) -> _Pose:
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


def _pose_bulges(face: Dict[str, np.ndarray], pose: _Pose,
                 draws: _ImageDraws, geometry: identities.Geometry,
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
  xs, ys = _pixel_coords(g.height, g.width)
  face_w = face['face_half_width'] * s * pose.scale
  face_h = 0.5 * (face['face_top'] + face['face_chin']) * s * pose.scale
  yaw_shift = _per_image(pose.yaw * face_w) * np.maximum(
      0, 1 - ((xs - _per_image(pose.moved_x)) / _per_image(face_w)) ** 2)
  pitch = _MAX_PITCH * d * draws.symmetric('pitch')
  pitch_shift = _per_image(pitch * face_h) * np.maximum(
      0, 1 - ((ys - _per_image(pose.moved_y)) / _per_image(face_h)) ** 2)
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


def _draw_expression(face: Dict[str, np.ndarray], pose: _Pose,
                     draws: _ImageDraws, geometry: identities.Geometry,
                     difficulty: float) -> _Expression:
  """Random mouth widening, opening and smile, and eye narrowing."""
  g = geometry
  d = np.float32(difficulty)
  s = np.float32(g.scale)
  xs, ys = _pixel_coords(g.height, g.width)
  mouth_x, mouth_y = pose.posed(g.to_output_x(np.float32(48.0)),
                                g.to_output_y(face['mouth_y']))
  mouth_sigma_x = _per_image(face['mouth_half_width'] * s)
  mouth_gx = _gaussian(xs, _per_image(mouth_x), mouth_sigma_x)
  mouth_gy = _gaussian(ys, _per_image(mouth_y), 7.0 * s)
  mouth_hy = (ys - _per_image(mouth_y)) * mouth_gy
  eye_gx = 0
  for side in (-1.0, 1.0):
    eye_x, eye_y = pose.posed(
        g.to_output_x(48.0 + side * face['eye_spacing'] / 2),
        g.to_output_y(face['eye_y']))
    eye_gx = eye_gx + _gaussian(
        xs, _per_image(eye_x), _per_image(1.3 * face['eye_half_width'] * s))
  # The vertical profile is centred on the second (side +1) eye's posed y,
  # which a rotation moves a little away from the other eye's.
  eye_sigma_y = _per_image(2.5 * face['eye_half_height'] * s + 1)
  eye_hy = (ys - _per_image(eye_y)) * _gaussian(ys, _per_image(eye_y),
                                                eye_sigma_y)
  mouth_width = -_MAX_MOUTH_WIDTH * d * _per_image(
      draws.symmetric('mouth_width')) * (xs - _per_image(mouth_x)) * mouth_gx
  smile = _MAX_SMILE * s * d * _per_image(draws.symmetric('smile')) * (
      (xs - _per_image(mouth_x)) / mouth_sigma_x) ** 2 * mouth_gx
  mouth_open = -_MAX_MOUTH_OPEN * d * _per_image(
      draws.uniform('mouth_open')) * (mouth_gx)
  eye_squeeze = _MAX_EYE_SQUEEZE * d * _per_image(
      draws.symmetric('eye_squeeze')) * (eye_gx)
  return _Expression(mouth_gy=mouth_gy, mouth_hy=mouth_hy, eye_hy=eye_hy,
                     mouth_width=mouth_width, smile=smile,
                     mouth_open=mouth_open, eye_squeeze=eye_squeeze)


def _canvas_pixels(pose: _Pose, yaw_shift: np.ndarray,
                   pitch_shift: np.ndarray, expression: _Expression,
                   canvas_index: np.ndarray,
                   geometry: identities.Geometry) -> np.ndarray:
  """The canvas pixel each output pixel samples, after all the warps.

  Args:
    pose: the images' `_Pose`.
    yaw_shift: (m, W) from `_pose_bulges`.
    pitch_shift: (m, H) from `_pose_bulges`.
    expression: the images' `_Expression`.
    canvas_index: int (m,) canvas of each image.
    geometry: the image geometry.

  Returns:
    int32 (m, H, W) indices into the flattened canvases.
  """
  g = geometry
  m, width = len(canvas_index), g.width
  xs, ys = _pixel_coords(g.height, g.width)
  e = expression
  # Sampling position q = A (p + displacement) + t0, with every term a
  # product of a function of y and a function of x: one batched matmul.
  left = np.stack([np.ones_like(e.mouth_gy), ys + pitch_shift, e.mouth_gy,
                   e.mouth_hy, e.eye_hy], axis=2)  # (m, H, 5)
  x_warped = xs + yaw_shift
  a00, a01, a10, a11 = (_per_image(a)
                        for a in (pose.a00, pose.a01, pose.a10, pose.a11))
  right_u = np.stack([
      a00 * x_warped + _per_image(pose.t0x), np.broadcast_to(a01, (m, width)),
      a00 * e.mouth_width + a01 * e.smile, a01 * e.mouth_open,
      a01 * e.eye_squeeze], axis=1)
  right_v = np.stack([
      a10 * x_warped + _per_image(pose.t0y), np.broadcast_to(a11, (m, width)),
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


def _colour_cast(draws: _ImageDraws, difficulty: float) -> np.ndarray:
  """float32 (m, 3) per-channel gains, like a white-balance error."""
  d = np.float32(difficulty)
  return np.exp(_MAX_LOG_COLOUR_CAST * d * np.stack(
      [draws.symmetric('cast_r'), draws.symmetric('cast_g'),
       draws.symmetric('cast_b')], axis=1))


def _add_background(image: np.ndarray, transparency: np.ndarray,
                    cast: np.ndarray, draws: _ImageDraws,
                    difficulty: float) -> None:
  """Fills the transparent canvas with a muted colour, in place.

  Args:
    image: float32 (m, 3, H, W) premultiplied face, modified in place.
    transparency: float32 (m, 1, H, W), 255 * (1 - alpha).
    cast: (m, 3) from `_colour_cast`, applied to the background too.
    draws: the images' random numbers.
    difficulty: nuisance scale.
  """
  # Muted colours: a grey level plus a smaller random tint.
  tint = np.stack([draws.symmetric('background_r'),
                   draws.symmetric('background_g'),
                   draws.symmetric('background_b')], axis=1)
  background = 128 + min(float(difficulty), 1.0) * (
      170 * (draws.uniform('background_level')[:, None] - 0.5) + 60 * tint)
  image += transparency * (background * cast / 255)[:, :, None, None]


def _add_occluder(image: np.ndarray, cast: np.ndarray, draws: _ImageDraws,
                  difficulty: float) -> None:
  """A rectangle of random colour over part of some faces, in place.

  Args:
    image: float32 (m, 3, H, W), modified in place.
    cast: (m, 3) from `_colour_cast`, applied to the occluder too.
    draws: the images' random numbers.
    difficulty: nuisance scale (also raises the occlusion probability).
  """
  height, width = image.shape[2:]
  probability = min(_OCCLUSION_PROBABILITY * float(difficulty), 0.6)
  occluded = np.flatnonzero(draws.uniform('occlusion') < probability)
  half_w = (0.1 + 0.2 * draws.uniform('occluder_width')) * width
  half_h = (0.08 + 0.15 * draws.uniform('occluder_height')) * height
  occ_x = (0.1 + 0.8 * draws.uniform('occluder_x')) * width
  occ_y = (0.25 + 0.7 * draws.uniform('occluder_y')) * height
  occ_top = np.maximum(0, np.rint(occ_y - half_h)).astype(int)
  occ_bottom = np.rint(occ_y + half_h).astype(int) + 1
  occ_left = np.maximum(0, np.rint(occ_x - half_w)).astype(int)
  occ_right = np.rint(occ_x + half_w).astype(int) + 1
  colour = 255 * np.stack([draws.uniform('occluder_r'),
                           draws.uniform('occluder_g'),
                           draws.uniform('occluder_b')], axis=1) * cast
  for k in occluded:
    image[k, :, occ_top[k]:occ_bottom[k],
          occ_left[k]:occ_right[k]] = colour[k, :, None, None]


def _apply_illumination(image: np.ndarray, draws: _ImageDraws,
                        difficulty: float) -> None:
  """A directional gain gradient times a global gain, in place, then <= 255.

  Args:
    image: float32 (m, 3, H, W) >= 0, modified in place.
    draws: the images' random numbers.
    difficulty: nuisance scale.
  """
  d = np.float32(difficulty)
  height, width = image.shape[2:]
  xs, ys = _pixel_coords(height, width)
  light_angle = 2 * np.pi * draws.uniform('light_angle')
  gradient = np.minimum(
      _MAX_LIGHT_GRADIENT * d * draws.uniform('light_gradient'), 0.9)
  gain = np.exp(_MAX_LOG_GAIN * d * draws.symmetric('gain'))
  gain_x = _per_image(gain * gradient * np.cos(light_angle)) * (
      xs - width / 2) / width + _per_image(gain)
  gain_y = _per_image(gain * gradient * np.sin(light_angle)) * (
      ys - height / 2) / height
  image *= (gain_y[:, :, None] + gain_x[:, None, :])[:, None]
  np.minimum(image, 255, out=image)  # Everything above is >= 0.


def _apply_tone_curve(image: np.ndarray, draws: _ImageDraws,
                      difficulty: float) -> None:
  """A random gamma-like tone curve, in place, on values in [0, 255].

  Tone curve x (1 + k - k x) on [0, 1]: gamma-like, monotonic for
  |k| <= 1, keeps black and white.

  Args:
    image: float32 (m, 3, H, W) in [0, 255], modified in place.
    draws: the images' random numbers.
    difficulty: nuisance scale.
  """
  d = np.float32(difficulty)
  tone = np.clip(_MAX_TONE_CURVE * d * draws.symmetric('tone'), -0.9, 0.9)
  curve = image * (-tone / 255)[:, None, None, None]
  curve += (1 + tone)[:, None, None, None]
  image *= curve


def _add_sensor_noise(image: np.ndarray, noise_bank: np.ndarray,
                      draws: _ImageDraws, difficulty: float) -> None:
  """A noise pattern from the bank with a random sign and strength, in place.

  Also adds 0.5, so that the conversion to uint8 rounds.

  Args:
    image: float32 (m, 3, H, W), modified in place.
    noise_bank: float32 (B, 3, H, W) standard normal noise patterns.
    draws: the images' random numbers.
    difficulty: nuisance scale.
  """
  d = np.float32(difficulty)
  pattern = np.minimum(
      (draws.uniform('noise_pattern') * 2 * len(noise_bank)).astype(np.int64),
      2 * len(noise_bank) - 1)
  sigma = _MAX_NOISE_STD * d * draws.uniform('noise') * np.where(
      pattern % 2, -1, 1).astype(np.float32)
  noise = noise_bank[pattern // 2]  # A copy: scaled in place below.
  noise *= sigma[:, None, None, None]
  noise += 0.5  # Rounds in the conversion to uint8 below.
  image += noise


def _render_images(canvases: np.ndarray, canvas_index: np.ndarray,
                   face: Dict[str, np.ndarray], uniforms: np.ndarray,
                   geometry: identities.Geometry, noise_bank: np.ndarray,
                   difficulty: float) -> np.ndarray:
  """Renders m images from the flattened canvases of their identities.

  Args:
    canvases: uint32 flattened (n * canvas_height * canvas_width,) canvases.
    canvas_index: int (m,) canvas of each image.
    face: identity parameters per image, float32 (m,) each.
    uniforms: (m, 2 * len(_IMAGE_VARIABLES)) from `image_uniforms`.
    geometry: the image geometry.
    noise_bank: float32 (B, 3, H, W) standard normal noise patterns.
    difficulty: nuisance scale.

  Returns:
    uint8 (m, H, W, 3).
  """
  draws = _ImageDraws(uniforms)
  m, height, width = len(canvas_index), geometry.height, geometry.width

  # Geometry: the pose and expression warps give each output pixel the
  # canvas pixel it shows.
  pose = _draw_pose(face, draws, geometry, difficulty)
  yaw_shift, pitch_shift = _pose_bulges(face, pose, draws, geometry,
                                        difficulty)
  expression = _draw_expression(face, pose, draws, geometry, difficulty)
  flat = _canvas_pixels(pose, yaw_shift, pitch_shift, expression,
                        canvas_index, geometry)
  rgba = canvases[flat].view(np.uint8).reshape(m, height, width, 4)

  # From here on channel-planar (m, C, H, W): numpy's inner loops then run
  # over whole image planes, not over 3 interleaved channels (~5x faster).
  planes = rgba.transpose(0, 3, 1, 2).astype(np.float32, order='C')
  image, transparency = planes[:, :3], planes[:, 3:]

  # Colour cast (on everything, like a white-balance error), then the
  # background where the canvas is transparent (it is premultiplied).
  cast = _colour_cast(draws, difficulty)
  image *= cast[:, :, None, None]
  _add_background(image, transparency, cast, draws, difficulty)
  _add_occluder(image, cast, draws, difficulty)
  _apply_illumination(image, draws, difficulty)
  _apply_tone_curve(image, draws, difficulty)
  _add_sensor_noise(image, noise_bank, draws, difficulty)
  np.clip(image, 0, 255, out=image)
  out = np.empty((m, height, width, 3), np.uint8)
  for channel in range(3):
    out[..., channel] = image[:, channel]
  return out


def _noise_bank(seed: int, height: int, width: int) -> np.ndarray:
  """Standard normal noise patterns (B, 3, H, W), a function of the seed."""
  rng = np.random.default_rng((seed, _NOISE_STREAM))
  return rng.standard_normal((_NOISE_BANK_SIZE, 3, height, width),
                             dtype=np.float32)


def _rows_of(params: identities.FaceParams,
             identity_ids: np.ndarray) -> np.ndarray:
  """The row of `params` that holds each identity, or a ValueError."""
  lookup = {int(identity): row
            for row, identity in enumerate(params.identity_ids)}
  try:
    return np.array([lookup[int(i)] for i in identity_ids], np.int64)
  except KeyError as error:
    raise ValueError(
        f'Identity {error.args[0]} is not in params, which holds '
        f'{len(params)} identities') from error


def render(params: identities.FaceParams, identity_ids: Sequence[int], *,
           image_ids: Optional[Sequence[int]] = None,
           image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE, seed: int,
           difficulty: float = 1.0, images_per_chunk: int = 128,
           num_threads: Optional[int] = None) -> np.ndarray:
  """Renders images of the given identities (see the module doc).

  Image `j` of identity `i` is a function of `(seed, i, j)`, the image
  shape and the difficulty only: not of the other images rendered, nor of
  the other identities in `params`.

  Args:
    params: the identities' faces, from `make_identities`; must hold every
      identity of `identity_ids`.
    identity_ids: int (M,) identity of each image.
    image_ids: int (M,) number j of each image within its identity; None
      numbers the occurrences of each identity 0, 1, 2, ... in order.
    image_shape: (H, W, C), C = 3 (RGB) or 1 (grey).
    seed: non-negative seed (the same as for `make_identities`, or not).
    difficulty: scale of all nuisances, >= 0 (0: every image of an identity
      is identical).
    images_per_chunk: images rendered at once (memory vs overhead).
    num_threads: threads rendering groups of identities in parallel; None
      for up to 8, one per CPU. The images do not depend on it.

  Returns:
    uint8 (M, H, W, C).

  Raises:
    ValueError: an identity missing from `params`, mismatched id arrays, a
      bad image shape, a negative seed or difficulty.
  """
  height, width, channels = face_data.check_image_shape(image_shape)
  if seed < 0 or difficulty < 0:
    raise ValueError(f'seed and difficulty must be non-negative, got '
                     f'seed={seed}, difficulty={difficulty}.')
  identity_ids = np.asarray(identity_ids, np.int64).reshape(-1)
  image_ids = (_occurrence_index(identity_ids) if image_ids is None else
               np.asarray(image_ids, np.int64).reshape(-1))
  if image_ids.shape != identity_ids.shape or (image_ids < 0).any():
    raise ValueError(
        f'image_ids must be non-negative with the shape of identity_ids '
        f'{identity_ids.shape}, got {image_ids.shape}.')
  rows = _rows_of(params, identity_ids)

  geometry = identities.Geometry.for_shape((height, width))
  out = np.empty((len(identity_ids), height, width, 3), np.uint8)
  uniforms = image_uniforms(seed, identity_ids, image_ids,
                            2 * len(_IMAGE_VARIABLES))
  noise_bank = _noise_bank(seed, height, width)
  canvas_pixels = geometry.canvas_shape[0] * geometry.canvas_shape[1]
  identities_per_chunk = max(4, 250_000 // canvas_pixels)
  face_names = ('face_x', 'face_y', 'face_half_width', 'face_top',
                'face_chin', 'mouth_y', 'mouth_half_width', 'eye_y',
                'eye_spacing', 'eye_half_width', 'eye_half_height')

  # Draw each identity's canvas once, then all of its images from it.
  order = np.argsort(rows, kind='stable')
  unique_rows, first = np.unique(rows[order], return_index=True)
  bounds = np.r_[first, len(order)]

  def render_group(start: int) -> None:
    stop = min(start + identities_per_chunk, len(unique_rows))
    canvases = identities.draw_faces(
        params.take(unique_rows[start:stop]), geometry).reshape(-1)
    images = order[bounds[start]:bounds[stop]]
    local = np.searchsorted(unique_rows[start:stop], rows[images])
    for begin in range(0, len(images), images_per_chunk):
      chunk = images[begin:begin + images_per_chunk]
      face = {name: params.values[name][rows[chunk]] for name in face_names}
      out[chunk] = _render_images(
          canvases, local[begin:begin + images_per_chunk], face,
          uniforms[chunk], geometry, noise_bank, difficulty)

  # Groups write disjoint images, and numpy releases the GIL in its loops,
  # so threads scale with cores; the result does not depend on them.
  starts = range(0, len(unique_rows), identities_per_chunk)
  if num_threads is None:
    num_threads = min(8, os.cpu_count() or 1)
  if num_threads <= 1 or len(starts) <= 1:
    for start in starts:
      render_group(start)
  else:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(render_group, starts))
  if channels == 1:
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None]
  return out
