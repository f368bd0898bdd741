"""An offline synthetic identity set: many faces, many images of each.

For tests and for the offline demo of the open-set protocol (train on some
identities, verify on disjoint ones), with no download. Each identity is a
latent face drawn from its own parameters (`make_identities`): face oval,
jaw, skin tone and a low-frequency skin texture, hair colour, volume and
hairline, ears, eyes (spacing, size, tilt, iris colour), brows, nose, mouth,
and for some identities a beard, a moustache or glasses. The geometry is
laid out around the 5-point alignment template (`alignment.TEMPLATE_112x96`),
so a clean image looks like an aligned face crop.

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

Determinism. Identity `i`'s parameters come from
`np.random.default_rng((seed, 0, i))` alone, and image `j` of identity `i`
from a counter-based hash of `(seed, i, j)`, so both are the same however
many identities or images are generated, and train, test and evaluation sets
drawn from disjoint ranges of identity (or image) numbers are disjoint and
reproducible.

Rendering. Each identity's face is drawn once per `render` call on a
canvas with a 20% border around the image (soft-edged shapes, so it is
anti-aliased), as premultiplied RGB plus transparency packed in uint32.
Every image is then one nearest-neighbour gather from that canvas (the warps
of all images computed as one batched matrix product of separable terms)
followed by a dozen elementwise operations on channel-planar chunks, in
threads. Measured on this project's shared 2-core CPU (another job using
most of it), single-threaded: 2,000 identities x 20 images at 56x48 in
4.1-5.2 s (8,000-10,000 images/s), 1,600-1,800 images/s at 112x96.

Difficulty. Raw-pixel cosine similarity ((x - 127.5) / 128, 10-fold
best-threshold verification on 3,000 + 3,000 pairs of 400 held-out
identities, 56x48) reaches 79% at difficulty 0.5, 64% at 1.0 and 58% at 1.5
(and 100% at 0): pixels alone are poor, so a learned model has room.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from centerloss_jax import alignment
from centerloss_jax import face_data
from centerloss_jax import input_pipeline

# First identity number of each part of `load_synthetic_faces`, far apart so
# that a part's identities do not depend on the size of the others (the
# verification set is the same whatever the number of training identities).
TRAIN_FIRST_IDENTITY = 0
VERIFICATION_FIRST_IDENTITY = 1 << 24
PROBE_FIRST_IDENTITY = 2 << 24
DISTRACTOR_FIRST_IDENTITY = 3 << 24
MAX_IDENTITIES_PER_PART = 1 << 24

DEFAULT_IMAGE_SHAPE = (56, 48, 3)

# Salts that separate the random streams drawn from one seed.
_IDENTITY_STREAM = 0
_NOISE_STREAM = 1
_PAIRS_STREAM = 2
_IMAGE_STREAM = 0x5EED

_CANVAS_MARGIN = 0.2  # Canvas border around the image, per side.
_NOISE_BANK_SIZE = 256
_TEXTURE_GRID = (6, 5)  # Rows x columns of the low-frequency skin texture.

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
_SCLERA = np.array([0.93, 0.91, 0.89], np.float32)


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
  texture_size = _TEXTURE_GRID[0] * _TEXTURE_GRID[1]
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
      (num_identities,) + _TEXTURE_GRID).astype(np.float32)
  return FaceParams(ids, values)


# ---------------------------------------------------------------------------
# The canvas of each identity.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Where the template-unit face lands on the image and canvas grids.

  Output pixel (x, y) is canvas pixel (x + margin_x, y + margin_y);
  template point t is output point `(t + 0.5) * scale - 0.5 + offset`.
  """
  height: int
  width: int
  scale: float
  offset_x: float
  offset_y: float
  margin_x: int
  margin_y: int

  @classmethod
  def for_shape(cls, image_shape: Sequence[int]) -> _Geometry:
    height, width = int(image_shape[0]), int(image_shape[1])
    template_height, template_width = alignment.TEMPLATE_SHAPE
    scale = min(height / template_height, width / template_width)
    return cls(height, width, scale,
               (width - template_width * scale) / 2,
               (height - template_height * scale) / 2,
               int(math.ceil(_CANVAS_MARGIN * width)),
               int(math.ceil(_CANVAS_MARGIN * height)))

  @property
  def canvas_shape(self) -> Tuple[int, int]:
    return self.height + 2 * self.margin_y, self.width + 2 * self.margin_x

  def to_output_x(self, t):
    return (t + 0.5) * self.scale - 0.5 + self.offset_x

  def to_output_y(self, t):
    return (t + 0.5) * self.scale - 0.5 + self.offset_y

  def canvas_template_coords(self) -> Tuple[np.ndarray, np.ndarray]:
    """Template-unit x of each canvas column and y of each canvas row."""
    canvas_height, canvas_width = self.canvas_shape
    columns = np.arange(canvas_width) - self.margin_x
    rows = np.arange(canvas_height) - self.margin_y
    x = (columns + 0.5 - self.offset_x) / self.scale - 0.5
    y = (rows + 0.5 - self.offset_y) / self.scale - 0.5
    return x.astype(np.float32), y.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Window:
  """A rectangle of the canvas and, per face, the box it may paint in.

  Attributes:
    rows: canvas row slice.
    columns: canvas column slice.
    x: template x of the columns, (1, 1, w).
    y: template y of the rows, (1, h, 1).
    box: float32 (n, h, w) 1 inside each face's own box, or None.
  """
  rows: slice
  columns: slice
  x: np.ndarray
  y: np.ndarray
  box: Optional[np.ndarray]


