"""The steps with the centers and the classifier split along the classes.

For 100K+ identities, whose (C, D) arrays outgrow one device: with
`config.class_shards > 1` the centers and the classifier kernel are split
along the classes over a `'classes'` mesh axis, and `steps.train_step` /
`steps.eval_step` run with `ShardedClasses`, built from the primitives of
`centerloss_jax.losses.class_sharded`. Same objective, normalisation, Eq. 4
update and metrics as the replicated steps.

Per device of a `(batch, classes)` mesh under `jax.shard_map` (check_vma
off): the batch is this batch replica's share, identical on its class
shards; `state.centers` is this device's (C / M, D) rows,
`state.params['classifier']['kernel']` its (D, C / M) columns (and so are
the kernel's optimizer-state twins), the rest replicated.

Gradients: the backbone's are `psum`-ed over the batch axis as in the
replicated step; the kernel's are not, since every batch replica computes
them from the whole global batch (`class_sharded_logits`). The optimizer
acts on each shard alone, which is exact for the elementwise SGD/AdamW of
`state.create_optimizer` (a global-norm clip would not be).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from centerloss_jax.losses import class_sharded
from centerloss_jax.training.parallel import CLASS_AXIS
from centerloss_jax.training.parallel import psum
from centerloss_jax.training.steps import Classification


def split_classifier(params) -> tuple[Any, jax.Array]:
  """(the backbone's params, the class-sharded classifier kernel)."""
  backbone = {k: v for k, v in params.items() if k != 'classifier'}
  return backbone, params['classifier']['kernel']


@dataclasses.dataclass(frozen=True)
class ShardedClasses:
  """The centers' rows and the kernel's columns split over `class_axis`.

  Attributes:
    dtype: the classifier's computation dtype (the model's): the replicated
      model's classifier (a Dense with the model's dtype) casts its input
      and kernel so, and bf16 configs compute in bf16 here too.
    class_axis: the mesh axis the classes are split over.
  """
  dtype: Any = jnp.float32
  class_axis: str = CLASS_AXIS

  def check_losses(self, classifier_loss, pair_loss):
    """Softmax (+ center loss) only: the margin and pair losses need every
    class's scores, or the whole batch's features, on one device."""
    if classifier_loss.kind != 'softmax' or pair_loss is not None:
      raise ValueError(
          'Class-sharded steps support the softmax classifier loss without '
          f'a pair loss, got classifier loss {classifier_loss.kind!r} and '
          f'pair loss {pair_loss.kind if pair_loss else None!r}.')

  def num_classes(self, centers):
    return centers.shape[0] * jax.lax.axis_size(self.class_axis)

  def model_params(self, params):
    """The backbone's: the model runs without its (split) classifier."""
    return split_classifier(params)[0]

  def classification(self, params, features, model_logits, labels, weights,
                     *, classifier_loss, axis_name):
    """The global batch's cross-entropy, on every batch replica.

    `class_sharded_logits` hands each replica only its own rows' feature
    gradient, so the backbone's psum counts every example once; the metrics
    take this replica's own rows.
    """
    del model_logits, classifier_loss  # Softmax only (`check_losses`).
    _, kernel = split_classifier(params)
    logits = class_sharded.class_sharded_logits(
        features.astype(self.dtype), kernel.astype(self.dtype),
        class_axis=self.class_axis, batch_axis=axis_name)
    # The logits are of the global batch: pair them with its labels/weights.
    global_labels, global_weights = jax.lax.all_gather(
        (labels, weights), axis_name, axis=0, tiled=True)
    global_ce = class_sharded.class_sharded_softmax_cross_entropy_loss(
        logits, global_labels, class_axis=self.class_axis, reduction='none')
    return Classification(
        loss_sum=jnp.sum(global_weights * global_ce),
        cross_entropy=_own_rows(global_ce, labels.shape[0], axis_name),
        logits=logits, logit_labels=global_labels)

  def correct(self, classification, axis_name):
    correct = class_sharded.class_sharded_argmax_accuracy(
        classification.logits, classification.logit_labels,
        class_axis=self.class_axis)
    return _own_rows(correct, classification.cross_entropy.shape[0],
                     axis_name)

  def center_loss_terms(self, features, labels, centers, weights, *,
                        normalize):
    return class_sharded.class_sharded_center_loss(
        features, labels, centers, weights, class_axis=self.class_axis,
        normalize=normalize, reduction='none')

  def update_centers(self, centers, features, labels, *, alpha, weights,
                     rule, normalize, axis_name):
    return class_sharded.class_sharded_update_centers(
        centers, features, labels, alpha=alpha, weights=weights, rule=rule,
        normalize=normalize, class_axis=self.class_axis,
        batch_axis=axis_name)

  def center_diagnostic_sums(self, features, labels, centers, new_centers,
                             weights):
    return class_sharded.class_sharded_center_diagnostics(
        features, labels, centers, new_centers, weights,
        class_axis=self.class_axis, reduction='sum')

  def reduce_gradients(self, grads, axis_name):
    backbone_grads, kernel_grad = split_classifier(grads)
    return {**psum(backbone_grads, axis_name),
            'classifier': {'kernel': kernel_grad}}

  def outputs(self, features, classification):
    del features, classification
    return {}


def _own_rows(global_values: jax.Array, rows: int,
              axis_name: str) -> jax.Array:
  """This replica's `rows` rows of a global-batch array."""
  return jax.lax.dynamic_slice_in_dim(
      global_values, jax.lax.axis_index(axis_name) * rows, rows)
