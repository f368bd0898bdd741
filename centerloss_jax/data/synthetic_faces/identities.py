"""The identities of the synthetic set: their parameters.

Each identity is a latent face drawn from its own parameters
(`make_identities`): face oval, jaw, skin tone and a low-frequency skin
texture, hair colour, volume and hairline, ears, eyes (spacing, size, tilt,
iris colour), brows, nose, mouth, and for some identities a beard, a
moustache or glasses. The geometry is laid out around the 5-point alignment
template (`alignment.TEMPLATE_112x96`), so a clean image looks like an
aligned face crop.

`drawing.draw_faces` paints each identity's face once on a canvas, and
`rendering.render` samples every image of the identity from it.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np


# Salt of the identities' random streams; the other streams drawn from the
# same seed use other salts (`render`: 1 and 0x5EED, `dataset`: 2).
_IDENTITY_STREAM = 0

TEXTURE_GRID = (6, 5)  # Rows x columns of the low-frequency skin texture.

# Identity parameters drawn uniformly in [low, high], in template units
# (pixels of a 112x96 crop; eyes at y ~ 51.6, nose 71.7, mouth 92.3). The
# last four, and 'bald', are uniforms that `make_identities` turns into the
# presence (and density) of optional features.
_UNIFORM_PARAMETERS = (
    ('face_x', 46.5, 49.5),
    ('face_y', 59.0, 65.0),
    ('face_half_width', 38.0, 45.0),
    ('face_top', 50.0, 62.0),
    ('face_chin', 44.0, 54.0),
    ('jaw_taper', 0.12, 0.45),
    ('skin_tone', 0.0, 1.0),
    ('skin_warmth', -1.0, 1.0),
    ('skin_shading', 0.15, 0.4),
    ('hair_kind', 0.0, 1.0),
    ('hair_shade', 0.8, 1.2),
    ('hair_volume', 2.0, 12.0),
    ('hairline', 8.0, 26.0),
    ('hairline_curve', 0.0, 16.0),
    ('hair_parting', -7.0, 7.0),
    ('side_hair_length', 30.0, 100.0),
    ('side_hair_width', 2.0, 12.0),
    ('bald', 0.0, 1.0),
    ('ear_size', 7.0, 11.0),
    ('eye_y', 48.5, 55.0),
    ('eye_spacing', 31.0, 40.0),
    ('eye_half_width', 5.0, 7.5),
    ('eye_half_height', 1.9, 3.3),
    ('eye_tilt', -1.2, 1.2),
    ('iris_kind', 0.0, 1.0),
    ('iris_scale', 0.9, 1.25),
    ('brow_gap', 7.0, 12.0),
    ('brow_thickness', 1.2, 3.0),
    ('brow_arch', 0.0, 3.5),
    ('brow_tilt', -2.5, 2.5),
    ('brow_half_length', 6.5, 10.0),
    ('nose_y', 67.0, 76.0),
    ('nose_half_width', 5.0, 8.5),
    ('mouth_y', 87.0, 96.0),
    ('mouth_half_width', 11.0, 17.0),
    ('lip_thickness', 1.6, 4.0),
    ('mouth_curve', -1.5, 2.0),
    ('lip_redness', 0.0, 1.0),
    ('beard', 0.0, 1.0),
    ('moustache', 0.0, 1.0),
    ('glasses', 0.0, 1.0),
    ('frame_shade', 0.0, 1.0),
)
_NUM_UNIFORMS = len(_UNIFORM_PARAMETERS)

# Probabilities of the optional features.
_BALD_PROBABILITY = 0.08
_BEARD_PROBABILITY = 0.18
_MOUSTACHE_PROBABILITY = 0.15
_GLASSES_PROBABILITY = 0.12

# Palettes (RGB in [0, 1]) with cumulative probabilities for the `*_kind`
# parameters.
_HAIR_COLOURS = np.array([
    [0.07, 0.06, 0.06], [0.20, 0.13, 0.08], [0.40, 0.26, 0.15],
    [0.55, 0.26, 0.12], [0.82, 0.68, 0.42], [0.62, 0.61, 0.60]], np.float32)
_HAIR_CUMULATIVE = np.cumsum([0.35, 0.25, 0.15, 0.07, 0.10, 0.08])
_IRIS_COLOURS = np.array([
    [0.18, 0.10, 0.05], [0.35, 0.22, 0.10], [0.42, 0.36, 0.18],
    [0.25, 0.42, 0.28], [0.30, 0.45, 0.65], [0.45, 0.50, 0.55]], np.float32)
_IRIS_CUMULATIVE = np.cumsum([0.40, 0.20, 0.12, 0.08, 0.14, 0.06])
_DARK_SKIN = np.array([0.33, 0.21, 0.14], np.float32)
_LIGHT_SKIN = np.array([0.97, 0.83, 0.73], np.float32)


# ---------------------------------------------------------------------------
# Identities.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FaceParams:
  """Parameters of a set of identities, one row per identity.

  Attributes:
    identity_ids: int64 (n,) the identity number of each row.
    values: name -> float32 (n,) parameter (see `_UNIFORM_PARAMETERS`, in
      template units; 'bald' and 'glasses' 0 or 1, 'beard' and 'moustache'
      a density, 0 for none), plus 'skin_rgb', 'hair_rgb', 'iris_rgb',
      'lip_rgb', 'frame_rgb' (n, 3) and 'texture' (n, 6, 5).
  """
  identity_ids: np.ndarray
  values: Dict[str, np.ndarray]

  def __len__(self) -> int:
    return int(self.identity_ids.shape[0])

  def take(self, rows: np.ndarray) -> FaceParams:
    """The identities at `rows`, as a new FaceParams."""
    return FaceParams(self.identity_ids[rows],
                      {k: v[rows] for k, v in self.values.items()})


def _palette(kind: np.ndarray, colours: np.ndarray,
             cumulative: np.ndarray) -> np.ndarray:
  """Colour of each row, `kind` in [0, 1) picking by cumulative weight."""
  index = np.minimum(np.searchsorted(cumulative, kind, side='right'),
                     len(colours) - 1)
  return colours[index]


def make_identities(num_identities: int, *, seed: int,
                    first_identity: int = 0) -> FaceParams:
  """Draws the faces of identities `first_identity, ..., + num_identities`.

  Args:
    num_identities: number of identities, >= 0.
    seed: non-negative seed; identity i's parameters depend only on
      `(seed, i)`.
    first_identity: number of the first identity, >= 0.

  Returns:
    Their `FaceParams`.

  Raises:
    ValueError: a negative count, seed or first identity.
  """
  if num_identities < 0 or seed < 0 or first_identity < 0:
    raise ValueError(
        'num_identities, seed and first_identity must be non-negative, got '
        f'{num_identities}, {seed}, {first_identity}.')
  ids = np.arange(first_identity, first_identity + num_identities,
                  dtype=np.int64)
  texture_size = TEXTURE_GRID[0] * TEXTURE_GRID[1]
  uniforms = np.empty((num_identities, _NUM_UNIFORMS + 4), np.float64)
  texture = np.empty((num_identities, texture_size), np.float64)
  for row, identity in enumerate(ids):
    # One generator per identity: its face does not depend on the others.
    rng = np.random.default_rng((seed, _IDENTITY_STREAM, int(identity)))
    uniforms[row] = rng.random(_NUM_UNIFORMS + 4)
    texture[row] = rng.standard_normal(texture_size)

  values = {}
  for column, (name, low, high) in enumerate(_UNIFORM_PARAMETERS):
    values[name] = (low + (high - low) * uniforms[:, column]).astype(
        np.float32)
  extra = uniforms[:, _NUM_UNIFORMS:].astype(np.float32)
  # Optional features: a density where present, 0 where absent.
  values['bald'] = (values['bald'] < _BALD_PROBABILITY).astype(np.float32)
  values['beard'] = np.where(values['beard'] < _BEARD_PROBABILITY,
                             0.55 + 0.4 * extra[:, 0], 0).astype(np.float32)
  values['moustache'] = np.where(
      (values['moustache'] < _MOUSTACHE_PROBABILITY) | (values['beard'] > 0),
      0.55 + 0.4 * extra[:, 1], 0).astype(np.float32)
  values['glasses'] = (values['glasses'] < _GLASSES_PROBABILITY).astype(
      np.float32)

  tone = values['skin_tone'][:, None]
  skin = _DARK_SKIN + tone * (_LIGHT_SKIN - _DARK_SKIN)
  warmth = values['skin_warmth'][:, None] * np.array([0.04, 0.0, -0.05])
  values['skin_rgb'] = np.clip(skin + warmth, 0, 1).astype(np.float32)
  values['hair_rgb'] = np.clip(
      _palette(values['hair_kind'], _HAIR_COLOURS, _HAIR_CUMULATIVE)
      * values['hair_shade'][:, None], 0, 1).astype(np.float32)
  values['iris_rgb'] = _palette(values['iris_kind'], _IRIS_COLOURS,
                                _IRIS_CUMULATIVE).astype(np.float32)
  redness = values['lip_redness'][:, None]
  values['lip_rgb'] = (values['skin_rgb'] * (
      np.array([0.80, 0.55, 0.55]) + redness * np.array([0.1, -0.08, -0.05]))
                       ).astype(np.float32)
  shade = values['frame_shade'][:, None]
  values['frame_rgb'] = (0.05 + 0.5 * shade * extra[:, 2:3] * np.array(
      [1.0, 0.6, 0.3]) + 0.05 * extra[:, 3:4]).astype(np.float32)
  values['texture'] = texture.reshape(
      (num_identities,) + TEXTURE_GRID).astype(np.float32)
  return FaceParams(ids, values)
