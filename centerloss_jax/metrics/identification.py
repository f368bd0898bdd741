"""Face identification with distractors (MegaFace protocol), in numpy.

MegaFace (Kemelmacher-Shlizerman et al., CVPR 2016) measures identification
in a gallery flooded with distractors: every probe image p of an identity
with n >= 2 images is paired with each other image m of that identity, and m
is the only mate in a gallery of m plus all M distractors. The pair's rank is
1 + the number of distractors whose cosine with p is *strictly* higher than
cosine(p, m): a distractor tied with the mate does not push it down. The
rank-k identification rate is the fraction of (p, m) pairs with rank <= k;
the CMC curve is that rate for k = 1..max_rank.

Only each probe's `max_rank` highest distractor scores matter for ranks up to
`max_rank`, so `top_distractor_scores` streams the distractors in blocks and
keeps a running top-k per probe: memory O(probes x (k + block)) rather than
the probes x 1M score matrix.
"""

from __future__ import annotations

import numpy as np

from centerloss_jax.metrics import verification


def _unit_rows(features: np.ndarray) -> np.ndarray:
  """Rows scaled to unit norm; zero rows stay zero (cosine 0 with all)."""
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return features / np.where(norms > 0, norms, 1)


def _check_finite(features: np.ndarray, name: str) -> None:
  """Raises ValueError if `features` holds NaN or inf (they break ranks)."""
  if not np.all(np.isfinite(features)):
    raise ValueError(f'{name} must be finite, got NaN or inf.')


def top_distractor_scores(probe_features, distractor_features, *, k: int,
                          block_size: int = 65536) -> np.ndarray:
  """Each probe's k highest cosine scores against the distractors.

  The distractors are scored `block_size` at a time; after each block the
  scores are merged with the running top-k (`np.argpartition`, linear time)
  so memory stays O(P x (k + block_size)), never P x M.

  Args:
    probe_features: (P, D) probe features.
    distractor_features: (M, D) distractor features (any M >= 0).
    k: how many scores to keep per probe, >= 1.
    block_size: distractors scored at once, >= 1.

  Returns:
    (P, k) scores sorted in decreasing order along each row. With fewer than
    k distractors the rows end in -inf (a distractor that does not exist
    outranks nothing).

  Raises:
    ValueError: on bad shapes, k or block_size < 1, or non-finite features.
  """
  probes = verification.as_features(probe_features, 'probe_features',
                                    dtype=np.float32)
  distractors = verification.as_features(
      distractor_features, 'distractor_features', dtype=np.float32)
  if distractors.shape[1] != probes.shape[1]:
    raise ValueError(
        f'distractor_features must have D = {probes.shape[1]} columns like '
        f'probe_features, got shape {distractors.shape}.')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}.')
  if block_size < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}.')
  _check_finite(probes, 'probe_features')
  dtype = np.result_type(probes, distractors)
  probes = _unit_rows(probes.astype(dtype, copy=False))
  top = np.full((probes.shape[0], k), -np.inf, dtype)
  for start in range(0, distractors.shape[0], block_size):
    block = distractors[start:start + block_size].astype(dtype, copy=False)
    _check_finite(block, 'distractor_features')
    candidates = np.concatenate([top, probes @ _unit_rows(block).T], axis=1)
    # Keep the k largest (in any order): partition the negated scores.
    keep = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(candidates, keep, axis=1)
  return -np.sort(-top, axis=1)