class _Canvas:
  """RGB + alpha canvases of n faces, painted shape by shape.

  Shapes are soft-edged (coverage falls from 1 to 0 over one canvas pixel),
  which anti-aliases them. Work on small shapes is confined to a window of
  the canvas that holds them for all n faces.
  """

  def __init__(self, n: int, geometry: _Geometry):
    self.geometry = geometry
    self.template_x, self.template_y = geometry.canvas_template_coords()
    height, width = geometry.canvas_shape
    # Channel-planar, so that elementwise work runs over whole planes.
    self.rgb = np.zeros((n, 3, height, width), np.float32)
    self.alpha = np.zeros((n, height, width), np.float32)

  def window(self, x_low, x_high, y_low, y_high) -> _Window:
    """The part of the canvas that holds a template-unit box.

    Each face is painted only inside its own box (padded by 1.5 canvas
    pixels, beyond the coverage ramp), so its canvas does not depend on which
    other faces share the batch, even where a shape's soft tail would reach
    further.

    Args:
      x_low: left edge, template units, a number or one per face (n, 1, 1);
        likewise for the other edges.
      x_high: right edge.
      y_low: top edge.
      y_high: bottom edge.

    Returns:
      The `_Window`: the union of the faces' boxes, and each face's box.
    """
    pad = 1.5 / self.geometry.scale
    x_low, x_high = np.asarray(x_low) - pad, np.asarray(x_high) + pad
    y_low, y_high = np.asarray(y_low) - pad, np.asarray(y_high) + pad
    columns = slice(int(np.searchsorted(self.template_x, x_low.min())),
                    int(np.searchsorted(self.template_x, x_high.max())) + 1)
    rows = slice(int(np.searchsorted(self.template_y, y_low.min())),
                 int(np.searchsorted(self.template_y, y_high.max())) + 1)
    x = self.template_x[columns][None, None, :]
    y = self.template_y[rows][None, :, None]
    box = ((x >= x_low) & (x <= x_high) & (y >= y_low) & (y <= y_high))
    return _Window(rows, columns, x, y, box.astype(np.float32))

  def whole(self) -> _Window:
    """The whole canvas as a window (no per-face box)."""
    return _Window(slice(None), slice(None), self.template_x[None, None, :],
                   self.template_y[None, :, None], None)

  def coverage(self, distance: np.ndarray) -> np.ndarray:
    """Coverage of a shape from the signed distance to its edge.

    Args:
      distance: template units, negative inside.

    Returns:
      float32 in [0, 1], a ramp one canvas pixel wide around the edge.
    """
    return np.clip(0.5 - distance * self.geometry.scale, 0, 1)

  def paint(self, window: _Window, coverage, colour):
    """Lays opaque `colour` over the window with the given coverage.

    Args:
      window: where.
      coverage: (n, h, w) in [0, 1].
      colour: (n, 3, 1, 1), or (n, 3, h, w) for a shaded colour.
    """
    if window.box is not None:
      coverage = coverage * window.box
    rgb = self.rgb[:, :, window.rows, window.columns]
    alpha = self.alpha[:, window.rows, window.columns]
    rgb += coverage[:, None] * (colour - rgb)
    alpha += coverage * (1 - alpha)

  def shade(self, window: _Window, coverage, factor):
    """Multiplies the window's colour by `1 - coverage * (1 - factor)`."""
    if window.box is not None:
      coverage = coverage * window.box
    self.rgb[:, :, window.rows, window.columns] *= (
        1 - coverage * (1 - factor))[:, None]


def _ellipse_distance(dx, dy, half_width, half_height):
  """Approximate signed distance (template units) to an ellipse's edge.

  `(q - 1) / |grad q|` for the ellipse's quadratic form `q`: the first-order
  distance, exact to first order near the whole edge (also at the tips of
  thin shapes), which is all a one-pixel coverage ramp needs.
  """
  u, v = dx / half_width, dy / half_height
  q = u ** 2 + v ** 2
  gradient = 2 * np.sqrt((u / half_width) ** 2 + (v / half_height) ** 2)
  return (q - 1) / np.maximum(gradient, 1e-6)


def _column(values: Dict[str, np.ndarray], name: str) -> np.ndarray:
  """Parameter `name` shaped (n, 1, 1) for broadcasting over a canvas."""
  return values[name][:, None, None]


def _rgb(values: Dict[str, np.ndarray], name: str) -> np.ndarray:
  """Colour `name` shaped (n, 3, 1, 1)."""
  return values[name][:, :, None, None]


