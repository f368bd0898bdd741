"""Figures: the paper's Fig. 3-style scatter of 2-D features, ROC curves."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import matplotlib.pyplot as plt
import numpy as np

from centerloss_jax.metrics import verification
from centerloss_jax.reporting import files


def plot_features_2d(features: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str], *,
                     centers: Optional[np.ndarray] = None,
                     center_classes: Optional[np.ndarray] = None,
                     title: str = '', ax: Optional[plt.Axes] = None,
                     max_points: int = 10_000) -> plt.Axes:
  """Scatters 2-D features coloured by class, each center in its class colour.

  Args:
    features: (N, 2) features.
    labels: (N,) class ids indexing `class_names`.
    class_names: legend names.
    centers: optional (K, 2) centers to mark.
    center_classes: (K,) the class of each center; None: 0..K-1.
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
    if center_classes is None:
      center_classes = np.arange(len(centers))
    # Each center in its class's colour, outlined so it shows on its cloud.
    ax.scatter(centers[:, 0], centers[:, 1], marker='X', s=90,
               c=[cmap(k % cmap.N) for k in center_classes],
               edgecolors='black', linewidths=0.8, label='centers')
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
                      center_classes: Optional[np.ndarray] = None,
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
                   center_classes=center_classes, title=title,
                   ax=fig.add_subplot())
  fig.tight_layout()
  canvas.draw()
  image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
  with files.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png')
  return image


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
             path: Optional[str] = None,
             title: Optional[str] = None) -> Figure:
  """ROC curves of several models on one axes, FAR on a log scale.

  A log FAR axis is what makes face models comparable: they differ at
  FAR 1e-4..1e-6, which a linear axis squeezes against zero. Points at
  FAR = 0 cannot be drawn on it and are left out; the legend gives each
  curve's AUC over the full curve.

  Args:
    curves: `{name: (far, tar)}`, e.g. from `metrics.verification.roc_curve`.
    path: where to save the figure as PNG (`files.atomic_write`: a reader
      never sees a half-written file).
    title: axes title.

  Returns:
    The `matplotlib.figure.Figure` (with an Agg canvas; no pyplot state).

  Raises:
    ValueError: if `curves` is empty or a curve's arrays are malformed.
  """
  if not curves:
    raise ValueError('plot_roc needs at least one curve, got none.')
  # A Figure with its own Agg canvas, not pyplot: no global backend switch
  # and no figure left open in pyplot's registry.
  fig = Figure(figsize=(6, 5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  smallest_far = 1.0
  for name, (far, tar) in curves.items():
    auc = verification.roc_auc(far, tar)
    far = np.asarray(far, np.float64)
    tar = np.asarray(tar, np.float64)
    drawable = far > 0
    if np.any(drawable):
      smallest_far = min(smallest_far, float(far[drawable].min()))
    ax.plot(far[drawable], tar[drawable], label=f'{name} (AUC {auc:.4f})')
  ax.set_xscale('log')
  ax.set_xlim(min(smallest_far, 1e-3), 1.0)
  ax.set_ylim(0.0, 1.01)
  ax.set_xlabel('false accept rate')
  ax.set_ylabel('true accept rate')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  if path is not None:
    with files.atomic_write(path, 'wb') as f:
      fig.savefig(f, format='png')
  return fig
