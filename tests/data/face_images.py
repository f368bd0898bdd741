"""Images whose landmarks are known, for the alignment and image-file tests.

A face of Gaussian blobs at the 5 template landmarks, moved by a known
similarity, and the blobs' centres measured back.
"""

import numpy as np


def similarity(scale, angle, shift_x, shift_y):
  """The (2, 3) matrix of a known similarity."""
  cos, sin = scale * np.cos(angle), scale * np.sin(angle)
  return np.array([[cos, -sin, shift_x], [sin, cos, shift_y]])


def apply(matrix, points):
  """`points` (N, 2) moved by the (2, 3) affine `matrix`."""
  return points @ matrix[:, :2].T + matrix[:, 2]


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
