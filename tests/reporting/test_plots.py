"""Tests of reporting.plots: the 2-D feature scatter and panel, ROC curves,
and the figures over seeds (sweep bars, ROC bands)."""

import os

import matplotlib.colors
import numpy as np
import pytest

from centerloss_jax.reporting import plots

CLASS_NAMES = ('a', 'b', 'c')


def _panel(seed, scale):
  """60 2-D features of 3 classes around their centers, scaled."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(3), 20)
  centers = scale * np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
  return {'features': centers[labels] + rng.normal(size=(60, 2)),
          'labels': labels, 'centers': centers,
          'center_classes': np.arange(3)}


# ---------------------------------------------------------------------------
# The feature scatter.
# ---------------------------------------------------------------------------


def test_save_feature_plot_returns_the_rgb_image(tmp_path):
  panel = _panel(0, 1.0)
  image = plots.save_feature_plot(str(tmp_path / 'features.png'),
                                  panel['features'], panel['labels'],
                                  CLASS_NAMES, centers=panel['centers'])
  assert image.ndim == 3 and image.shape[-1] == 3


@pytest.fixture(scope='module')
def scatter():
  """(the scatter's collections by label, the centers)."""
  panel = _panel(0, 1.0)
  ax = plots.plot_features_2d(panel['features'], panel['labels'],
                              CLASS_NAMES, centers=panel['centers'])
  return {c.get_label(): c for c in ax.collections}, panel['centers']


def test_each_center_is_marked_in_its_class_colour(scatter):
  by_label, _ = scatter
  marks = by_label['centers'].get_facecolors()
  for k, name in enumerate(CLASS_NAMES):
    class_colour = matplotlib.colors.to_rgb(by_label[name].get_facecolors()[0])
    assert np.allclose(matplotlib.colors.to_rgb(marks[k]), class_colour), name


def test_each_center_is_marked_at_its_position(scatter):
  by_label, centers = scatter
  np.testing.assert_allclose(by_label['centers'].get_offsets(), centers)


@pytest.fixture(scope='module')
def feature_panel(tmp_path_factory):
  """(figure, path) of two panels at scales 1 and 10."""
  path = tmp_path_factory.mktemp('panel') / 'panel.png'
  fig = plots.plot_feature_panel([_panel(0, 1.0), _panel(1, 10.0)],
                                 ['lambda = 0', 'lambda = 0.1'],
                                 CLASS_NAMES, path=str(path))
  return fig, path


def test_feature_panel_writes_the_figure(feature_panel):
  _, path = feature_panel
  assert path.stat().st_size > 10_000


def test_feature_panel_titles_each_panel(feature_panel):
  fig, _ = feature_panel
  assert [ax.get_title() for ax in fig.axes] == ['lambda = 0', 'lambda = 0.1']


def test_feature_panel_has_one_legend_for_all_panels(feature_panel):
  fig, _ = feature_panel
  assert all(ax.get_legend() is None for ax in fig.axes)
  assert len(fig.legends) == 1
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      'a', 'b', 'c', 'centers']


def test_feature_panel_axes_have_equal_aspect(feature_panel):
  fig, _ = feature_panel
  assert all(ax.get_aspect() == 1.0 for ax in fig.axes)


def test_feature_panel_needs_one_title_per_panel():
  with pytest.raises(ValueError, match='one title per panel'):
    plots.plot_feature_panel([_panel(0, 1.0)], [], CLASS_NAMES)


# ---------------------------------------------------------------------------
# ROC curves.
# ---------------------------------------------------------------------------

# The ROC of scores [0.9, 0.8, 0.8, 0.5, 0.3], same [T, F, T, T, F].
ROC_FAR = np.array([0, 0, 0.5, 0.5, 1])
ROC_TAR = np.array([0, 1 / 3, 2 / 3, 1, 1])


@pytest.fixture(scope='module')
def roc_plot(tmp_path_factory):
  """(figure, path) of two curves written to an empty folder."""
  path = str(tmp_path_factory.mktemp('roc') / 'roc.png')
  fig = plots.plot_roc({'a': (ROC_FAR, ROC_TAR), 'b': (ROC_FAR, ROC_TAR**2)},
                       path=path, title='LFW')
  return fig, path


