"""The open-set face protocols on identities never seen in training.

`open_set_metrics` runs what the paper reports: LFW-style verification
(`verification`) and MegaFace-style identification (`identification`).
Numpy only; the features come from a caller-supplied function.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from centerloss_jax.data.types import Dataset
from centerloss_jax.metrics import identification
from centerloss_jax.metrics import verification

def open_set_metrics(extract_features: Callable[[Any], np.ndarray],
                     dataset: Dataset, *, pca_dim: Optional[int] = None,
                     max_rank: int = 10,
                     distractor_block_size: int = 65_536
                     ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
  """Verification and identification metrics of unseen identities.

  Args:
    extract_features: maps uint8 images (N, H, W, C) (an ndarray or a lazy
      array-like) to their (N, F) test features (with the mirror
      concatenated, if the config says so).
    dataset: its `verification` (PairsSet) and `identification`
      (IdentificationSet) are used when present.
    pca_dim: PCA dimension fitted on the training folds of verification;
      None: no PCA.
    max_rank: the length of the identification CMC.
    distractor_block_size: distractors scored at a time (bounds memory).

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
            pairs.fold, pca_dim=pca_dim))
    metrics.update({f'{pairs.name}/{k}': v for k, v in report.items()})
  ident = dataset.identification
  if ident is not None:
    report, curves['cmc'][ident.name] = (
        identification.identification_report_and_cmc(
            extract_features(ident.probes.images), ident.probes.labels,
            extract_features(ident.distractors),
            max_rank=max_rank, block_size=distractor_block_size))
    metrics.update({f'{ident.name}/{k}': v for k, v in report.items()})
  return metrics, curves

