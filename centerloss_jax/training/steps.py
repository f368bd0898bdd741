"""The train and eval steps, written once, per replica.

`train_step` computes the paper's joint objective (Eq. 5)
`CE + lambda * center_loss (+ a pair term)`, differentiates it with respect
to the params only, applies the optimizer, and moves the centers by Eq. 4
computed on the *global* batch. `parallel.DataParallel` runs it under
single-device `jax.jit`, `jax.pmap` or `jax.jit` + `jax.shard_map`.

What depends on where the classes live (the classifier's logits and
cross-entropy, the centers' reads and Eq. 4, the gradient reduction) is a
`classes` layout: `ReplicatedClasses` here, every device holding all
classes, or `class_sharded_steps.ShardedClasses`, the classes split over a
mesh axis. Everything else (masking, the global normaliser, the RNG, the
pair term, the metric sums, the batch-norm statistics) is this module's, the
same for both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import optax

from centerloss_jax import losses
from centerloss_jax.training.objectives import ClassifierLoss
from centerloss_jax.training.objectives import Objective
from centerloss_jax.training.objectives import PairLoss
from centerloss_jax.training.parallel import psum
from centerloss_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Classification:
  """The classification term of one replica's batch.

  Attributes:
    loss_sum: what this replica adds to the objective's numerator (divided
      by the global weight by the step).
    cross_entropy: (b,) this replica's rows' cross-entropies (unweighted),
      for the metrics.
    logits: the scores to take the argmax of (the model's, without margin).
    logit_labels: the labels of the rows of `logits`.
  """
  loss_sum: jax.Array
  cross_entropy: jax.Array
  logits: jax.Array
  logit_labels: jax.Array


class ClassLayout(Protocol):
  """Where the classes (centers, classifier) live; see the module doc."""

  def check_losses(self, classifier_loss: ClassifierLoss,
                   pair_loss: Optional[PairLoss]) -> None:
    """Raises for a loss this layout does not compute."""

  def num_classes(self, centers: jax.Array) -> int:
    """C, all shards together, from this device's centers."""

  def model_params(self, params: Any) -> Any:
    """The params the model's `apply_fn` takes."""

  def classification(self, params: Any, features: jax.Array,
                     model_logits: Optional[jax.Array], labels: jax.Array,
                     weights: jax.Array, *, classifier_loss: ClassifierLoss,
                     axis_name: Optional[str]) -> Classification:
    """The classification term of the batch."""

  def correct(self, classification: Classification,
              axis_name: Optional[str]) -> jax.Array:
    """(b,) bool: this replica's rows' argmax == label."""

  def center_loss_terms(self, features: jax.Array, labels: jax.Array,
                        centers: jax.Array, weights: jax.Array, *,
                        normalize: bool) -> jax.Array:
    """(b,) weighted center-loss terms (Eq. 2's summands)."""

  def update_centers(self, centers: jax.Array, features: jax.Array,
                     labels: jax.Array, *, alpha: float, weights: jax.Array,
                     rule: str, normalize: bool,
                     axis_name: Optional[str]) -> jax.Array:
    """Eq. 4 on this device's centers, from the global batch."""

  def center_diagnostic_sums(self, features: jax.Array, labels: jax.Array,
                             centers: jax.Array, new_centers: jax.Array,
                             weights: jax.Array) -> dict[str, jax.Array]:
    """This replica's weighted sums of `losses.DIAGNOSTICS`."""

  def reduce_gradients(self, grads: Any, axis_name: Optional[str]) -> Any:
    """The gradient of the global objective from this replica's."""

  def global_norm(self, grads: Any) -> jax.Array:
    """The L2 norm of all of the reduced gradients, every shard's together
    (the same on every device)."""

  def outputs(self, features: jax.Array,
              classification: Classification) -> dict[str, jax.Array]:
    """Per-example eval outputs besides the batch's own fields."""


@dataclasses.dataclass(frozen=True)
class ReplicatedClasses:
  """Every device holds all the centers and the whole classifier."""

  def check_losses(self, classifier_loss, pair_loss):
    del classifier_loss, pair_loss  # Every objective runs replicated.

  def num_classes(self, centers):
    return centers.shape[0]

  def model_params(self, params):
    return params

  def classification(self, params, features, model_logits, labels, weights,
                     *, classifier_loss, axis_name):
    del params, axis_name  # The model applied its own classifier.
    cross_entropy = losses.softmax_cross_entropy_loss(
        classifier_loss.training_logits(model_logits, features, labels),
        labels, reduction='none')
    return Classification(loss_sum=jnp.sum(weights * cross_entropy),
                          cross_entropy=cross_entropy,
                          logits=model_logits, logit_labels=labels)

  def correct(self, classification, axis_name):
    del axis_name
    return (jnp.argmax(classification.logits, -1)
            == classification.logit_labels)

  def center_loss_terms(self, features, labels, centers, weights, *,
                        normalize):
    return losses.center_loss(features, labels, centers, weights,
                              normalize=normalize, reduction='none')

  def update_centers(self, centers, features, labels, *, alpha, weights,
                     rule, normalize, axis_name):
    return losses.update_centers(centers, features, labels, alpha=alpha,
                                 weights=weights, rule=rule,
                                 normalize=normalize, axis_name=axis_name)

  def center_diagnostic_sums(self, features, labels, centers, new_centers,
                             weights):
    return losses.center_diagnostics(features, labels, centers, new_centers,
                                     weights, reduction='sum')

  def reduce_gradients(self, grads, axis_name):
    return psum(grads, axis_name)

  def global_norm(self, grads):
    return optax.tree.norm(grads)

  def outputs(self, features, classification):
    del features
    return {'logits': classification.logits}


def clip_by_global_norm(grads: Any, norm: jax.Array,
                        max_norm: float) -> Any:
  """`grads` scaled to global norm `max_norm` if `norm` exceeds it.

  The rule of `optax.clip_by_global_norm`, value for value, with the norm
  given: under class sharding a clip inside the optimizer would see only
  this device's shard of the classifier, so the step computes the norm
  (`ClassLayout.global_norm`) and clips before the optimizer.
  """
  keep = norm < max_norm
  return jax.tree.map(
      lambda g: jax.lax.select(keep, g, (g / norm.astype(g.dtype)) * max_norm),
      grads)


def apply_model(state: TrainState, params, images, *, train: bool,
                rng: Optional[jax.Array] = None):
  """Runs the model; returns (features, logits, new batch_stats)."""
  variables = {'params': params}
  rngs = {'dropout': rng} if rng is not None else None
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
    (features, logits), updates = state.apply_fn(
        variables, images, train=train, rngs=rngs,
        mutable=['batch_stats'] if train else False)
    return (features, logits,
            updates['batch_stats'] if train else state.batch_stats)
  features, logits = state.apply_fn(variables, images, train=train, rngs=rngs)
  return features, logits, state.batch_stats


def _step_rng(state: TrainState, axis_name: Optional[str]) -> jax.Array:
  """The dropout key of this step and replica."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def metric_sums(features, labels, batch_weights, *, num_classes,
                cross_entropy, correct, center_loss_terms,
                center_diagnostic_sums, axis_name) -> Metrics:
  """Metric sums over the global batch from this replica's per-example terms.

  Sums rather than means so that batches (and replicas, and a padded final
  batch) combine exactly; `trainer.summarize` divides by `weight`.

  Args:
    features: (b, D) this replica's features.
    labels: (b,) their labels.
    batch_weights: (b,) the batch's weights (invalid labels not yet masked).
    num_classes: C, all shards together.
    cross_entropy: (b,) per-example cross-entropy (softmax or margin).
    correct: (b,) bool, argmax == label.
    center_loss_terms: (b,) center-loss terms, already weighted (with
      invalid labels masked).
    center_diagnostic_sums: this replica's sums of `losses.DIAGNOSTICS`
      (feature-to-center distance, center norm and movement per example).
    axis_name: the replica axis, or None.
  """
  invalid_labels = losses.invalid_label_count(
      labels, num_classes, batch_weights, axis_name=axis_name)
  weights = losses.common.effective_weights(labels, num_classes,
                                            batch_weights)
  sums = {
      'cross_entropy': jnp.sum(weights * cross_entropy),
      'center_loss': jnp.sum(center_loss_terms),
      **center_diagnostic_sums,
      'accuracy': jnp.sum(weights * correct),
      'feature_norm': jnp.sum(weights * jnp.linalg.norm(features, axis=-1)),
      'weight': jnp.sum(weights),
  }
  sums = psum(sums, axis_name)
  sums['invalid_labels'] = invalid_labels
  return sums


def train_step(state: TrainState, batch: Batch, *, objective: Objective,
               classes: ClassLayout = ReplicatedClasses(),
               grad_clip_norm: Optional[float] = None,
               axis_name: Optional[str] = None
               ) -> tuple[TrainState, Metrics]:
  """One optimizer step on Eq. 5 and Eq. 4 on the centers.

  Written per replica: with `axis_name`, `batch` is this replica's share of
  the global batch, losses are normalised by the global sum of weights (so
  the reduced gradients are those of the global mean), and the centers are
  updated from the all-gathered global batch, identically on every replica.

  Examples with weight 0 (padding) or an out-of-range label are ignored by
  every term; the latter are counted in `metrics['invalid_labels']`.

  Args:
    state: the current TrainState (donated by the compiled step); with
      sharded classes, this device's part of it.
    batch: {'image': (b, H, W, C), 'label': (b,) int, 'weight': (b,)}.
    objective: the terms of the loss and the centers' rate.
    classes: where the classes live (default: on every device).
    grad_clip_norm: if set, the reduced gradients are clipped to this global
      norm before the optimizer (`clip_by_global_norm`), and the metrics
      gain 'grad_norm', the norm before clipping.
    axis_name: the replica axis under pmap/shard_map, None under plain jit.

  Returns:
    The new state and metric sums over the global batch (see
    `trainer.summarize`).
  """
  classes.check_losses(objective.classifier_loss, objective.pair_loss)
  labels = batch['label']
  num_classes = classes.num_classes(state.centers)
  weights = losses.common.effective_weights(labels, num_classes,
                                            batch['weight'])
  # The global normaliser: each replica divides its sums by it, so the psum of
  # per-replica gradients is exactly the gradient of the global-batch mean.
  total_weight = jnp.maximum(psum(jnp.sum(weights), axis_name),
                             losses.EPSILON)
  rng = _step_rng(state, axis_name)
  pair_loss = objective.pair_loss

  def loss_fn(params):
    features, model_logits, batch_stats = apply_model(
        state, classes.model_params(params), batch['image'], train=True,
        rng=rng)
    classification = classes.classification(
        params, features, model_logits, labels, weights,
        classifier_loss=objective.classifier_loss, axis_name=axis_name)
    distances = classes.center_loss_terms(
        features, labels, state.centers, weights,
        normalize=objective.center_normalize)
    loss = (classification.loss_sum / total_weight
            + objective.center_loss_weight * jnp.sum(distances) / total_weight)
    pair_terms = {}
    if pair_loss is not None:
      pair_sum, pair_count, positives = pair_loss.sums(
          features, labels, weights, axis_name)
      loss += pair_loss.weight * pair_sum / jnp.maximum(pair_count, 1)
      pair_terms = {'pair_loss': pair_sum, 'pair_count': pair_count,
                    'pair_positives': positives}
    # The per-example terms come back for the metrics, not computed twice.
    return loss, (features, batch_stats, classification, distances,
                  pair_terms)

  grads, (features, batch_stats, classification, distances, pair_terms) = (
      jax.grad(loss_fn, has_aux=True)(state.params))
  grads = classes.reduce_gradients(grads, axis_name)
  if grad_clip_norm is not None:
    grad_norm = classes.global_norm(grads)
    grads = clip_by_global_norm(grads, grad_norm, grad_clip_norm)
  # Centers by Eq. 4 from the same batch and the same (pre-update) centers
  # the loss used: the paper's Algorithm 1.
  centers = classes.update_centers(
      state.centers, features, labels, alpha=objective.center_alpha,
      weights=weights, rule=objective.center_rule,
      normalize=objective.center_normalize, axis_name=axis_name)
  metrics = metric_sums(
      features, labels, batch['weight'], num_classes=num_classes,
      cross_entropy=classification.cross_entropy,
      correct=classes.correct(classification, axis_name),
      center_loss_terms=distances,
      center_diagnostic_sums=classes.center_diagnostic_sums(
          features, labels, state.centers, centers, weights),
      axis_name=axis_name)
  if pair_terms:
    # The count is already global; the other sums are per replica.
    metrics['pair_loss'] = psum(pair_terms['pair_loss'], axis_name)
    metrics['pair_count'] = pair_terms['pair_count']
    # Summarised per example: how much the pair term has to work with.
    metrics['pair_positives'] = psum(pair_terms['pair_positives'], axis_name)
  if grad_clip_norm is not None:
    # A sum like the others (the norm times the global weight), so that over
    # several steps `summarize` gives the example-weighted mean norm.
    metrics['grad_norm'] = grad_norm * metrics['weight']
  if axis_name is not None and state.batch_stats:
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  state = state.apply_gradients(grads=grads, centers=centers,
                                batch_stats=batch_stats)
  return state, metrics


def eval_step(state: TrainState, batch: Batch, *,
              classifier_loss: ClassifierLoss = ClassifierLoss(),
              center_normalize: bool = False,
              classes: ClassLayout = ReplicatedClasses(),
              axis_name: Optional[str] = None
              ) -> tuple[Metrics, dict[str, jax.Array]]:
  """Evaluates one batch: metric sums and the per-example features.

  The center-loss metric is the objective's (cosine with
  `center_normalize`); the centers are only read.

  The cross-entropy is `classifier_loss`'s (with its margin); the accuracy
  is the argmax of the model's scores (no margin at test time).

  Returns:
    (metric sums over the global batch, per-example outputs of this
    replica's examples: 'feature' (b, D), the batch's 'label' and 'weight',
    so outputs gathered from all replicas stay aligned, and with replicated
    classes 'logits' (b, C); a class-sharded step returns no logits, since
    (batch, C) is what class sharding exists not to gather).
  """
  classes.check_losses(classifier_loss, None)
  labels = batch['label']
  num_classes = classes.num_classes(state.centers)
  weights = losses.common.effective_weights(labels, num_classes,
                                            batch['weight'])
  features, model_logits, _ = apply_model(
      state, classes.model_params(state.params), batch['image'], train=False)
  classification = classes.classification(
      state.params, features, model_logits, labels, weights,
      classifier_loss=classifier_loss, axis_name=axis_name)
  metrics = metric_sums(
      features, labels, batch['weight'], num_classes=num_classes,
      cross_entropy=classification.cross_entropy,
      correct=classes.correct(classification, axis_name),
      center_loss_terms=classes.center_loss_terms(
          features, labels, state.centers, weights,
          normalize=center_normalize),
      # Nothing moves in evaluation: no center_movement.
      center_diagnostic_sums={
          name: value for name, value in classes.center_diagnostic_sums(
              features, labels, state.centers, state.centers,
              weights).items() if name != 'center_movement'},
      axis_name=axis_name)
  return metrics, {'feature': features, 'label': labels,
                   'weight': batch['weight'],
                   **classes.outputs(features, classification)}
