"""Test features for the open-set protocols: one compiled step, every image.

Face datasets carry identities unseen in training; at each evaluation
`evaluate_open_set` runs the verification (LFW) and identification
(MegaFace) protocols of `metrics.open_set` on them, with `feature_step`'s
image + mirror features.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from centerloss_jax import data
from centerloss_jax import metrics
from centerloss_jax.training import parallel
from centerloss_jax.training.state import TrainState
from centerloss_jax.training.steps import apply_model
from centerloss_jax.training.steps import Batch
from centerloss_jax.training.steps import ClassLayout
from centerloss_jax.training.steps import Metrics
from centerloss_jax.training.steps import ReplicatedClasses

def feature_step(state: TrainState, batch: Batch, *, mirror: bool,
                 classes: ClassLayout = ReplicatedClasses(),
                 axis_name: Optional[str] = None
                 ) -> tuple[Metrics, dict[str, jax.Array]]:
  """Test features of one batch, for open-set (face) evaluation.

  With `mirror`, the paper's test feature: the features of each image and of
  its horizontal mirror, concatenated (2D values). One forward pass of the
  2b images rather than two passes.

  Args:
    state: the (placed) train state.
    batch: {'image', 'index' (each image's position in its set), 'weight'}.
    mirror: concatenate the mirror image's features.
    classes: where the classes live; the model runs without its classifier
      when they are sharded.
    axis_name: unused (per-example work, nothing to reduce).

  Returns:
    ({} (no metrics), {'feature': (b, D or 2D), 'index', 'weight'}), in the
    `(metrics, outputs)` form of `DataParallel.compile_eval_step`.
  """
  del axis_name  # Per-example: nothing to reduce.
  params = classes.model_params(state.params)
  images = batch['image']
  if mirror:
    images = jnp.concatenate([images, jnp.flip(images, axis=2)])
  features, _, _ = apply_model(state, params, images, train=False)
  if mirror:
    features = jnp.concatenate(jnp.split(features, 2), axis=-1)
  return {}, {'feature': features, 'index': batch['index'],
              'weight': batch['weight']}


def compile_feature_step(dp: parallel.DataParallel, *, mirror: bool,
                         classes: ClassLayout = ReplicatedClasses()):
  """`feature_step` compiled once for `dp`."""
  return dp.compile_eval_step(functools.partial(
      feature_step, mirror=mirror, classes=classes))


def extract_features(feature_fn, dp: parallel.DataParallel, state: TrainState,
                     images: Any, *, batch_size: int) -> np.ndarray:
  """Test features of uint8 images, on every process.

  Args:
    feature_fn: from `compile_feature_step`.
    dp: the DataParallel `state` is laid out for.
    state: the (placed) train state.
    images: uint8 (N, H, W, C), an ndarray or a lazy array-like
      (`data.image_files.ImageFiles`); each process reads only its share of
      a batch.
    batch_size: the global batch size.

  Returns:
    float32 (N, F) features, row i of image i (placed by each example's
    index, so a mesh that interleaves processes cannot reorder them).
  """
  num_images = len(images)
  split = data.Split(
      images=images, labels=np.arange(num_images, dtype=np.int32),
      name='features')
  features = None
  for batch in data.epoch_batches(
      split, global_batch_size=batch_size, epoch=0, seed=0, shuffle=False,
      process_index=jax.process_index(), process_count=jax.process_count()):
    # The split's labels are the images' indices: pass them on as such.
    batch['index'] = batch.pop('label')
    _, outputs = feature_fn(state, dp.put_batch(batch))
    outputs = parallel.fetch_global(outputs)
    if features is None:
      features = np.zeros((num_images, outputs['feature'].shape[-1]),
                          np.float32)
    real = outputs['weight'] > 0
    features[outputs['index'][real]] = outputs['feature'][real]
  return features


def evaluate_open_set(feature_fn, dp: parallel.DataParallel,
                      state: TrainState, dataset: data.Dataset, *,
                      batch_size: int, pca_dim: Optional[int] = None,
                      max_rank: int = 10,
                      distractor_block_size: int = 65_536
                      ) -> tuple[dict[str, float], dict[str, Any]]:
  """Verification and identification on the dataset's unseen identities.

  Args:
    feature_fn: from `compile_feature_step`.
    dp: the DataParallel `state` is laid out for.
    state: the (placed) train state.
    dataset: with `verification` and/or `identification` sets.
    batch_size: the global batch size of the feature steps.
    pca_dim: PCA dimension fitted on the training folds of verification;
      None: no PCA.
    max_rank: the length of the identification CMC.
    distractor_block_size: distractors scored at a time (bounds memory).

  Returns:
    Flat metrics named '<set>/<metric>' (e.g. 'lfw/accuracy') and the curves
    `{'roc': {set: (far, tar)}, 'cmc': {set: cmc}}` (see
    `metrics.open_set_metrics`); both empty when the dataset has neither
    set.
  """
  if dataset.verification is None and dataset.identification is None:
    return {}, {}
  return metrics.open_set_metrics(
      functools.partial(extract_features, feature_fn, dp, state,
                        batch_size=batch_size),
      dataset, pca_dim=pca_dim, max_rank=max_rank,
      distractor_block_size=distractor_block_size)

