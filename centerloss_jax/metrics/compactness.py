"""Feature compactness: how tight the classes are and how far apart.

Center loss exists to make features *discriminative*: small intra-class
variation, large inter-class distance (Wen et al. 2016, Sec. 1).
`compactness_metrics` measures exactly that on held-out features of the
training classes. Numpy only.
"""

from __future__ import annotations

import numpy as np

# Centers used for the separation statistics: all pairs of 1,024 centers is
# 0.5M distances; 10K identities would be 50M (and a 400 GB broadcast).
MAX_SEPARATION_CLASSES = 1024


def compactness_metrics(features: np.ndarray, labels: np.ndarray,
                        centers: np.ndarray) -> dict[str, float]:
  """Intra-class spread, inter-class separation and their ratio.

  Args:
    features: (N, D) features of real (non-padding) examples.
    labels: (N,) their labels, in [0, num_classes).
    centers: (num_classes, D) the learned class centers.

  Returns:
    `intra_class_spread`: mean Euclidean distance of a feature to its class
      center; `inter_class_min_distance` / `inter_class_mean_distance`: the
      min and mean distance between the centers of distinct classes present in
      `labels` (of a fixed random subset of `MAX_SEPARATION_CLASSES` when
      more are present); `spread_to_separation`: spread / mean distance (lower is more
      discriminative, and scale-free, so it compares runs whose features have
      different norms).

  Examples:
    Each feature 1 away from its center, the two centers 5 apart:

    >>> import numpy as np
    >>> from centerloss_jax.metrics import compactness_metrics
    >>> features = np.array([[1., 0.], [-1., 0.], [3., 5.], [3., 3.]])
    >>> labels = np.array([0, 0, 1, 1])
    >>> centers = np.array([[0., 0.], [3., 4.]])
    >>> for name, value in compactness_metrics(features, labels,
    ...                                        centers).items():
    ...   print(name, value)
    intra_class_spread 1.0
    inter_class_min_distance 5.0
    inter_class_mean_distance 5.0
    spread_to_separation 0.2
  """
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  centers = np.asarray(centers, np.float64)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f'features (N, D) and labels (N,) expected, got shapes '
                     f'{features.shape} and {labels.shape}.')
  if len(features) == 0:
    raise ValueError('compactness_metrics needs at least one example.')
  spread = np.linalg.norm(features - centers[labels], axis=1).mean()
  present = np.unique(labels)
  if len(present) > MAX_SEPARATION_CLASSES:
    # A fixed random subset: an unbiased estimate of the mean distance.
    present = np.sort(np.random.default_rng(0).choice(
        present, MAX_SEPARATION_CLASSES, replace=False))
  present = centers[present]
  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b (in float64): no (K, K, D) broadcast.
  norms = np.sum(present**2, axis=1)
  distances = np.sqrt(np.maximum(
      norms[:, None] + norms[None] - 2 * present @ present.T, 0.0))
  pairs = distances[np.triu_indices(len(present), k=1)]
  if len(pairs) == 0:
    min_distance = mean_distance = float('nan')
  else:
    min_distance, mean_distance = pairs.min(), pairs.mean()
  return {
      'intra_class_spread': float(spread),
      'inter_class_min_distance': float(min_distance),
      'inter_class_mean_distance': float(mean_distance),
      'spread_to_separation': float(spread / mean_distance)
                              if mean_distance > 0 else float('inf'),
  }

