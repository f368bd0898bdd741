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
(`drawing.draw_faces`). Every image is then one nearest-neighbour gather
from that canvas (the warps of all images computed as one batched matrix
product of separable terms) followed by a dozen elementwise operations on
channel-planar chunks, in threads. Single-threaded, one CPU core renders
about 8,000 images/s at 56x48 (2,000 identities x 20 images in about 5 s)
and about 1,700 images/s at 112x96.

Difficulty. Raw-pixel cosine similarity ((x - 127.5) / 128, 10-fold
best-threshold verification on 3,000 + 3,000 pairs of 400 held-out
identities, 56x48) reaches 79% at difficulty 0.5, 64% at 1.0 and 58% at 1.5
(and 100% at 0): pixels alone are poor, so a learned model has room.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Dict, Optional, Sequence

import numpy as np

from centerloss_jax.data.image_files import check_image_shape
from centerloss_jax.data.synthetic_faces import drawing
from centerloss_jax.data.synthetic_faces.draws import image_uniforms
from centerloss_jax.data.synthetic_faces.draws import IMAGE_VARIABLES
from centerloss_jax.data.synthetic_faces.draws import ImageDraws
from centerloss_jax.data.synthetic_faces.draws import per_image
from centerloss_jax.data.synthetic_faces.draws import pixel_coords
from centerloss_jax.data.synthetic_faces import identities
from centerloss_jax.data.synthetic_faces import warps

DEFAULT_IMAGE_SHAPE = (56, 48, 3)

# Salt of the noise bank's random stream (see `identities._IDENTITY_STREAM`).
_NOISE_STREAM = 1

_NOISE_BANK_SIZE = 256

# Photometric nuisance magnitudes at difficulty 1 (all scale linearly with
# difficulty; the geometric ones are in `warps`).
_MAX_LIGHT_GRADIENT = 0.8  # Gain difference across the image.
_MAX_LOG_GAIN = 0.35
_MAX_LOG_COLOUR_CAST = 0.12
_MAX_TONE_CURVE = 0.7  # Of x + k x (1 - x), a gamma-like curve.
_MAX_NOISE_STD = 10.0  # In 0..255 units.
_OCCLUSION_PROBABILITY = 0.3  # Capped at 0.6 for high difficulty.


def _occurrence_index(identity_ids: np.ndarray) -> np.ndarray:
  """0, 1, 2, ... over the successive occurrences of each identity."""
  order = np.argsort(identity_ids, kind='stable')
  sorted_ids = identity_ids[order]
  starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
  run_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_ids)]))
  index = np.empty(len(identity_ids), np.int64)
  index[order] = np.arange(len(identity_ids)) - run_start
  return index


# ---------------------------------------------------------------------------
# One chunk of images, nuisance by nuisance.
# ---------------------------------------------------------------------------


def _colour_cast(draws: ImageDraws, difficulty: float) -> np.ndarray:
  """float32 (m, 3) per-channel gains, like a white-balance error."""
  d = np.float32(difficulty)
  return np.exp(_MAX_LOG_COLOUR_CAST * d * np.stack(
      [draws.symmetric('cast_r'), draws.symmetric('cast_g'),
       draws.symmetric('cast_b')], axis=1))


def _add_background(image: np.ndarray, transparency: np.ndarray,
                    cast: np.ndarray, draws: ImageDraws,
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


def _add_occluder(image: np.ndarray, cast: np.ndarray, draws: ImageDraws,
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


def _apply_illumination(image: np.ndarray, draws: ImageDraws,
                        difficulty: float) -> None:
  """A directional gain gradient times a global gain, in place, then <= 255.

  Args:
    image: float32 (m, 3, H, W) >= 0, modified in place.
    draws: the images' random numbers.
    difficulty: nuisance scale.
  """
  d = np.float32(difficulty)
  height, width = image.shape[2:]
  xs, ys = pixel_coords(height, width)
  light_angle = 2 * np.pi * draws.uniform('light_angle')
  gradient = np.minimum(
      _MAX_LIGHT_GRADIENT * d * draws.uniform('light_gradient'), 0.9)
  gain = np.exp(_MAX_LOG_GAIN * d * draws.symmetric('gain'))
  gain_x = per_image(gain * gradient * np.cos(light_angle)) * (
      xs - width / 2) / width + per_image(gain)
  gain_y = per_image(gain * gradient * np.sin(light_angle)) * (
      ys - height / 2) / height
  image *= (gain_y[:, :, None] + gain_x[:, None, :])[:, None]
  np.minimum(image, 255, out=image)  # Everything above is >= 0.


def _apply_tone_curve(image: np.ndarray, draws: ImageDraws,
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
                      draws: ImageDraws, difficulty: float) -> None:
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
                   geometry: drawing.Geometry, noise_bank: np.ndarray,
                   difficulty: float) -> np.ndarray:
  """Renders m images from the flattened canvases of their identities.

  Args:
    canvases: uint32 flattened (n * canvas_height * canvas_width,) canvases.
    canvas_index: int (m,) canvas of each image.
    face: identity parameters per image, float32 (m,) each.
    uniforms: (m, 2 * len(IMAGE_VARIABLES)) from `image_uniforms`.
    geometry: the image geometry.
    noise_bank: float32 (B, 3, H, W) standard normal noise patterns.
    difficulty: nuisance scale.

  Returns:
    uint8 (m, H, W, 3).
  """
  draws = ImageDraws(uniforms)
  m, height, width = len(canvas_index), geometry.height, geometry.width

  # Geometry: the pose and expression warps give each output pixel the
  # canvas pixel it shows.
  pose = warps.draw_pose(face, draws, geometry, difficulty)
  yaw_shift, pitch_shift = warps.pose_bulges(face, pose, draws, geometry,
                                        difficulty)
  expression = warps.draw_expression(face, pose, draws, geometry, difficulty)
  flat = warps.canvas_pixels(pose, yaw_shift, pitch_shift, expression,
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
  height, width, channels = check_image_shape(image_shape)
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

  geometry = drawing.Geometry.for_shape((height, width))
  out = np.empty((len(identity_ids), height, width, 3), np.uint8)
  uniforms = image_uniforms(seed, identity_ids, image_ids,
                            2 * len(IMAGE_VARIABLES))
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
    canvases = drawing.draw_faces(
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