def test_plot_roc_far_axis_is_logarithmic(roc_plot):
  (ax,) = roc_plot[0].axes
  assert ax.get_xscale() == 'log'


def test_plot_roc_draws_a_line_per_curve(roc_plot):
  (ax,) = roc_plot[0].axes
  assert len(ax.get_lines()) == 2


def test_plot_roc_has_the_title(roc_plot):
  (ax,) = roc_plot[0].axes
  assert ax.get_title() == 'LFW'


def test_plot_roc_writes_a_png(roc_plot):
  with open(roc_plot[1], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_plot_roc_leaves_no_temporary_file(roc_plot):
  assert os.listdir(os.path.dirname(roc_plot[1])) == ['roc.png']


def test_plot_roc_needs_a_curve():
  with pytest.raises(ValueError, match='at least one curve'):
    plots.plot_roc({})


# ---------------------------------------------------------------------------
# Figures over seeds.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sweep_axes():
  """The axes of a sweep of 3 points, measured over 3, 1 and 3 seeds."""
  series = plots.SweepSeries(
      x_label='lambda', x_ticks=['0', '0.01', '0.1'], y_label='accuracy',
      means=[74.0, 77.0, 75.0], stds=[0.5, float('nan'), 0.3],
      counts=[3, 1, 3], values=[[73.5, 74.0, 74.5], [77.0], [74.7, 75, 75.3]])
  return plots.plot_sweeps([[series]]).axes[0]


def test_sweep_plot_draws_bars_only_where_seeds_were_measured(sweep_axes):
  bars = [c for c in sweep_axes.containers]
  assert len(bars) == 1
  np.testing.assert_allclose(bars[0].lines[0].get_xdata(), [0, 2])


def test_sweep_plot_labels_each_point_with_its_seed_count(sweep_axes):
  assert [t.get_text() for t in sweep_axes.texts] == ['n=3', 'n=1', 'n=3']


def test_sweep_plot_ticks_are_the_sweep_values(sweep_axes):
  assert [t.get_text() for t in sweep_axes.get_xticklabels()] == [
      '0', '0.01', '0.1']


BAND_FAR = np.array([0.01, 0.1, 1.0])
BAND_TARS = np.array([[0.2, 0.6, 1.0], [0.4, 0.8, 1.0]])


@pytest.fixture(scope='module')
def band_axes():
  return plots.plot_roc_bands({'softmax': (BAND_FAR, BAND_TARS)}).axes[0]


def test_roc_band_legend_counts_the_seeds(band_axes):
  assert band_axes.get_legend().get_texts()[0].get_text() == (
      'softmax (2 seeds)')


def test_roc_band_line_is_the_mean_over_seeds(band_axes):
  np.testing.assert_allclose(band_axes.lines[0].get_ydata(), [0.3, 0.7, 1.0])


def test_roc_band_spans_the_seeds(band_axes):
  band = band_axes.collections[0].get_paths()[0].vertices
  assert band[:, 1].min() == pytest.approx(0.2)
  assert band[:, 1].max() == pytest.approx(1.0)


def test_roc_band_tar_axis_starts_just_below_the_lowest_band(band_axes):
  # Below the lowest band (0.2), not at 0.
  assert band_axes.get_ylim()[0] == pytest.approx(0.15)
  high = plots.plot_roc_bands({'softmax': (BAND_FAR, BAND_TARS / 2 + 0.5)})
  assert high.axes[0].get_ylim()[0] == pytest.approx(0.55)  # From 0.6.


def test_roc_bands_need_fars_above_zero():
  with pytest.raises(ValueError, match=r'FARs > 0'):
    plots.plot_roc_bands({'bad': (np.array([0.0, 1.0]), BAND_TARS[:, 1:])})


def test_roc_bands_need_a_curve():
  with pytest.raises(ValueError, match='at least one curve'):
    plots.plot_roc_bands({})