def _interpolation_matrix(num_out: int, num_grid: int) -> np.ndarray:
  """(num_out, num_grid) linear interpolation of a grid over [0, num_out)."""
  positions = np.linspace(0, num_grid - 1, num_out)
  lower = np.clip(np.floor(positions).astype(int), 0, num_grid - 2)
  frac = positions - lower
  matrix = np.zeros((num_out, num_grid), np.float32)
  matrix[np.arange(num_out), lower] = 1 - frac
  matrix[np.arange(num_out), lower + 1] = frac
  return matrix


def _draw_faces(params: FaceParams, geometry: _Geometry) -> np.ndarray:
  """Canvases of the identities: uint8 premultiplied RGB and transparency.

  Args:
    params: n identities.
    geometry: the image geometry.

  Returns:
    uint32 (n, canvas_height, canvas_width), bytes R, G, B premultiplied by
    the alpha, then 255 * (1 - alpha).
  """
  v = params.values
  n = len(params)
  canvas = _Canvas(n, geometry)
  x, y = canvas.template_x[None, None, :], canvas.template_y[None, :, None]
  face_x, face_y = _column(v, 'face_x'), _column(v, 'face_y')
  half_width = _column(v, 'face_half_width')
  top, chin = _column(v, 'face_top'), _column(v, 'face_chin')
  skin = _rgb(v, 'skin_rgb')
  hair = _rgb(v, 'hair_rgb')
  full = canvas.whole()

  # Neck, then ears: behind the face.
  neck_half = 0.55 * half_width
  neck = canvas.coverage(np.abs(x - face_x) - neck_half) * canvas.coverage(
      face_y + 0.3 * chin - y)
  canvas.paint(full, neck, skin * 0.78)
  ear_size = _column(v, 'ear_size')
  for side in (-1.0, 1.0):
    ear_x = face_x + side * 0.97 * half_width
    ear_y = _column(v, 'eye_y') + 9.0
    win = canvas.window(
        ear_x - 8, ear_x + 8, ear_y - ear_size - 2, ear_y + ear_size + 2)
    wx, wy = win.x, win.y
    ear = canvas.coverage(_ellipse_distance(
        wx - ear_x, wy - ear_y, 0.45 * ear_size, ear_size))
    canvas.paint(win, ear, skin * 0.88)

  # The face: a tapering oval, shaded darker toward its edge, with texture.
  below = np.clip((y - face_y) / chin, 0, 1)
  width_at_y = half_width * (1 - _column(v, 'jaw_taper') * below ** 2)
  height_at_y = np.where(y < face_y, top, chin)
  q_face = ((x - face_x) / width_at_y) ** 2 + ((y - face_y) / height_at_y) ** 2
  face = canvas.coverage((q_face - 1) * 0.5 * np.minimum(width_at_y,
                                                          height_at_y))
  canvas_height, canvas_width = geometry.canvas_shape
  texture = (_interpolation_matrix(canvas_height, _TEXTURE_GRID[0])
             @ v['texture']
             @ _interpolation_matrix(canvas_width, _TEXTURE_GRID[1]).T)
  lighting = (1 + 0.07 * texture) * (
      1 - _column(v, 'skin_shading') * np.minimum(q_face, 1) ** 2)
  canvas.paint(full, face, skin * lighting[:, None])

  # Hair: the head region above the hairline, plus hair down the sides.
  volume = _column(v, 'hair_volume') * (1 - _column(v, 'bald'))
  head_top = np.where(y < face_y, top + volume, 1e4)
  head = canvas.coverage(_ellipse_distance(
      x - face_x, np.minimum(y - face_y, 0), half_width + volume, head_top))
  offset_x = (x - face_x) / half_width
  hairline = (_column(v, 'hairline')
              + _column(v, 'hairline_curve') * offset_x ** 2
              + _column(v, 'hair_parting') * offset_x)
  above = canvas.coverage(y - hairline) * (1 - _column(v, 'bald'))
  side_length = _column(v, 'side_hair_length') * (
      1 - 0.6 * _column(v, 'bald'))
  sides = canvas.coverage(
      half_width - _column(v, 'side_hair_width') - np.abs(x - face_x)
  ) * canvas.coverage(y - side_length)
  streaks = 1 + 0.05 * np.sin(x * 0.9 + 7 * _column(v, 'hair_kind'))
  canvas.paint(full, head * np.maximum(above, sides),
               hair * streaks[:, None])

  # Eyes, brows and glasses.
  eye_y = _column(v, 'eye_y')
  eye_w, eye_h = _column(v, 'eye_half_width'), _column(v, 'eye_half_height')
  spacing = _column(v, 'eye_spacing')
  brow_colour = np.where(v['hair_rgb'].mean(-1, keepdims=True) > 0.5,
                         v['hair_rgb'] * 0.75,
                         v['hair_rgb'] * 0.8)[:, :, None, None]
  for side in (-1.0, 1.0):
    eye_x = 48.0 + side * spacing / 2
    win = canvas.window(
        eye_x - 2.6 * eye_w, eye_x + 2.6 * eye_w,
        np.minimum(eye_y - _column(v, 'brow_gap') - 10,
                   eye_y - 3.5 * eye_h - 3), eye_y + 3.5 * eye_h + 2)
    wx, wy = win.x, win.y
    dx, dy = wx - eye_x, wy - eye_y
    canvas.shade(win, canvas.coverage(
        _ellipse_distance(dx, dy + 0.5 * eye_h, 1.6 * eye_w, 2.8 * eye_h)),
                 0.82)
    # The outer corner is raised (tilt > 0) or lowered.
    tilted = dy + side * _column(v, 'eye_tilt') * dx / eye_w
    lid = canvas.coverage(_ellipse_distance(dx, tilted + 0.3 * eye_h,
                                            1.08 * eye_w, 1.3 * eye_h))
    canvas.shade(win, lid, 0.45)
    sclera = canvas.coverage(_ellipse_distance(dx, tilted, eye_w, eye_h))
    canvas.paint(win, sclera, _SCLERA[None, :, None, None])
    iris_radius = _column(v, 'iris_scale') * eye_h
    iris = canvas.coverage(np.sqrt(dx ** 2 + dy ** 2) - iris_radius) * sclera
    canvas.paint(win, iris, _rgb(v, 'iris_rgb'))
    pupil = canvas.coverage(np.sqrt(dx ** 2 + dy ** 2) - 0.45 * iris_radius)
    canvas.paint(win, pupil * sclera,
                 np.full((1, 3, 1, 1), 0.04, np.float32))

    brow_x = eye_x + side * 1.0
    brow_length = _column(v, 'brow_half_length')
    along = (wx - brow_x) / brow_length
    brow_y = (eye_y - _column(v, 'brow_gap')
              - _column(v, 'brow_arch') * (1 - along ** 2)
              - side * _column(v, 'brow_tilt') * along)
    brow = canvas.coverage(_ellipse_distance(
        wx - brow_x, wy - brow_y, brow_length, _column(v, 'brow_thickness')))
    canvas.paint(win, brow, brow_colour)

    glasses = _column(v, 'glasses')
    rim_w, rim_h = 1.9 * eye_w, 3.3 * eye_h + 2
    outer = _ellipse_distance(dx, dy + 0.5, rim_w, rim_h)
    inner = _ellipse_distance(dx, dy + 0.5, rim_w - 1.4, rim_h - 1.4)
    rim = canvas.coverage(outer) * (1 - canvas.coverage(inner)) * glasses
    canvas.paint(win, rim, _rgb(v, 'frame_rgb'))
  bridge_half = spacing / 2 - 1.9 * _column(v, 'eye_half_width')
  win = canvas.window(48 - bridge_half - 1, 48 + bridge_half + 1, eye_y - 3,
                      eye_y)
  wx, wy = win.x, win.y
  bridge = canvas.coverage(np.abs(wx - 48) - bridge_half) * canvas.coverage(
      np.abs(wy - (eye_y - 1.5)) - 0.7) * _column(v, 'glasses')
  canvas.paint(win, bridge, _rgb(v, 'frame_rgb'))

  # Nose: shadows down its sides and under it, dark nostrils.
  nose_y = _column(v, 'nose_y')
  nose_w = _column(v, 'nose_half_width')
  win = canvas.window(38, 58, eye_y + 1, nose_y + 4)
  wx, wy = win.x, win.y
  dx = wx - 48.0
  length = (nose_y - eye_y) / 2
  for side in (-1.0, 1.0):
    canvas.shade(win, canvas.coverage(_ellipse_distance(
        dx - side * 0.5 * nose_w, wy - (eye_y + length + 2), 1.8, length)),
                 0.88)
  canvas.shade(win, canvas.coverage(
      _ellipse_distance(dx, wy - nose_y, nose_w, 3.0)), 0.85)
  for side in (-1.0, 1.0):
    nostril = canvas.coverage(_ellipse_distance(
        dx - side * 0.45 * nose_w, wy - nose_y - 1.2, 1.9, 1.1))
    canvas.shade(win, nostril, 0.45)

  # Mouth, beard and moustache.
  mouth_y = _column(v, 'mouth_y')
  mouth_w = _column(v, 'mouth_half_width')
  lips_h = _column(v, 'lip_thickness')
  hair_density = np.maximum(_column(v, 'beard'), _column(v, 'moustache'))
  win = canvas.window(
      -1e3, 1e3, np.minimum(nose_y + 5, mouth_y - lips_h - 5), 1e3)
  wx, wy = win.x, win.y
  dx = wx - 48.0
  # Positive curve raises the corners: a smile.
  curved = wy - mouth_y + _column(v, 'mouth_curve') * (dx / mouth_w) ** 2
  lips = canvas.coverage(_ellipse_distance(dx, curved, mouth_w, lips_h))
  beard = (canvas.coverage(nose_y + 7 - wy) * face[:, win.rows, win.columns]
           * _column(v, 'beard') * (1 - lips))
  canvas.paint(win, beard, hair)
  moustache = canvas.coverage(_ellipse_distance(
      dx, wy - (mouth_y - lips_h - 2.2), 0.95 * mouth_w, 2.2))
  canvas.paint(win, moustache * _column(v, 'moustache'),
               hair * 0.9)
  canvas.paint(win, lips * (1 - 0.5 * hair_density),
               _rgb(v, 'lip_rgb'))
  line = canvas.coverage(_ellipse_distance(dx, curved, 0.93 * mouth_w, 0.6))
  canvas.paint(win, line, _rgb(v, 'lip_rgb') * 0.35)
  canvas.shade(win, canvas.coverage(_ellipse_distance(
      dx, wy - (mouth_y + lips_h + 2.5), 0.5 * mouth_w, 1.6)), 0.9)

  # Premultiplied RGB and transparency in uint8, one uint32 per pixel: one
  # gather per pixel later fetches all four channels.
  rgba = np.empty(canvas.alpha.shape + (4,), np.uint8)
  canvas.rgb *= canvas.alpha[:, None] * 255
  canvas.rgb += 0.5
  np.clip(canvas.rgb, 0, 255, out=canvas.rgb)
  for channel in range(3):
    rgba[..., channel] = canvas.rgb[:, channel]
  rgba[..., 3] = np.clip((1 - canvas.alpha) * 255 + 0.5, 0, 255)
  return rgba.view(np.uint32)[..., 0]


