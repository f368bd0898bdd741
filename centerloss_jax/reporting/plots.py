"""Figures: the paper's Fig. 3-style scatter of 2-D features, ROC curves.

And the figures of a study over seeds: a panel of feature scatters with one
legend (Fig. 3), metrics against a swept hyperparameter with error bars
(Fig. 5), ROC curves with the band their seeds span.
"""

from __future__ import annotations

import dataclasses
import math
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
                     max_points: int = 10_000,
                     legend: bool = True) -> plt.Axes:
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
    legend: draw the legend beside the axes (a panel draws one for all).

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
  if legend:
    _legible_markers(ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5),
                               fontsize=8, frameon=False))
  return ax


def _legible_markers(legend) -> None:
  for handle in legend.legend_handles:
    handle.set_sizes([25])  # Legible legend markers, whatever the point size.
    handle.set_alpha(1.0)


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
  _finish_roc(fig, ax, smallest_far=min(smallest_far, 1e-3),
              y_label='true accept rate', title=title, path=path)
  return fig


def _finish_roc(fig: Figure, ax, *, smallest_far: float, y_label: str,
                title: Optional[str], path: Optional[str],
                lowest_tar: float = 0.0) -> None:
  """The ROC axes both ROC figures share: log FAR, legend, saved.

  The TAR axis starts at 0, or just below `lowest_tar` on the 0.1 grid.
  """
  ax.set_xscale('log')
  ax.set_xlim(smallest_far, 1.0)
  ax.set_ylim(max(0.0, np.floor(10 * lowest_tar) / 10 - 0.05), 1.01)
  ax.set_xlabel('false accept rate')
  ax.set_ylabel(y_label)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  _save(fig, path)


def plot_feature_panel(panels: Sequence[Mapping[str, np.ndarray]],
                       titles: Sequence[str], class_names: Sequence[str], *,
                       path: Optional[str] = None,
                       title: Optional[str] = None) -> Figure:
  """2-D feature scatters side by side with one legend (the paper's Fig. 3).

  Each axes has equal aspect (distances read the same in x and y) and its
  own scale: the point of the figure is each run's spread relative to its
  own separation.

  Args:
    panels: per axes, `features` (N, 2), `labels` (N,) and optionally
      `centers` (K, 2) and `center_classes` (K,), e.g. a run's
      `features.npz`.
    titles: one per panel.
    class_names: legend names, indexed by label.
    path: where to save the PNG (atomically), if given.
    title: the figure's title.

  Returns:
    The figure (with an Agg canvas; no pyplot state).
  """
  if not panels or len(panels) != len(titles):
    raise ValueError(f'plot_feature_panel needs one title per panel, got '
                     f'{len(panels)} panels and {len(titles)} titles.')
  fig = Figure(figsize=(3.6 * len(panels), 4.4), dpi=110)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, panel, panel_title in zip(axes, panels, titles):
    plot_features_2d(panel['features'], panel['labels'], class_names,
                     centers=panel.get('centers'),
                     center_classes=panel.get('center_classes'),
                     title=panel_title, ax=ax, legend=False)
  handles, labels = axes[0].get_legend_handles_labels()
  _legible_markers(fig.legend(handles, labels, loc='lower center',
                              ncol=min(len(labels), 6), fontsize=8,
                              frameon=False))
  if title:
    fig.suptitle(title)
  # Room below the axes for the legend's rows.
  rows = math.ceil(len(labels) / 6)
  fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
  _save(fig, path)
  return fig


@dataclasses.dataclass(frozen=True)
class SweepSeries:
  """One metric against one swept hyperparameter, over seeds.

  Attributes:
    x_label: the hyperparameter, e.g. 'lambda (alpha = 0.5)'.
    x_ticks: its values as shown; placed evenly (a log-like axis with 0).
    y_label: the metric.
    means: the mean over seeds at each value.
    stds: the sample standard deviations (NaN: one seed, no bar).
    counts: the number of seeds at each value.
    values: optionally, each seed's value at each value, drawn as dots.
  """
  x_label: str
  x_ticks: Sequence[str]
  y_label: str
  means: Sequence[float]
  stds: Sequence[float]
  counts: Sequence[int]
  values: Optional[Sequence[Sequence[float]]] = None