def cmc(probe_features, probe_labels, distractor_features, *,
        max_rank: int = 10, block_size: int = 65536) -> dict:
  """MegaFace cumulative match characteristic, rank 1..max_rank.

  Identities with a single probe image have no mate for it and contribute no
  pairs (their images are not in the gallery either: the gallery of a pair
  is its mate plus the distractors only).

  Scores are cosines (zero features score 0). Ranks use exact float
  comparison, so a distractor ties the mate only when both scores compute to
  the same float; it is then not counted against the probe.

  Args:
    probe_features: (P, D) probe features.
    probe_labels: (P,) identity of each probe (any comparable dtype).
    distractor_features: (M, D) distractor features.
    max_rank: the longest rank reported, >= 1.
    block_size: distractors scored at once (see `top_distractor_scores`).

  Returns:
    `rank1` (float), `cmc` ((max_rank,) array: the rank-k identification rate
    at index k - 1) and `num_pairs` (int, the number of (probe, mate) pairs).

  Raises:
    ValueError: on bad shapes, max_rank < 1, or no identity with two or more
      probe images.

  Examples:
    Identity 0's two images are orthogonal, and the distractor outscores
    each one's mate (rank 2); identity 1's images coincide (rank 1):

    >>> import numpy as np
    >>> from centerloss_jax.metrics import identification
    >>> probes = np.array([[1., 0.], [0., 1.], [-1., 0.], [-1., 0.]])
    >>> labels = np.array([0, 0, 1, 1])
    >>> distractors = np.array([[1., 1.]])
    >>> result = identification.cmc(probes, labels, distractors, max_rank=2)
    >>> print(result['rank1'], result['cmc'], result['num_pairs'])
    0.5 [0.5 1. ] 4
  """
  probes = verification.as_features(probe_features, 'probe_features',
                                    dtype=np.float32)
  probe_labels = np.asarray(probe_labels)
  if probe_labels.shape != probes.shape[:1]:
    raise ValueError(f'probe_labels must have shape (P,) = '
                     f'({probes.shape[0]},), got shape {probe_labels.shape}.')
  if max_rank < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}.')
  _, identity, counts = np.unique(probe_labels, return_inverse=True,
                                  return_counts=True)
  if not np.any(counts >= 2):
    raise ValueError(
        f'cmc needs an identity with at least 2 probe images to form '
        f'(probe, mate) pairs; all {len(counts)} identities have one.')
  top = top_distractor_scores(probes, distractor_features, k=max_rank,
                              block_size=block_size)
  unit_probes = _unit_rows(probes.astype(top.dtype, copy=False))
  hits = np.zeros(max_rank, np.int64)
  num_pairs = 0
  for group_id in np.flatnonzero(counts >= 2):
    members = np.flatnonzero(identity == group_id)
    group = unit_probes[members]
    mate_scores = group @ group.T  # (n, n); row: probe, column: mate.
    # Distractors strictly above each mate score, counted up to max_rank.
    outranking = np.sum(top[members, None, :] > mate_scores[:, :, None],
                        axis=-1)
    not_self = ~np.eye(len(members), dtype=bool)
    ranks = 1 + outranking[not_self]
    hits += np.sum(ranks[:, None] <= np.arange(1, max_rank + 1), axis=0)
    num_pairs += ranks.size
  rates = hits / num_pairs
  return {'rank1': float(rates[0]), 'cmc': rates, 'num_pairs': num_pairs}


def identification_report(probe_features, probe_labels, distractor_features,
                          *, max_rank: int = 10,
                          block_size: int = 65536) -> dict[str, float]:
  """Identification metrics as a flat dict of floats, for metric writers.

  Args:
    probe_features: (P, D) probe features.
    probe_labels: (P,) identity of each probe.
    distractor_features: (M, D) distractor features.
    max_rank: longest rank computed, >= 1.
    block_size: distractors scored at once.

  Returns:
    `rank1`, `rank5` (if max_rank >= 5), `rank10` (if max_rank >= 10),
    `num_pairs` and `num_distractors`.

  Raises:
    ValueError: as `cmc`.

  Examples:
    >>> import numpy as np
    >>> from centerloss_jax.metrics import identification
    >>> probes = np.array([[1., 0.], [0., 1.], [-1., 0.], [-1., 0.]])
    >>> labels = np.array([0, 0, 1, 1])
    >>> distractors = np.array([[1., 1.]])
    >>> print(identification.identification_report(
    ...     probes, labels, distractors, max_rank=5))
    {'rank1': 0.5, 'rank5': 1.0, 'num_pairs': 4.0, 'num_distractors': 1.0}
  """
  return identification_report_and_cmc(
      probe_features, probe_labels, distractor_features, max_rank=max_rank,
      block_size=block_size)[0]


def identification_report_and_cmc(
    probe_features, probe_labels, distractor_features, *, max_rank: int = 10,
    block_size: int = 65536) -> tuple[dict[str, float], np.ndarray]:
  """`identification_report` and the (max_rank,) CMC it was read from."""
  result = cmc(probe_features, probe_labels, distractor_features,
               max_rank=max_rank, block_size=block_size)
  report = {'rank1': result['rank1']}
  for rank in (5, 10):
    if max_rank >= rank:
      report[f'rank{rank}'] = float(result['cmc'][rank - 1])
  report['num_pairs'] = float(result['num_pairs'])
  report['num_distractors'] = float(np.shape(distractor_features)[0])
  return report, result['cmc']
