"""Each identity's canvas: its face painted once, before any nuisance.

`draw_faces` paints each identity's face (from `identities.make_identities`)
once on a canvas with a 20% border around the image (soft-edged shapes, so
it is anti-aliased), as premultiplied RGB plus transparency packed in
uint32; `rendering.render` then samples every image of the identity from
that canvas. `Geometry` says where the template-unit face lands on the image
and canvas grids.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from centerloss_jax.data import alignment
from centerloss_jax.data.synthetic_faces.identities import FaceParams
from centerloss_jax.data.synthetic_faces.identities import TEXTURE_GRID

_CANVAS_MARGIN = 0.2  # Canvas border around the image, per side.
_SCLERA = np.array([0.93, 0.91, 0.89], np.float32)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where the template-unit face lands on the image and canvas grids.

  Output pixel (x, y) is canvas pixel (x + margin_x, y + margin_y);
  template point t is output point `(t + 0.5) * scale - 0.5 + offset`.

  Attributes:
    height, width: the image size, pixels.
    scale: image pixels per template unit (the template fits inside).
    offset_x, offset_y: where the scaled template's corner lands, pixels.
    margin_x, margin_y: the canvas border on each side, pixels.
  """
  height: int
  width: int
  scale: float
  offset_x: float
  offset_y: float
  margin_x: int
  margin_y: int

  @classmethod
  def for_shape(cls, image_shape: Sequence[int]) -> Geometry:
    """The geometry of (H, W, ...) images, the template centred in them."""
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
    """(height, width) of the canvas: the image plus its margins."""
    return self.height + 2 * self.margin_y, self.width + 2 * self.margin_x

  def to_output_x(self, t):
    """Image x of template x `t`."""
    return (t + 0.5) * self.scale - 0.5 + self.offset_x

  def to_output_y(self, t):
    """Image y of template y `t`."""
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

  def __init__(self, n: int, geometry: Geometry):
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


def draw_faces(params: FaceParams, geometry: Geometry) -> np.ndarray:
  """Canvases of the identities: uint8 premultiplied RGB and transparency.

  Args:
    params: n identities.
    geometry: the image geometry.

  Returns:
    uint32 (n, canvas_height, canvas_width), bytes R, G, B premultiplied by
    the alpha, then 255 * (1 - alpha).
  """
  v = params.values
  canvas = _Canvas(len(params), geometry)
  # Back to front: each part is laid over those drawn before it.
  _draw_neck(canvas, v)
  _draw_ears(canvas, v)
  face = _draw_face_oval(canvas, v)
  _draw_hair(canvas, v)
  for side in (-1.0, 1.0):
    _draw_eye_region(canvas, v, side)
  _draw_glasses_bridge(canvas, v)
  _draw_nose(canvas, v)
  _draw_mouth_and_facial_hair(canvas, v, face)
  return _pack_rgba(canvas)


def _draw_neck(canvas: _Canvas, v: Dict[str, np.ndarray]) -> None:
  """The neck, below the face and a little darker."""
  full = canvas.whole()
  neck_half = 0.55 * _column(v, 'face_half_width')
  neck = canvas.coverage(
      np.abs(full.x - _column(v, 'face_x')) - neck_half) * canvas.coverage(
          _column(v, 'face_y') + 0.3 * _column(v, 'face_chin') - full.y)
  canvas.paint(full, neck, _rgb(v, 'skin_rgb') * 0.78)


def _draw_ears(canvas: _Canvas, v: Dict[str, np.ndarray]) -> None:
  """Both ears, at the sides of the face (which covers their inner half)."""
  face_x = _column(v, 'face_x')
  half_width = _column(v, 'face_half_width')
  ear_size = _column(v, 'ear_size')
  for side in (-1.0, 1.0):
    ear_x = face_x + side * 0.97 * half_width
    ear_y = _column(v, 'eye_y') + 9.0
    win = canvas.window(
        ear_x - 8, ear_x + 8, ear_y - ear_size - 2, ear_y + ear_size + 2)
    ear = canvas.coverage(_ellipse_distance(
        win.x - ear_x, win.y - ear_y, 0.45 * ear_size, ear_size))
    canvas.paint(win, ear, _rgb(v, 'skin_rgb') * 0.88)


