"""reporting.plots: the 2-D feature scatter and the figures over seeds."""

import matplotlib.colors
import numpy as np
import pytest

from centerloss_jax.reporting import plots


def test_each_center_is_marked_in_its_class_colour(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
  features = centers[labels] + rng.normal(size=(60, 2))
  image = plots.save_feature_plot(str(tmp_path / 'features.png'), features,
                                  labels, ('a', 'b', 'c'), centers=centers)
  assert image.ndim == 3 and image.shape[-1] == 3
  ax = plots.plot_features_2d(features, labels, ('a', 'b', 'c'),
                              centers=centers)
  by_label = {c.get_label(): c for c in ax.collections}
  marks = by_label['centers'].get_facecolors()
  for k, name in enumerate(('a', 'b', 'c')):
    class_colour = matplotlib.colors.to_rgb(by_label[name].get_facecolors()[0])
    assert np.allclose(matplotlib.colors.to_rgb(marks[k]), class_colour), name
  np.testing.assert_allclose(by_label['centers'].get_offsets(), centers)


def _panel(seed, scale):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(3), 20)
  centers = scale * np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
  return {'features': centers[labels] + rng.normal(size=(60, 2)),
          'labels': labels, 'centers': centers,
          'center_classes': np.arange(3)}


def test_feature_panel_has_one_legend_and_equal_aspect(tmp_path):
  path = tmp_path / 'panel.png'
  fig = plots.plot_feature_panel([_panel(0, 1.0), _panel(1, 10.0)],
                                 ['lambda = 0', 'lambda = 0.1'],
                                 ('a', 'b', 'c'), path=str(path))
  assert path.stat().st_size > 10_000
  assert [ax.get_title() for ax in fig.axes] == ['lambda = 0', 'lambda = 0.1']
  assert all(ax.get_legend() is None for ax in fig.axes)
  assert len(fig.legends) == 1
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      'a', 'b', 'c', 'centers']
  assert all(ax.get_aspect() == 1.0 for ax in fig.axes)
  with pytest.raises(ValueError, match='one title per panel'):
    plots.plot_feature_panel([_panel(0, 1.0)], [], ('a', 'b', 'c'))


def test_sweep_plot_draws_bars_only_where_seeds_were_measured():
  series = plots.SweepSeries(
      x_label='lambda', x_ticks=['0', '0.01', '0.1'], y_label='accuracy',
      means=[74.0, 77.0, 75.0], stds=[0.5, float('nan'), 0.3],
      counts=[3, 1, 3], values=[[73.5, 74.0, 74.5], [77.0], [74.7, 75, 75.3]])
  fig = plots.plot_sweeps([[series]])
  ax = fig.axes[0]
  bars = [c for c in ax.containers]
  assert len(bars) == 1
  np.testing.assert_allclose(bars[0].lines[0].get_xdata(), [0, 2])
  assert [t.get_text() for t in ax.texts] == ['n=3', 'n=1', 'n=3']
  assert [t.get_text() for t in ax.get_xticklabels()] == ['0', '0.01', '0.1']


def test_roc_bands_span_the_seeds():
  far = np.array([0.01, 0.1, 1.0])
  tars = np.array([[0.2, 0.6, 1.0], [0.4, 0.8, 1.0]])
  fig = plots.plot_roc_bands({'softmax': (far, tars)})
  ax = fig.axes[0]
  assert ax.get_legend().get_texts()[0].get_text() == 'softmax (2 seeds)'
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.3, 0.7, 1.0])
  band = ax.collections[0].get_paths()[0].vertices
  assert band[:, 1].min() == pytest.approx(0.2)
  assert band[:, 1].max() == pytest.approx(1.0)
  # The TAR axis starts just below the lowest band (0.2), not at 0.
  assert ax.get_ylim()[0] == pytest.approx(0.15)
  high = plots.plot_roc_bands({'softmax': (far, tars / 2 + 0.5)})
  assert high.axes[0].get_ylim()[0] == pytest.approx(0.55)  # From 0.6.
  with pytest.raises(ValueError, match=r'FARs > 0'):
    plots.plot_roc_bands({'bad': (np.array([0.0, 1.0]), tars[:, 1:])})
  with pytest.raises(ValueError, match='at least one curve'):
    plots.plot_roc_bands({})