def plot_sweeps(rows: Sequence[Sequence[SweepSeries]], *,
                path: Optional[str] = None,
                title: Optional[str] = None) -> Figure:
  """A grid of metric-against-hyperparameter plots with error bars (Fig. 5).

  Bars are +- one standard deviation over seeds; a value measured with a
  single seed is drawn hollow, without a bar, and one of none (NaN) is a
  gap. Each point is labelled with its number of seeds; the seeds' own
  values, if given, are grey dots beside it (with three seeds a reader
  should see them, not only a bar).

  Args:
    rows: the grid, e.g. `[[accuracy vs lambda, accuracy vs alpha],
      [spread vs lambda, spread vs alpha]]`.
    path: where to save the PNG (atomically), if given.
    title: the figure's title.

  Returns:
    The figure.
  """
  num_cols = max(len(row) for row in rows)
  fig = Figure(figsize=(4.6 * num_cols, 3.4 * len(rows)), dpi=110)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), num_cols, squeeze=False)
  for row_axes, row in zip(axes, rows):
    for ax, series in zip(row_axes, row):
      x = np.arange(len(series.x_ticks))
      means = np.asarray(series.means, np.float64)
      stds = np.asarray(series.stds, np.float64)
      measured = np.isfinite(stds)
      ax.plot(x, means, color='tab:blue', alpha=0.4)
      ax.errorbar(x[measured], means[measured], yerr=stds[measured],
                  fmt='o', color='tab:blue', capsize=4)
      ax.plot(x[~measured], means[~measured], 'o', mfc='white',
              color='tab:blue')
      for xi, seed_values in zip(x, series.values or ()):
        ax.plot(np.full(len(seed_values), xi + 0.08), seed_values, '.',
                color='gray', markersize=4)
      for xi, mean, count in zip(x, means, series.counts):
        if not count:  # Not measured: a gap in the curve, no label.
          continue
        # Left of the point: the seeds' dots are to its right.
        ax.annotate(f'n={count}', (xi, mean), textcoords='offset points',
                    xytext=(-7, -3), ha='right', va='top', fontsize=7,
                    color='gray')
      ax.set_xticks(x, series.x_ticks)
      ax.set_xlim(-0.5, len(x) - 0.5)  # Room for the labels at the ends.
      ax.set_xlabel(series.x_label)
      ax.set_ylabel(series.y_label)
      ax.grid(True, alpha=0.3)
    for ax in row_axes[len(row):]:
      ax.axis('off')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  return fig


def plot_roc_bands(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                   path: Optional[str] = None,
                   title: Optional[str] = None) -> Figure:
  """ROC curves over seeds: the mean TAR and the band from min to max.

  Args:
    curves: `{name: (far, tars)}`, `far` (G,) a grid of FARs > 0 shared by
      the seeds and `tars` (S, G) each seed's TAR on it
      (`metrics.verification.tar_on_far_grid`).
    path: where to save the PNG (atomically), if given.
    title: the axes title.

  Returns:
    The figure.
  """
  if not curves:
    raise ValueError('plot_roc_bands needs at least one curve, got none.')
  fig = Figure(figsize=(6, 5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  smallest_far, lowest_tar = 1.0, 1.0
  for name, (far, tars) in curves.items():
    far = np.asarray(far, np.float64)
    tars = np.atleast_2d(np.asarray(tars, np.float64))
    if far.ndim != 1 or tars.shape[1] != far.size or np.any(far <= 0):
      raise ValueError(f'Curve {name!r}: expected a grid of FARs > 0 and '
                       f'(seeds, grid) TARs, got shapes {far.shape} and '
                       f'{tars.shape}.')
    smallest_far = min(smallest_far, float(far.min()))
    lowest_tar = min(lowest_tar, float(tars.min()))
    # TAR at a FAR is a step function (`tar_on_far_grid`): drawn as one.
    line, = ax.plot(far, tars.mean(axis=0), drawstyle='steps-post',
                    label=f'{name} ({len(tars)} seed'
                          f'{"s" if len(tars) > 1 else ""})')
    ax.fill_between(far, tars.min(axis=0), tars.max(axis=0), step='post',
                    color=line.get_color(), alpha=0.2, linewidth=0)
  # Runs compared over seeds lie close: the TAR axis starts below the
  # lowest band, so that the bands' differences are visible.
  _finish_roc(fig, ax, smallest_far=smallest_far,
              y_label='true accept rate (mean; band: min to max over seeds)',
              title=title, path=path, lowest_tar=lowest_tar)
  return fig


def _save(fig: Figure, path: Optional[str]) -> None:
  if path is not None:
    with files.atomic_write(path, 'wb') as f:
      fig.savefig(f, format='png')