def _draw_face_oval(canvas: _Canvas, v: Dict[str, np.ndarray]) -> np.ndarray:
  """The face: a tapering oval, shaded darker toward its edge, with texture.

  Args:
    canvas: the canvases to paint on.
    v: the identities' `FaceParams.values`.

  Returns:
    The oval's coverage (n, canvas_height, canvas_width), which bounds the
    beard.
  """
  full = canvas.whole()
  x, y = full.x, full.y
  face_x, face_y = _column(v, 'face_x'), _column(v, 'face_y')
  half_width = _column(v, 'face_half_width')
  top, chin = _column(v, 'face_top'), _column(v, 'face_chin')
  below = np.clip((y - face_y) / chin, 0, 1)
  width_at_y = half_width * (1 - _column(v, 'jaw_taper') * below ** 2)
  height_at_y = np.where(y < face_y, top, chin)
  q_face = ((x - face_x) / width_at_y) ** 2 + ((y - face_y) / height_at_y) ** 2
  face = canvas.coverage((q_face - 1) * 0.5 * np.minimum(width_at_y,
                                                          height_at_y))
  canvas_height, canvas_width = canvas.geometry.canvas_shape
  texture = (_interpolation_matrix(canvas_height, TEXTURE_GRID[0])
             @ v['texture']
             @ _interpolation_matrix(canvas_width, TEXTURE_GRID[1]).T)
  lighting = (1 + 0.07 * texture) * (
      1 - _column(v, 'skin_shading') * np.minimum(q_face, 1) ** 2)
  canvas.paint(full, face, _rgb(v, 'skin_rgb') * lighting[:, None])
  return face


def _draw_hair(canvas: _Canvas, v: Dict[str, np.ndarray]) -> None:
  """The head region above the hairline, plus hair down the sides."""
  full = canvas.whole()
  x, y = full.x, full.y
  face_x, face_y = _column(v, 'face_x'), _column(v, 'face_y')
  half_width = _column(v, 'face_half_width')
  volume = _column(v, 'hair_volume') * (1 - _column(v, 'bald'))
  head_top = np.where(y < face_y, _column(v, 'face_top') + volume, 1e4)
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
               _rgb(v, 'hair_rgb') * streaks[:, None])


def _draw_eye_region(canvas: _Canvas, v: Dict[str, np.ndarray],
                     side: float) -> None:
  """One eye, its brow and its glasses rim (side -1: the image's left)."""
  eye_x = 48.0 + side * _column(v, 'eye_spacing') / 2
  eye_y = _column(v, 'eye_y')
  eye_h = _column(v, 'eye_half_height')
  eye_w = _column(v, 'eye_half_width')
  # One window holds the brow above the eye and the rim around it.
  win = canvas.window(
      eye_x - 2.6 * eye_w, eye_x + 2.6 * eye_w,
      np.minimum(eye_y - _column(v, 'brow_gap') - 10,
                 eye_y - 3.5 * eye_h - 3), eye_y + 3.5 * eye_h + 2)
  _draw_eye(canvas, win, v, side, eye_x)
  _draw_brow(canvas, win, v, side, eye_x)
  _draw_glasses_rim(canvas, win, v, eye_x)


def _draw_eye(canvas: _Canvas, win: _Window, v: Dict[str, np.ndarray],
              side: float, eye_x: np.ndarray) -> None:
  """The socket's shadow, the lid, the sclera, the iris and the pupil."""
  dx, dy = win.x - eye_x, win.y - _column(v, 'eye_y')
  eye_w, eye_h = _column(v, 'eye_half_width'), _column(v, 'eye_half_height')
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
  canvas.paint(win, pupil * sclera, np.full((1, 3, 1, 1), 0.04, np.float32))


def _draw_brow(canvas: _Canvas, win: _Window, v: Dict[str, np.ndarray],
               side: float, eye_x: np.ndarray) -> None:
  """An arched, tilted brow above the eye, darker than the hair."""
  hair = v['hair_rgb']
  brow_colour = np.where(hair.mean(-1, keepdims=True) > 0.5, hair * 0.75,
                         hair * 0.8)[:, :, None, None]
  brow_x = eye_x + side * 1.0
  brow_length = _column(v, 'brow_half_length')
  along = (win.x - brow_x) / brow_length
  brow_y = (_column(v, 'eye_y') - _column(v, 'brow_gap')
            - _column(v, 'brow_arch') * (1 - along ** 2)
            - side * _column(v, 'brow_tilt') * along)
  brow = canvas.coverage(_ellipse_distance(
      win.x - brow_x, win.y - brow_y, brow_length,
      _column(v, 'brow_thickness')))
  canvas.paint(win, brow, brow_colour)


def _draw_glasses_rim(canvas: _Canvas, win: _Window, v: Dict[str, np.ndarray],
                      eye_x: np.ndarray) -> None:
  """The rim of the glasses around the eye (nothing without glasses)."""
  dx, dy = win.x - eye_x, win.y - _column(v, 'eye_y')
  rim_w = 1.9 * _column(v, 'eye_half_width')
  rim_h = 3.3 * _column(v, 'eye_half_height') + 2
  outer = _ellipse_distance(dx, dy + 0.5, rim_w, rim_h)
  inner = _ellipse_distance(dx, dy + 0.5, rim_w - 1.4, rim_h - 1.4)
  rim = canvas.coverage(outer) * (1 - canvas.coverage(inner)) * _column(
      v, 'glasses')
  canvas.paint(win, rim, _rgb(v, 'frame_rgb'))


