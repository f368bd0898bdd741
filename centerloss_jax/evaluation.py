"""Feature-space metrics: how compact classes are and how far apart.

Center loss exists to make features *discriminative*: small intra-class
variation, large inter-class distance (Wen et al. 2016, Sec. 1). These
numbers measure exactly that, on held-out features, next to the accuracy.
"""

from __future__ import annotations

import numpy as np


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
      `labels`; `spread_to_separation`: spread / mean distance (lower is more
      discriminative, and scale-free, so it compares runs whose features have
      different norms).
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
  present = centers[np.unique(labels)]
  distances = np.linalg.norm(present[:, None] - present[None], axis=-1)
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
