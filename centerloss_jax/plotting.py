"""The paper's Fig. 3-style scatter plot of 2-D deep features."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import matplotlib.pyplot as plt
import numpy as np


def plot_features_2d(features: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str], *,
                     centers: Optional[np.ndarray] = None, title: str = '',
                     ax: Optional[plt.Axes] = None,
                     max_points: int = 10_000) -> plt.Axes:
  """Scatters 2-D features coloured by class, centers marked with crosses.

  Args:
    features: (N, 2) features.
    labels: (N,) class ids indexing `class_names`.
    class_names: legend names.
    centers: optional (num_classes, 2) centers to mark.
    title: axes title.
    ax: axes to draw into; a new figure when None.
    max_points: plot an evenly spaced subset beyond this many points.

  Returns:
    The axes drawn into.
  """
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[1] != 2:
    raise ValueError(f'plot_features_2d needs (N, 2) features, got shape '
                     f'{features.shape}.')
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 6))
  step = max(1, len(features) // max_points)
  features, labels = features[::step], np.asarray(labels)[::step]
  cmap = plt.get_cmap('tab10' if len(class_names) <= 10 else 'tab20')
  for k, name in enumerate(class_names):
    points = features[labels == k]
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5,
               color=cmap(k % cmap.N), label=name, rasterized=True)
  if centers is not None:
    centers = np.asarray(centers)
    ax.scatter(centers[:, 0], centers[:, 1], marker='x', s=60, c='black',
               linewidths=1.5, label='centers')
  ax.set_title(title)
  ax.set_aspect('equal', adjustable='datalim')
  legend = ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5),
                     fontsize=8, frameon=False)
  for handle in legend.legend_handles:
    handle.set_sizes([25])  # Legible legend markers, whatever the point size.
    handle.set_alpha(1.0)
  return ax


def save_feature_plot(path: str, features: np.ndarray, labels: np.ndarray,
                      class_names: Sequence[str], *,
                      centers: Optional[np.ndarray] = None,
                      title: str = '') -> np.ndarray:
  """Writes the scatter plot as a PNG (atomically) and returns it as RGB.

  Returns:
    The rendered image, uint8 (H, W, 3), e.g. for TensorBoard.
  """
  # A Figure with its own Agg canvas, not pyplot: no global backend switch
  # (which would silence a notebook's inline plots) and nothing to close.
  fig = Figure(figsize=(7.5, 6), dpi=100)
  canvas = FigureCanvasAgg(fig)
  plot_features_2d(features, labels, class_names, centers=centers,
                   title=title, ax=fig.add_subplot())
  fig.tight_layout()
  canvas.draw()
  image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
  # Write then rename, so a reader never sees a half-written PNG.
  tmp_path = path + '.tmp.png'
  fig.savefig(tmp_path)
  os.replace(tmp_path, path)
  return image