def _draw_glasses_bridge(canvas: _Canvas, v: Dict[str, np.ndarray]) -> None:
  """The bridge of the glasses between the rims (nothing without glasses)."""
  eye_y = _column(v, 'eye_y')
  bridge_half = (_column(v, 'eye_spacing') / 2
                 - 1.9 * _column(v, 'eye_half_width'))
  win = canvas.window(48 - bridge_half - 1, 48 + bridge_half + 1, eye_y - 3,
                      eye_y)
  bridge = canvas.coverage(np.abs(win.x - 48) - bridge_half) * canvas.coverage(
      np.abs(win.y - (eye_y - 1.5)) - 0.7) * _column(v, 'glasses')
  canvas.paint(win, bridge, _rgb(v, 'frame_rgb'))


def _draw_nose(canvas: _Canvas, v: Dict[str, np.ndarray]) -> None:
  """Shadows down the nose's sides and under it, dark nostrils."""
  eye_y = _column(v, 'eye_y')
  nose_y = _column(v, 'nose_y')
  nose_w = _column(v, 'nose_half_width')
  win = canvas.window(38, 58, eye_y + 1, nose_y + 4)
  dx, wy = win.x - 48.0, win.y
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


def _draw_mouth_and_facial_hair(canvas: _Canvas, v: Dict[str, np.ndarray],
                                face: np.ndarray) -> None:
  """Beard, moustache, lips (thinned by facial hair) and the mouth's shadows.

  Args:
    canvas: the canvases to paint on.
    v: the identities' `FaceParams.values`.
    face: the face oval's coverage (`_draw_face_oval`); the beard stays on it.
  """
  nose_y = _column(v, 'nose_y')
  mouth_y = _column(v, 'mouth_y')
  mouth_w = _column(v, 'mouth_half_width')
  lips_h = _column(v, 'lip_thickness')
  hair = _rgb(v, 'hair_rgb')
  hair_density = np.maximum(_column(v, 'beard'), _column(v, 'moustache'))
  win = canvas.window(
      -1e3, 1e3, np.minimum(nose_y + 5, mouth_y - lips_h - 5), 1e3)
  dx, wy = win.x - 48.0, win.y
  # Positive curve raises the corners: a smile.
  curved = wy - mouth_y + _column(v, 'mouth_curve') * (dx / mouth_w) ** 2
  lips = canvas.coverage(_ellipse_distance(dx, curved, mouth_w, lips_h))
  beard = (canvas.coverage(nose_y + 7 - wy) * face[:, win.rows, win.columns]
           * _column(v, 'beard') * (1 - lips))
  canvas.paint(win, beard, hair)
  moustache = canvas.coverage(_ellipse_distance(
      dx, wy - (mouth_y - lips_h - 2.2), 0.95 * mouth_w, 2.2))
  canvas.paint(win, moustache * _column(v, 'moustache'), hair * 0.9)
  canvas.paint(win, lips * (1 - 0.5 * hair_density), _rgb(v, 'lip_rgb'))
  line = canvas.coverage(_ellipse_distance(dx, curved, 0.93 * mouth_w, 0.6))
  canvas.paint(win, line, _rgb(v, 'lip_rgb') * 0.35)
  canvas.shade(win, canvas.coverage(_ellipse_distance(
      dx, wy - (mouth_y + lips_h + 2.5), 0.5 * mouth_w, 1.6)), 0.9)


def _pack_rgba(canvas: _Canvas) -> np.ndarray:
  """The canvases as uint32 pixels (consumes `canvas.rgb`).

  Premultiplied RGB and transparency in uint8, one uint32 per pixel: one
  gather per pixel later fetches all four channels.

  Args:
    canvas: the painted canvases; its `rgb` is overwritten.

  Returns:
    uint32 (n, canvas_height, canvas_width), bytes R, G, B, 255 * (1 - alpha).
  """
  rgba = np.empty(canvas.alpha.shape + (4,), np.uint8)
  canvas.rgb *= canvas.alpha[:, None] * 255
  canvas.rgb += 0.5
  np.clip(canvas.rgb, 0, 255, out=canvas.rgb)
  for channel in range(3):
    rgba[..., channel] = canvas.rgb[:, channel]
  rgba[..., 3] = np.clip((1 - canvas.alpha) * 255 + 0.5, 0, 255)
  return rgba.view(np.uint32)[..., 0]

