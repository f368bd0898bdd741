"""Feature-space metrics: compactness, separation, open-set face protocols.

Center loss exists to make features *discriminative*: small intra-class
variation, large inter-class distance (Wen et al. 2016, Sec. 1).
`compactness_metrics` measures exactly that on held-out features of the
training classes; `open_set_metrics` runs the face protocols the paper
reports (LFW-style verification, MegaFace-style identification) on
identities never seen in training.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from centerloss_jax import identification
from centerloss_jax import input_pipeline
from centerloss_jax import verification

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


def open_set_metrics(extract_features: Callable[[Any], np.ndarray],
                     dataset: input_pipeline.Dataset, eval_config: Any
                     ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
  """Verification and identification metrics of unseen identities.

  Args:
    extract_features: maps uint8 images (N, H, W, C) (an ndarray or a lazy
      array-like) to their (N, F) test features (with the mirror
      concatenated, if the config says so).
    dataset: its `verification` (PairsSet) and `identification`
      (IdentificationSet) are used when present.
    eval_config: `config.evaluation` (`pca_dim`, `max_rank`,
      `distractor_block_size`).

  Returns:
    Metrics named '<set name>/<metric>', and the curves
    `{'roc': {set name: (far, tar)}, 'cmc': {set name: (max_rank,) rates}}`.
  """
  metrics, curves = {}, {'roc': {}, 'cmc': {}}
  pairs = dataset.verification
  if pairs is not None:
    features = extract_features(pairs.images)
    report, curves['roc'][pairs.name] = (
        verification.verification_report_and_roc(
            features[pairs.left], features[pairs.right], pairs.is_same,
            pairs.fold, pca_dim=eval_config.pca_dim))
    metrics.update({f'{pairs.name}/{k}': v for k, v in report.items()})
  ident = dataset.identification
  if ident is not None:
    report, curves['cmc'][ident.name] = (
        identification.identification_report_and_cmc(
            extract_features(ident.probes.images), ident.probes.labels,
            extract_features(ident.distractors),
            max_rank=eval_config.max_rank,
            block_size=eval_config.distractor_block_size))
    metrics.update({f'{ident.name}/{k}': v for k, v in report.items()})
  return metrics, curves
