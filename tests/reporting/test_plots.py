"""reporting.plots: the 2-D feature scatter."""

import matplotlib.colors
import numpy as np

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