# ---------------------------------------------------------------------------
# Images of the identities.
# ---------------------------------------------------------------------------

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
  return np.exp(-0.5 * ((t - center) / sigma) ** 2)


def _render_images(canvases: np.ndarray, canvas_index: np.ndarray,
                   face: Dict[str, np.ndarray], uniforms: np.ndarray,
                   geometry: _Geometry, noise_bank: np.ndarray,
                   difficulty: float) -> np.ndarray:
  """Renders m images from the flattened canvases of their identities.

  Args:
    canvases: uint32 flattened (n * canvas_height * canvas_width,) canvases.
    canvas_index: int (m,) canvas of each image.
    face: identity parameters per image, float32 (m,) each.
    uniforms: (m, 2 * len(_IMAGE_VARIABLES)) from `image_uniforms`.
    geometry: the image geometry.
    noise_bank: float32 (B, H, W, 3) standard normal noise patterns.
    difficulty: nuisance scale.

  Returns:
    uint8 (m, H, W, 3).
  """
  def uniform(name):
    return uniforms[:, _IMAGE_COLUMN[name]].astype(np.float32)

  def symmetric(name):
    column = _IMAGE_COLUMN[name]
    return (uniforms[:, column] + uniforms[:, column + 1] - 1).astype(
        np.float32)

  def per_image(a):  # (m,) -> (m, 1) to broadcast along x or y.
    return np.asarray(a, np.float32)[:, None]

  g = geometry
  m, height, width = len(canvas_index), g.height, g.width
  d = np.float32(difficulty)
  s = np.float32(g.scale)
  xs = np.arange(width, dtype=np.float32)[None, :]
  ys = np.arange(height, dtype=np.float32)[None, :]

  # Pose: output p = c + scale * R(angle) * diag(squeeze, 1) * (q - c) + T
  # for canonical q; sampling needs the inverse, q = c + A (p - c - T).
  center_x = g.to_output_x(face['face_x'])
  center_y = g.to_output_y(face['face_y'])
  angle = np.radians(_MAX_ROTATION_DEGREES) * d * symmetric('rotation')
  scale = np.exp(_MAX_LOG_SCALE * d * symmetric('scale'))
  yaw = _MAX_YAW * d * symmetric('yaw')
  squeeze = 1 - _YAW_SQUEEZE * np.abs(yaw)
  shift_x = _MAX_SHIFT * width * d * symmetric('shift_x')
  shift_y = _MAX_SHIFT * height * d * symmetric('shift_y')
  cos, sin = np.cos(angle), np.sin(angle)
  a00, a01 = cos / (scale * squeeze), sin / (scale * squeeze)
  a10, a11 = -sin / scale, cos / scale
  moved_x, moved_y = center_x + shift_x, center_y + shift_y
  # Offsets include the canvas margin (q is looked up on the canvas) and
  # 0.5, so that truncating to int rounds to the nearest canvas pixel.
  t0x = center_x - a00 * moved_x - a01 * moved_y + g.margin_x + 0.5
  t0y = center_y - a10 * moved_x - a11 * moved_y + g.margin_y + 0.5

  def posed(qx, qy):
    """Where canonical output point (qx, qy) lands after the pose."""
    dx, dy = qx - center_x, qy - center_y
    return (moved_x + scale * (cos * squeeze * dx - sin * dy),
            moved_y + scale * (sin * squeeze * dx + cos * dy))

  # Yaw and pitch: bulges that shift the face's middle more than its rim.
  face_w = face['face_half_width'] * s * scale
  face_h = 0.5 * (face['face_top'] + face['face_chin']) * s * scale
  yaw_shift = per_image(yaw * face_w) * np.maximum(
      0, 1 - ((xs - per_image(moved_x)) / per_image(face_w)) ** 2)
  pitch = _MAX_PITCH * d * symmetric('pitch')
  pitch_shift = per_image(pitch * face_h) * np.maximum(
      0, 1 - ((ys - per_image(moved_y)) / per_image(face_h)) ** 2)

  # Expression: local stretches around the (posed) mouth and eyes.
  mouth_x, mouth_y = posed(g.to_output_x(np.float32(48.0)),
                           g.to_output_y(face['mouth_y']))
  mouth_sigma_x = per_image(face['mouth_half_width'] * s)
  mouth_gx = _gaussian(xs, per_image(mouth_x), mouth_sigma_x)
  mouth_gy = _gaussian(ys, per_image(mouth_y), 7.0 * s)
  mouth_hy = (ys - per_image(mouth_y)) * mouth_gy
  eye_gx = 0
  for side in (-1.0, 1.0):
    eye_x, eye_y = posed(
        g.to_output_x(48.0 + side * face['eye_spacing'] / 2),
        g.to_output_y(face['eye_y']))
    eye_gx = eye_gx + _gaussian(
        xs, per_image(eye_x), per_image(1.3 * face['eye_half_width'] * s))
  eye_sigma_y = per_image(2.5 * face['eye_half_height'] * s + 1)
  eye_hy = (ys - per_image(eye_y)) * _gaussian(ys, per_image(eye_y),
                                               eye_sigma_y)
  mouth_width = -_MAX_MOUTH_WIDTH * d * per_image(symmetric('mouth_width')) * (
      xs - per_image(mouth_x)) * mouth_gx
  smile = _MAX_SMILE * s * d * per_image(symmetric('smile')) * (
      (xs - per_image(mouth_x)) / mouth_sigma_x) ** 2 * mouth_gx
  mouth_open = -_MAX_MOUTH_OPEN * d * per_image(uniform('mouth_open')) * (
      mouth_gx)
  eye_squeeze = _MAX_EYE_SQUEEZE * d * per_image(symmetric('eye_squeeze')) * (
      eye_gx)

  # Sampling position q = A (p + displacement) + t0, with every term a
  # product of a function of y and a function of x: one batched matmul.
  left = np.stack([np.ones_like(mouth_gy), ys + pitch_shift, mouth_gy,
                   mouth_hy, eye_hy], axis=2)  # (m, H, 5)
  x_warped = xs + yaw_shift
  a00, a01, a10, a11 = (per_image(a) for a in (a00, a01, a10, a11))
  right_u = np.stack([
      a00 * x_warped + per_image(t0x), np.broadcast_to(a01, (m, width)),
      a00 * mouth_width + a01 * smile, a01 * mouth_open, a01 * eye_squeeze],
                     axis=1)
  right_v = np.stack([
      a10 * x_warped + per_image(t0y), np.broadcast_to(a11, (m, width)),
      a10 * mouth_width + a11 * smile, a11 * mouth_open, a11 * eye_squeeze],
                     axis=1)
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
  rgba = canvases[flat].view(np.uint8).reshape(m, height, width, 4)

  # From here on channel-planar (m, C, H, W): numpy's inner loops then run
  # over whole image planes, not over 3 interleaved channels (~5x faster).
  planes = rgba.transpose(0, 3, 1, 2).astype(np.float32, order='C')
  image, transparency = planes[:, :3], planes[:, 3:]

  # Colour cast (on everything, like a white-balance error), then the
  # background where the canvas is transparent (it is premultiplied).
  cast = np.exp(_MAX_LOG_COLOUR_CAST * d * np.stack(
      [symmetric('cast_r'), symmetric('cast_g'), symmetric('cast_b')], axis=1))
  image *= cast[:, :, None, None]
  # Muted colours: a grey level plus a smaller random tint.
  tint = np.stack([symmetric('background_r'), symmetric('background_g'),
                   symmetric('background_b')], axis=1)
  background = 128 + min(float(difficulty), 1.0) * (
      170 * (uniform('background_level')[:, None] - 0.5) + 60 * tint)
  image += transparency * (background * cast / 255)[:, :, None, None]

  # Occluder: a rectangle of random colour over part of the face.
  probability = min(_OCCLUSION_PROBABILITY * float(difficulty), 0.6)
  occluded = np.flatnonzero(uniform('occlusion') < probability)
  half_w = (0.1 + 0.2 * uniform('occluder_width')) * width
  half_h = (0.08 + 0.15 * uniform('occluder_height')) * height
  occ_x = (0.1 + 0.8 * uniform('occluder_x')) * width
  occ_y = (0.25 + 0.7 * uniform('occluder_y')) * height
  occ_top = np.maximum(0, np.rint(occ_y - half_h)).astype(int)
  occ_bottom = np.rint(occ_y + half_h).astype(int) + 1
  occ_left = np.maximum(0, np.rint(occ_x - half_w)).astype(int)
  occ_right = np.rint(occ_x + half_w).astype(int) + 1
  colour = 255 * np.stack([uniform('occluder_r'), uniform('occluder_g'),
                           uniform('occluder_b')], axis=1) * cast
  for k in occluded:
    image[k, :, occ_top[k]:occ_bottom[k],
          occ_left[k]:occ_right[k]] = colour[k, :, None, None]

  # Illumination: a directional gradient times a global gain.
  light_angle = 2 * np.pi * uniform('light_angle')
  gradient = np.minimum(_MAX_LIGHT_GRADIENT * d * uniform('light_gradient'),
                        0.9)
  gain = np.exp(_MAX_LOG_GAIN * d * symmetric('gain'))
  gain_x = per_image(gain * gradient * np.cos(light_angle)) * (
      xs - width / 2) / width + per_image(gain)
  gain_y = per_image(gain * gradient * np.sin(light_angle)) * (
      ys - height / 2) / height
  image *= (gain_y[:, :, None] + gain_x[:, None, :])[:, None]
  np.minimum(image, 255, out=image)  # Everything above is >= 0.
  # Tone curve x (1 + k - k x) on [0, 1]: gamma-like, monotonic for
  # |k| <= 1, keeps black and white.
  tone = np.clip(_MAX_TONE_CURVE * d * symmetric('tone'), -0.9, 0.9)
  curve = image * (-tone / 255)[:, None, None, None]
  curve += (1 + tone)[:, None, None, None]
  image *= curve

  # Sensor noise: a pattern from the bank with a random sign and strength.
  pattern = np.minimum(
      (uniform('noise_pattern') * 2 * len(noise_bank)).astype(np.int64),
      2 * len(noise_bank) - 1)
  sigma = _MAX_NOISE_STD * d * uniform('noise') * np.where(
      pattern % 2, -1, 1).astype(np.float32)
  noise = noise_bank[pattern // 2]
  noise *= sigma[:, None, None, None]
  noise += 0.5  # Rounds in the conversion to uint8 below.
  image += noise
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


def _rows_of(params: FaceParams, identity_ids: np.ndarray) -> np.ndarray:
  """The row of `params` that holds each identity, or a ValueError."""
  lookup = {int(identity): row
            for row, identity in enumerate(params.identity_ids)}
  try:
    return np.array([lookup[int(i)] for i in identity_ids], np.int64)
  except KeyError as error:
    raise ValueError(
        f'Identity {error.args[0]} is not in params, which holds '
        f'{len(params)} identities') from error


def render(params: FaceParams, identity_ids: Sequence[int], *,
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

  geometry = _Geometry.for_shape((height, width))
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
    canvases = _draw_faces(params.take(unique_rows[start:stop]),
                           geometry).reshape(-1)
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


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------


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
  for fold, identities in enumerate(np.array_split(np.arange(num_identities),
                                                   num_folds)):
    n = len(identities)
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
    columns['li'].append(identities[identity])
    columns['ri'].append(identities[identity])
    columns['lj'].append(image_a[pair])
    columns['rj'].append(image_b[pair])
    id_a, id_b = np.triu_indices(n, 1)
    mismatched = rng.choice(num_mismatched, half, replace=False)
    identity_pair, images = np.divmod(mismatched, k * k)
    columns['li'].append(identities[id_a[identity_pair]])
    columns['ri'].append(identities[id_b[identity_pair]])
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


def _config_int(config: Any, key: str, default: Optional[int]) -> int:
  """`config[key]` as an int; `default` when unset (None: required)."""
  value = config.get(key, None)
  if value is None:
    if default is None:
      raise ValueError(f'The synthetic_faces input config needs {key!r}.')
    value = default
  return int(value)


def load_synthetic_faces(input_config: Any) -> input_pipeline.Dataset:
  """The synthetic identity set as a `Dataset`, all in memory.

  Config fields:

  * `seed`: int, default 0. Everything is a function of the config.
  * `image_shape`: (H, W, C), default (56, 48, 3).
  * `num_train_identities`: training classes, identities
    `0..num_train_identities - 1`.
  * `images_per_identity`: training images per identity (image numbers
    `0..images_per_identity - 1`); also the pool of images the verification
    pairs are drawn from.
  * `test_images_per_identity`: extra images (numbers from
    `images_per_identity` on) of each training identity: the closed-set
    `test` split. Default 1.
  * `num_verification_identities`: identities of the open-set pairs
    (`VERIFICATION_FIRST_IDENTITY` on, disjoint from training), split into
    `num_folds` (default 10) folds of disjoint identities with
    `pairs_per_fold // 2` matched and as many mismatched pairs each
    (`sample_pairs`). 0 or None: no verification set.
  * `pairs_per_fold`: default 600, as LFW.
  * `num_probe_identities`, `probe_images_per_identity` (default 2),
    `num_distractors`: the MegaFace-style identification set, probes from
    `PROBE_FIRST_IDENTITY` on and one image of each of `num_distractors`
    further identities from `DISTRACTOR_FIRST_IDENTITY` on. 0 or None
    probes: no identification set.
  * `difficulty`: nuisance scale, default 1.0 (see `render`).
  * `num_classes`: optional; must equal `num_train_identities` if set.
  * `train_subset`, `test_subset`: keep the first N examples.

  Args:
    input_config: ConfigDict (or dict) with the fields above.

  Returns:
    The `Dataset` with `verification` and `identification` as configured.

  Raises:
    ValueError: inconsistent counts (see the fields above).
  """
  seed = _config_int(input_config, 'seed', 0)
  image_shape = face_data.check_image_shape(
      input_config.get('image_shape', None) or DEFAULT_IMAGE_SHAPE)
  difficulty = input_config.get('difficulty', None)
  difficulty = 1.0 if difficulty is None else float(difficulty)
  num_train = _config_int(input_config, 'num_train_identities', None)
  per_identity = _config_int(input_config, 'images_per_identity', None)
  test_per_identity = _config_int(input_config, 'test_images_per_identity',
                                  1)
  num_verification = _config_int(input_config, 'num_verification_identities',
                                 0)
  num_probes = _config_int(input_config, 'num_probe_identities', 0)
  probe_images = _config_int(input_config, 'probe_images_per_identity', 2)
  num_distractors = _config_int(input_config, 'num_distractors', 0)
  counts = {'num_train_identities': num_train,
            'num_verification_identities': num_verification,
            'num_probe_identities': num_probes,
            'num_distractors': num_distractors}
  for name, count in counts.items():
    if not 0 <= count <= MAX_IDENTITIES_PER_PART:
      raise ValueError(f'{name} must be in [0, {MAX_IDENTITIES_PER_PART}], '
                       f'got {count}.')
  if num_train < 1 or per_identity < 1 or test_per_identity < 0:
    raise ValueError(
        'Need num_train_identities >= 1, images_per_identity >= 1 and '
        f'test_images_per_identity >= 0; got {num_train}, {per_identity}, '
        f'{test_per_identity}.')
  num_classes = input_config.get('num_classes', None)
  if num_classes is not None and int(num_classes) != num_train:
    raise ValueError(f'num_classes={num_classes} but num_train_identities='
                     f'{num_train}; they must be equal.')
  draw = dict(image_shape=image_shape, seed=seed, difficulty=difficulty)

  # Train and test images of the training identities in one call, so each
  # identity's canvas is drawn once.
  train_params = make_identities(num_train, seed=seed,
                                 first_identity=TRAIN_FIRST_IDENTITY)
  per_all = per_identity + test_per_identity
  identities = np.repeat(np.arange(num_train), per_all)
  image_numbers = np.tile(np.arange(per_all), num_train)
  images = render(train_params, identities + TRAIN_FIRST_IDENTITY,
                  image_ids=image_numbers, **draw)
  is_test = image_numbers >= per_identity
  splits = {}
  for split, mask in (('train', ~is_test), ('test', is_test)):
    split_images, labels = face_data.take_subset(
        images[mask], identities[mask].astype(np.int32),
        input_config.get(f'{split}_subset', None), split)
    splits[split] = input_pipeline.Split(split_images, labels, split)

  verification = None
  if num_verification:
    pairs = sample_pairs(
        num_verification, per_identity,
        num_folds=_config_int(input_config, 'num_folds', 10),
        pairs_per_fold=_config_int(input_config, 'pairs_per_fold', 600),
        seed=seed)
    keys = np.concatenate([
        pairs.left_identity * per_identity + pairs.left_image,
        pairs.right_identity * per_identity + pairs.right_image])
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    identity, number = np.divmod(unique_keys, per_identity)
    params = make_identities(num_verification, seed=seed,
                             first_identity=VERIFICATION_FIRST_IDENTITY)
    pair_images = render(params, identity + VERIFICATION_FIRST_IDENTITY,
                         image_ids=number, **draw)
    num_pairs = len(pairs.is_same)
    verification = input_pipeline.PairsSet(
        images=pair_images, left=inverse[:num_pairs].astype(np.int64),
        right=inverse[num_pairs:].astype(np.int64), is_same=pairs.is_same,
        fold=pairs.fold, name='synthetic_pairs')

  identification = None
  if num_probes:
    if probe_images < 2:
      raise ValueError(f'probe_images_per_identity must be >= 2 (a probe and '
                       f'a mate), got {probe_images}.')
    probe_params = make_identities(num_probes, seed=seed,
                                   first_identity=PROBE_FIRST_IDENTITY)
    probe_ids = np.repeat(np.arange(num_probes), probe_images)
    probes = render(probe_params, probe_ids + PROBE_FIRST_IDENTITY,
                    image_ids=np.tile(np.arange(probe_images), num_probes),
                    **draw)
    distractor_params = make_identities(
        num_distractors, seed=seed, first_identity=DISTRACTOR_FIRST_IDENTITY)
    distractors = render(distractor_params, distractor_params.identity_ids,
                         image_ids=np.zeros(num_distractors, np.int64),
                         **draw) if num_distractors else np.zeros(
                             (0,) + image_shape, np.uint8)
    identification = input_pipeline.IdentificationSet(
        probes=input_pipeline.Split(probes, probe_ids.astype(np.int32),
                                    'probes'),
        distractors=distractors, name='synthetic_identification')

  return input_pipeline.Dataset(
      train=splits['train'], test=splits['test'], num_classes=num_train,
      class_names=tuple(f'identity_{i}' for i in range(num_train)),
      image_shape=image_shape, verification=verification,
      identification=identification)
