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

The classifier loss is softmax or a margin softmax (SphereFace, CosFace,
ArcFace on the cosine classifier), each with the center loss; the pair
losses need `class_shards=1`.

Gradients: the backbone's are `psum`-ed over the batch axis as in the
replicated step; the kernel's are not, since every batch replica computes
them from the whole global batch (`class_sharded_logits`). The optimizer
acts on each shard alone, which is exact for the elementwise SGD/AdamW of
`state.create_optimizer`; a global-norm clip (`config.grad_clip_norm`) is
applied by the step before it, with the norm of all shards together
(`global_norm`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

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
    """Every classifier loss (softmax and the margins), + center loss; no
    pair loss, which this layout does not compute."""
    del classifier_loss  # All of `objectives.CLASSIFIER_LOSSES`.
    if pair_loss is not None:
      raise ValueError(
          'Class-sharded steps do not support a pair loss, got '
          f'loss.pair={pair_loss.kind!r}; use class_shards=1 for it.')

  def num_classes(self, centers):
    return centers.shape[0] * jax.lax.axis_size(self.class_axis)

  def model_params(self, params):
    """The backbone's: the model runs without its (split) classifier."""
    return split_classifier(params)[0]

  def classification(self, params, features, model_logits, labels, weights,
                     *, classifier_loss, axis_name):
    """The global batch's cross-entropy, on every batch replica.

    The linear classifier's logits (softmax) or the cosine classifier's
    cosines with the margin at the label (SphereFace, CosFace, ArcFace),
    scored against this device's classes. Either hands each replica only
    its own rows' feature gradient, so the backbone's psum counts every
    example once; the metrics take this replica's own rows.
    """
    del model_logits  # The model ran without its (split) classifier.
    _, kernel = split_classifier(params)
    # The scores are of the global batch: pair them with its labels/weights.
    global_labels, global_weights = jax.lax.all_gather(
        (labels, weights), axis_name, axis=0, tiled=True)
    if classifier_loss.kind == 'softmax':
      logits = class_sharded.class_sharded_logits(
          features.astype(self.dtype), kernel.astype(self.dtype),
          class_axis=self.class_axis, batch_axis=axis_name)
      training_logits = logits
    else:
      # Float32 like the replicated `CosineClassifier`, whatever the dtype.
      logits, training_logits = class_sharded.class_sharded_margin_logits(
          classifier_loss.kind, features, kernel, global_labels,
          class_axis=self.class_axis, batch_axis=axis_name,
          **dict(classifier_loss.hparams))
    global_ce = class_sharded.class_sharded_softmax_cross_entropy_loss(
        training_logits, global_labels, class_axis=self.class_axis,
        reduction='none')
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

  def global_norm(self, grads):
    """The backbone's squared norm (replicated) plus the kernel shards'
    summed over the class axis: the norm of the whole, unsplit gradient."""
    backbone_grads, kernel_grad = split_classifier(grads)
    kernel_squared = jnp.sum(jnp.square(kernel_grad.astype(jnp.float32)))
    return jnp.sqrt(optax.tree.norm(backbone_grads, squared=True)
                    + jax.lax.psum(kernel_squared, self.class_axis))

  def outputs(self, features, classification):
    del features, classification
    return {}


def _own_rows(global_values: jax.Array, rows: int,
              axis_name: str) -> jax.Array:
  """This replica's `rows` rows of a global-batch array."""
  return jax.lax.dynamic_slice_in_dim(
      global_values, jax.lax.axis_index(axis_name) * rows, rows)
