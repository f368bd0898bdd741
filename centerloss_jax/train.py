"""Training and evaluation of a classifier with softmax + center loss.

The importable trainer, in the layout of the Flax examples:
`create_train_state`, `train_step`, `eval_step` and `train_and_evaluate`.

`train_step` is written once, per replica. It computes the paper's joint
objective (Eq. 5) `softmax CE + lambda * center_loss`, differentiates it with
respect to the params only, applies the optimizer, and moves the centers by
Eq. 4 computed on the *global* batch. `centerloss_jax.parallel.DataParallel`
runs it under single-device `jax.jit`, `jax.pmap` or `jax.jit` +
`jax.shard_map`. The losses the paper is compared with plug into the same
step (`config.loss`): a margin softmax (SphereFace, CosFace, ArcFace) in
place of the softmax (`ClassifierLoss`), and a contrastive or batch-hard
triplet term on the global batch (`PairLoss`), each with or without the
center loss.

Face datasets carry identities unseen in training; at each evaluation
`evaluate_open_set` runs the verification (LFW) and identification
(MegaFace) protocols on them, with `feature_step`'s image + mirror features.

With `config.class_shards > 1` the centers and the classifier kernel are
split along the classes over a `'model'` mesh axis (for 100K+ identities,
whose (C, D) arrays outgrow one device); `class_sharded_train_step` and
`class_sharded_eval_step` are then the steps, built from the primitives of
`centerloss_jax.sharded`, computing the same objective and metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from typing import Any, Optional

from absl import logging
from clu import parameter_overview
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from centerloss_jax import checkpointing
from centerloss_jax import evaluation
from centerloss_jax import input_pipeline
from centerloss_jax import loss as loss_lib
from centerloss_jax import models
from centerloss_jax.losses import contrastive
from centerloss_jax.losses import margin as margin_lib
from centerloss_jax.losses import triplet
from centerloss_jax import parallel
from centerloss_jax import plotting
from centerloss_jax import sharded
from centerloss_jax import verification
from centerloss_jax import writers
from centerloss_jax.parallel import psum

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Params and optimizer state (from Flax) plus the non-differentiable parts.

  Attributes:
    centers: (num_classes, feature_dim) float32 class centers, moved by Eq. 4,
      never by the optimizer.
    batch_stats: the model's batch-norm statistics ({} for LeNet++).
    rng: PRNG key for stochastic layers (the `'dropout'` stream), folded with
      the step and the replica index in `train_step`.
  """
  centers: jax.Array
  batch_stats: Any
  rng: jax.Array


CLASSIFIER_LOSSES = ('softmax', 'sphereface', 'cosface', 'arcface')
PAIR_LOSSES = ('none', 'contrastive', 'triplet')


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
  """How the model's class scores become the classification loss.

  Attributes:
    kind: 'softmax': the model's linear logits, as they are (the paper's
      L_S); 'sphereface', 'cosface' or 'arcface': the model's cosine
      classifier's outputs, given a margin at the label by
      `losses.margin.margin_logits`.
    hparams: that function's keyword arguments as sorted (name, value)
      pairs (a tuple keeps the dataclass frozen and comparable), e.g.
      (('margin', 0.5), ('scale', 64.0)).
  """
  kind: str = 'softmax'
  hparams: tuple[tuple[str, float], ...] = ()

  @classmethod
  def from_config(cls, loss_config: ml_collections.ConfigDict
                  ) -> ClassifierLoss:
    """From `config.loss` (`classifier`, `margin`, `scale`, ...)."""
    kind = loss_config.classifier
    if kind not in CLASSIFIER_LOSSES:
      raise ValueError(f'Unknown loss.classifier {kind!r}; expected one of '
                       f'{CLASSIFIER_LOSSES}.')
    hparams = {}
    if kind != 'softmax':
      if loss_config.margin is not None:
        hparams['margin'] = loss_config.margin
      if kind == 'sphereface':
        hparams['blend'] = loss_config.sphereface_blend
        if loss_config.scale is not None:
          raise ValueError('loss.scale does not apply to SphereFace (its '
                           f'logits scale with the feature norm), got '
                           f'{loss_config.scale}; leave it None.')
      elif loss_config.scale is not None:
        hparams['scale'] = loss_config.scale
    return cls(kind, tuple(sorted(hparams.items())))

  @property
  def model_classifier(self) -> str:
    """The model head it needs: 'linear' (softmax) or 'cosine' (margins)."""
    return 'linear' if self.kind == 'softmax' else 'cosine'

  def training_logits(self, outputs: jax.Array, features: jax.Array,
                      labels: jax.Array) -> jax.Array:
    """Logits whose softmax cross-entropy is this loss."""
    if self.kind == 'softmax':
      return outputs
    return margin_lib.margin_logits(self.kind, outputs, labels, features,
                                    **dict(self.hparams))


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """A metric-learning term on the global batch, added to Eq. 5.

  Each replica's examples are the anchors; the all-gathered global batch
  holds the candidates, so pairs span replicas exactly as on one device.
  The replica's sum is divided by the global number of pairs (or anchors)
  and the gradients are `psum`-ed, which gives the gradient of the global
  mean (the candidates' share reaches their replicas through the transpose
  of the all-gather).

  Attributes:
    kind: 'contrastive' (all pairs, Hadsell et al. 2006, the paper's
      comparison) or 'triplet' (batch-hard, Hermans et al. 2017).
    weight: its weight in the objective.
    margin: the loss's margin (feature-distance units).
    normalize: L2-normalise the features first.
  """
  kind: str
  weight: float
  margin: float
  normalize: bool = False

  @classmethod
  def from_config(cls, loss_config: ml_collections.ConfigDict
                  ) -> Optional[PairLoss]:
    """From `config.loss.pair*`; None for `pair='none'`."""
    kind = loss_config.pair
    if kind not in PAIR_LOSSES:
      raise ValueError(f'Unknown loss.pair {kind!r}; expected one of '
                       f'{PAIR_LOSSES}.')
    if kind == 'none':
      return None
    if loss_config.pair_weight <= 0 or loss_config.pair_margin <= 0:
      raise ValueError(
          f'loss.pair_weight and loss.pair_margin must be positive for '
          f'pair={kind!r}, got {loss_config.pair_weight} and '
          f'{loss_config.pair_margin}.')
    return cls(kind, float(loss_config.pair_weight),
               float(loss_config.pair_margin), bool(loss_config.pair_normalize))

  def sums(self, features: jax.Array, labels: jax.Array, weights: jax.Array,
           axis_name: Optional[str]
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This replica's loss sum; the global pair (or anchor) count; and this
    replica's positives: same-identity pairs (contrastive) or anchors that
    have one (triplet), which random batches of many identities make rare."""
    if axis_name is None:
      candidates, offset = (features, labels, weights), None
    else:
      candidates = jax.lax.all_gather((features, labels, weights), axis_name,
                                      axis=0, tiled=True)
      offset = jax.lax.axis_index(axis_name) * features.shape[0]
    if self.kind == 'contrastive':
      out = contrastive.contrastive_loss_sums(
          features, labels, weights, *candidates, margin=self.margin,
          anchor_offset=offset, normalize=self.normalize)
      count, positives = out['num_pairs'], out['num_positive_pairs']
    else:
      out = triplet.batch_hard_triplet_loss_sums(
          features, labels, weights, *candidates, margin=self.margin,
          anchor_offset=offset, normalize=self.normalize)
      count = positives = out['num_anchors']
    return out['loss'], psum(count, axis_name), positives


def create_model(config: ml_collections.ConfigDict, num_classes: int, *,
                 use_classifier: bool = True):
  """The model named by `config.model`, returning `(features, logits)`.

  Its head is linear for softmax and cosine for the margin losses
  (`config.loss.classifier`). With `use_classifier=False` it returns
  `(features, None)`: the classifier is then applied by the class-sharded
  step from `params['classifier']`.
  """
  kwargs = dict(config.model)
  name = kwargs.pop('name')
  kwargs['dtype'] = jnp.dtype(kwargs.get('dtype', 'float32'))
  kwargs['classifier'] = ClassifierLoss.from_config(
      config.loss).model_classifier
  if not use_classifier:
    kwargs['use_classifier'] = False
  return models.create_model(name, num_classes=num_classes, **kwargs)


def check_class_shards(config: ml_collections.ConfigDict,
                       num_classes: int) -> int:
  """Validates `config.class_shards` against the mode and the classes.

  Returns:
    The number of class shards (1: the classes are not sharded).

  Raises:
    ValueError: class_shards < 1, > 1 without parallel mode 'shard_map', or
      not dividing num_classes.
  """
  class_shards = config.get('class_shards', 1)
  if class_shards < 1:
    raise ValueError(f'class_shards must be >= 1, got {class_shards}.')
  if class_shards > 1 and config.parallel != 'shard_map':
    raise ValueError(
        f"class_shards={class_shards} needs parallel mode 'shard_map' (a "
        f"2-D ('batch', 'model') mesh), got parallel={config.parallel!r}.")
  if num_classes % class_shards:
    raise ValueError(
        f'class_shards={class_shards} does not divide num_classes='
        f'{num_classes}: every shard must hold as many classes.')
  if class_shards > 1 and (config.loss.classifier != 'softmax'
                           or config.loss.pair != 'none'):
    raise ValueError(
        f'class_shards={class_shards} supports loss.classifier=softmax and '
        f'loss.pair=none only, got {config.loss.classifier!r} and '
        f'{config.loss.pair!r}.')
  return class_shards


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """`config.schedule`: 'constant', 'piecewise' or 'cosine' (with warm-up).

  Piecewise boundaries are given in steps (`config.lr_boundaries`) with the
  factor applied at each (`config.lr_decay_factor`), as in the reference
  Caffe solver (x0.8 at 5K, 8K and 10K iterations).
  """
  lr = config.learning_rate
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'piecewise':
    return optax.piecewise_constant_schedule(
        lr, {int(b): config.lr_decay_factor for b in config.lr_boundaries})
  if config.schedule == 'cosine':
    total = config.num_epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
  raise ValueError(f"Unknown schedule {config.schedule!r}; expected one of "
                   "'constant', 'piecewise', 'cosine'.")


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule
                     ) -> optax.GradientTransformation:
  """SGD with momentum (the reference solver) or AdamW, with weight decay.

  Weight decay is applied to kernels only (not biases or PReLU slopes). It
  cannot reach the centers: they are not params.
  """
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if config.optimizer == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(learning_rate_fn, momentum=config.momentum))
  if config.optimizer == 'adamw':
    return optax.adamw(learning_rate_fn, weight_decay=config.weight_decay,
                       mask=decay_mask)
  raise ValueError(f"Unknown optimizer {config.optimizer!r}; expected 'sgd' "
                   "or 'adamw'.")


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, *,
                       image_shape: tuple[int, ...], num_classes: int,
                       learning_rate_fn: optax.Schedule) -> TrainState:
  """Initialises the model, optimizer and (zero) centers on the host device.

  Args:
    config: experiment config (`model`, optimizer fields, `seed`).
    rng: PRNG key for the params and the state's own RNG.
    image_shape: one image's shape, e.g. (28, 28, 1).
    num_classes: number of classes (classifier outputs and centers).
    learning_rate_fn: the schedule, from `create_learning_rate_fn`.

  Returns:
    A TrainState with centers of shape (num_classes, model.feature_dim).
    With `config.class_shards > 1` the classifier's (feature_dim,
    num_classes) kernel is `params['classifier']['kernel']`, outside the
    model, so `DataParallel.put_state` can split it.
  """
  class_shards = check_class_shards(config, num_classes)
  model = create_model(config, num_classes)
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(model.init, static_argnames='train')(
      init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  features, _ = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1,) + tuple(image_shape))),
      variables)
  # Zeros, as the reference layer: Eq. 4 moves each center to its class within
  # a few batches, and no random center can start closer.
  centers = jnp.zeros((num_classes, features.shape[-1]), jnp.float32)
  apply_fn = model.apply
  if class_shards > 1:
    # The kernel the replicated model initialised, moved out of it: the same
    # init and RNG use, so class sharding changes the layout, not the run.
    # (Built whole on the host: 256 MB at 131K x 512, fine; an init already
    # split over devices would be the next step for millions of classes.)
    params = dict(params)
    kernel = params.pop(models.classifier_scope(config.model.name))['kernel']
    params['classifier'] = {'kernel': kernel}
    apply_fn = create_model(config, num_classes, use_classifier=False).apply
  return TrainState.create(
      apply_fn=apply_fn, params=params,
      tx=create_optimizer(config, learning_rate_fn), centers=centers,
      batch_stats=batch_stats, rng=state_rng)


def _apply_model(state: TrainState, params, images, *, train: bool,
                 rng: Optional[jax.Array] = None):
  """Runs the model; returns (features, logits, new batch_stats)."""
  variables = {'params': params}
  rngs = {'dropout': rng} if rng is not None else None
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
    (features, logits), updates = state.apply_fn(
        variables, images, train=train, rngs=rngs,
        mutable=['batch_stats'] if train else False)
    return features, logits, updates['batch_stats'] if train else state.batch_stats
  features, logits = state.apply_fn(variables, images, train=train, rngs=rngs)
  return features, logits, state.batch_stats


def _step_rng(state: TrainState, axis_name: Optional[str]) -> jax.Array:
  """The dropout key of this step and replica."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def _sum_metrics(features, labels, weights, *, num_classes, cross_entropy,
                 correct, center_distances, axis_name) -> Metrics:
  """Metric sums over the global batch from this replica's per-example terms.

  Sums rather than means so that batches (and replicas, and a padded final
  batch) combine exactly; divide by `weight` for means. Shared by the
  replicated and the class-sharded steps, which differ only in how they get
  the per-example terms.

  Args:
    features: (b, D) this replica's features.
    labels: (b,) their labels.
    weights: (b,) their weights, before masking invalid labels.
    num_classes: C, all shards together.
    cross_entropy: (b,) per-example cross-entropy (softmax or margin).
    correct: (b,) bool, argmax == label.
    center_distances: (b,) center-loss terms, already weighted (with invalid
      labels masked).
    axis_name: the replica axis, or None.
  """
  invalid_labels = loss_lib.invalid_label_count(labels, num_classes, weights)
  weights = weights * loss_lib.valid_label_mask(labels, num_classes)
  sums = {
      'cross_entropy': jnp.sum(weights * cross_entropy),
      'center_loss': jnp.sum(center_distances),
      'accuracy': jnp.sum(weights * correct),
      'feature_norm': jnp.sum(weights * jnp.linalg.norm(features, axis=-1)),
      'weight': jnp.sum(weights),
  }
  sums = psum(sums, axis_name)
  sums['invalid_labels'] = psum(invalid_labels, axis_name)
  return sums


def _metric_sums(features, logits, labels, weights, centers, *,
                 classifier_loss, axis_name) -> Metrics:
  """Metric sums (see `_sum_metrics`) from replicated logits and centers."""
  num_classes = centers.shape[0]
  valid_weights = weights * loss_lib.valid_label_mask(labels, num_classes)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      classifier_loss.training_logits(logits, features, labels),
      jnp.clip(labels, 0, num_classes - 1))
  return _sum_metrics(
      features, labels, weights, num_classes=num_classes, cross_entropy=ce,
      correct=jnp.argmax(logits, -1) == labels,
      center_distances=loss_lib.center_distances(features, labels, centers,
                                                 valid_weights),
      axis_name=axis_name)


def train_step(state: TrainState, batch: Batch, *, center_loss_weight: float,
               center_alpha: float,
               classifier_loss: ClassifierLoss = ClassifierLoss(),
               pair_loss: Optional[PairLoss] = None,
               axis_name: Optional[str] = None
               ) -> tuple[TrainState, Metrics]:
  """One step of SGD on `CE + lambda * center_loss` and Eq. 4 on the centers.

  The CE is that of `classifier_loss` (softmax, or a margin softmax), and
  `pair_loss` optionally adds a contrastive or triplet term on the global
  batch: the losses the paper is compared with, alone (lambda 0) or with
  the center loss.

  Written per replica: with `axis_name`, `batch` is this replica's share of
  the global batch, losses are normalised by the global sum of weights (so
  the summed gradients are those of the global mean), and the centers are
  updated from the all-gathered global batch, identically on every replica.

  Examples with weight 0 (padding) or an out-of-range label are ignored by
  every term; the latter are counted in `metrics['invalid_labels']`.

  Args:
    state: the current TrainState (donated by the compiled step).
    batch: {'image': (b, H, W, C), 'label': (b,) int, 'weight': (b,)}.
    center_loss_weight: lambda of Eq. 5.
    center_alpha: alpha of Eq. 4.
    classifier_loss: the classification term (default: softmax).
    pair_loss: an optional contrastive or triplet term.
    axis_name: the replica axis under pmap/shard_map, None under plain jit.

  Returns:
    The new state and metric sums over the global batch (see `summarize`).
  """
  labels = batch['label']
  num_classes = state.centers.shape[0]
  weights = batch['weight'] * loss_lib.valid_label_mask(labels, num_classes)
  # The global normaliser: each replica divides its sums by it, so the psum of
  # per-replica gradients is exactly the gradient of the global-batch mean.
  total_weight = jnp.maximum(psum(jnp.sum(weights), axis_name), 1e-12)
  rng = _step_rng(state, axis_name)

  def loss_fn(params):
    features, logits, batch_stats = _apply_model(
        state, params, batch['image'], train=True, rng=rng)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        classifier_loss.training_logits(logits, features, labels),
        jnp.clip(labels, 0, num_classes - 1))
    distances = loss_lib.center_distances(features, labels, state.centers,
                                          weights)
    loss = (jnp.sum(weights * ce) / total_weight
            + center_loss_weight * jnp.sum(distances) / total_weight)
    pair_terms = {}
    if pair_loss is not None:
      pair_sum, pair_count, positives = pair_loss.sums(
          features, labels, weights, axis_name)
      loss += pair_loss.weight * pair_sum / jnp.maximum(pair_count, 1)
      pair_terms = {'pair_loss': pair_sum, 'pair_count': pair_count,
                    'pair_positives': positives}
    # The per-example terms come back for the metrics, not computed twice.
    return loss, (features, logits, batch_stats, ce, distances, pair_terms)

  grads, (features, logits, batch_stats, ce, distances, pair_terms) = (
      jax.grad(loss_fn, has_aux=True)(state.params))
  grads = psum(grads, axis_name)
  # Centers by Eq. 4 from the same batch and the same (pre-update) centers
  # the loss used: the paper's Algorithm 1.
  centers = loss_lib.update_centers(
      state.centers, features, labels, alpha=center_alpha, weights=weights,
      axis_name=axis_name)
  metrics = _sum_metrics(
      features, labels, batch['weight'], num_classes=num_classes,
      cross_entropy=ce, correct=jnp.argmax(logits, -1) == labels,
      center_distances=distances, axis_name=axis_name)
  if pair_terms:
    # The count is already global; the other sums are per replica.
    metrics['pair_loss'] = psum(pair_terms['pair_loss'], axis_name)
    metrics['pair_count'] = pair_terms['pair_count']
    # Summarised per example: how much the pair term has to work with.
    metrics['pair_positives'] = psum(pair_terms['pair_positives'], axis_name)
  if axis_name is not None and state.batch_stats:
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  state = state.apply_gradients(grads=grads, centers=centers,
                                batch_stats=batch_stats)
  return state, metrics


def eval_step(state: TrainState, batch: Batch, *,
              classifier_loss: ClassifierLoss = ClassifierLoss(),
              axis_name: Optional[str] = None
              ) -> tuple[Metrics, dict[str, jax.Array]]:
  """Evaluates one batch: metric sums and the per-example features.

  The cross-entropy is `classifier_loss`'s (with its margin); the accuracy
  is the argmax of the model's scores (no margin at test time).

  Returns:
    (metric sums over the global batch, per-example outputs of this
    replica's examples: 'feature' (b, D), 'logits' (b, K), and the batch's
    'label' and 'weight', so outputs gathered from all replicas stay aligned).
  """
  features, logits, _ = _apply_model(state, state.params, batch['image'],
                                     train=False)
  metrics = _metric_sums(features, logits, batch['label'], batch['weight'],
                         state.centers, classifier_loss=classifier_loss,
                         axis_name=axis_name)
  return metrics, {'feature': features, 'logits': logits,
                   'label': batch['label'], 'weight': batch['weight']}


def _split_classifier(params) -> tuple[Any, jax.Array]:
  """(the backbone's params, the class-sharded classifier kernel)."""
  backbone = {k: v for k, v in params.items() if k != 'classifier'}
  return backbone, params['classifier']['kernel']


def _class_sharded_logits(features, kernel, *, dtype, axis_name, model_axis):
  """This device's classes' logits of the global batch, computed in `dtype`.

  Cast as the replicated model's classifier (a Dense with the model's dtype)
  casts its input and kernel, so bf16 configs compute in bf16 here too.
  """
  return sharded.sharded_logits(
      features.astype(dtype), kernel.astype(dtype), model_axis=model_axis,
      batch_axis=axis_name)


def _class_sharded_metric_sums(features, logits, labels, weights, *,
                               global_labels, global_cross_entropy,
                               center_distances, num_classes, axis_name,
                               model_axis) -> Metrics:
  """`_sum_metrics` for class-sharded logits of the global batch.

  The cross-entropy and accuracy come for the whole global batch on every
  device; each replica keeps its own rows, so `_sum_metrics` sums every
  example once, exactly as in the replicated step.
  """
  rows = labels.shape[0]
  own_rows = lambda x: jax.lax.dynamic_slice_in_dim(
      x, jax.lax.axis_index(axis_name) * rows, rows)
  return _sum_metrics(
      features, labels, weights, num_classes=num_classes,
      cross_entropy=own_rows(global_cross_entropy),
      correct=own_rows(sharded.sharded_argmax_accuracy(
          logits, global_labels, model_axis=model_axis)),
      center_distances=center_distances, axis_name=axis_name)


def class_sharded_train_step(
    state: TrainState, batch: Batch, *, center_loss_weight: float,
    center_alpha: float, axis_name: str, dtype: Any = jnp.float32,
    model_axis: str = parallel.MODEL_AXIS) -> tuple[TrainState, Metrics]:
  """`train_step` with the centers and classifier kernel split by classes.

  Per device of a `(batch, model)` mesh under `jax.shard_map` (check_vma
  off): `batch` is this batch replica's share, identical on its model
  shards; `state.centers` is this device's (C / M, D) rows,
  `state.params['classifier']['kernel']` its (D, C / M) columns (and so are
  the kernel's optimizer-state twins), the rest replicated. Same objective,
  normalisation, Eq. 4 update and metrics as `train_step`; see
  `centerloss_jax.sharded` for why each collective is where it is.

  Gradients: the backbone's are `psum`-ed over `axis_name` as in
  `train_step`; the kernel's are not, since every batch replica computes
  them from the whole global batch (`sharded_logits`). The optimizer acts
  on each shard alone, which is exact for the elementwise SGD/AdamW of
  `create_optimizer` (a global-norm clip would not be).

  Args:
    state: this device's part of the TrainState (donated).
    batch: this batch replica's {'image', 'label', 'weight'}.
    center_loss_weight: lambda of Eq. 5.
    center_alpha: alpha of Eq. 4.
    axis_name: the batch axis ('batch').
    dtype: the classifier's computation dtype (the model's).
    model_axis: the class axis ('model').

  Returns:
    The new state (this device's part) and metric sums over the global
    batch, as `train_step`'s.
  """
  labels = batch['label']
  num_classes = state.centers.shape[0] * jax.lax.axis_size(model_axis)
  weights = batch['weight'] * loss_lib.valid_label_mask(labels, num_classes)
  total_weight = jnp.maximum(psum(jnp.sum(weights), axis_name), 1e-12)
  rng = _step_rng(state, axis_name)
  # The logits are of the global batch: pair them with its labels/weights.
  global_labels, global_weights = jax.lax.all_gather(
      (labels, weights), axis_name, axis=0, tiled=True)

  def loss_fn(params):
    backbone, kernel = _split_classifier(params)
    features, _, batch_stats = _apply_model(
        state, backbone, batch['image'], train=True, rng=rng)
    logits = _class_sharded_logits(features, kernel, dtype=dtype,
                                   axis_name=axis_name, model_axis=model_axis)
    # Every batch replica holds the global batch's CE; `sharded_logits`
    # hands each only its own rows' feature gradient, so the backbone's psum
    # below counts every example once.
    global_ce = sharded.sharded_softmax_cross_entropy(
        logits, global_labels, model_axis=model_axis)
    distances = sharded.sharded_center_distances(
        features, labels, state.centers, weights, model_axis=model_axis)
    loss = (jnp.sum(global_weights * global_ce) / total_weight
            + center_loss_weight * jnp.sum(distances) / total_weight)
    # The per-example terms come back for the metrics, not computed twice.
    return loss, (features, logits, batch_stats, global_ce, distances)

  grads, (features, logits, batch_stats, global_ce, distances) = jax.grad(
      loss_fn, has_aux=True)(state.params)
  backbone_grads, kernel_grad = _split_classifier(grads)
  grads = {**psum(backbone_grads, axis_name),
           'classifier': {'kernel': kernel_grad}}
  centers = sharded.sharded_update_centers(
      state.centers, features, labels, alpha=center_alpha, weights=weights,
      model_axis=model_axis, batch_axis=axis_name)
  metrics = _class_sharded_metric_sums(
      features, logits, labels, batch['weight'], global_labels=global_labels,
      global_cross_entropy=global_ce, center_distances=distances,
      num_classes=num_classes, axis_name=axis_name, model_axis=model_axis)
  if state.batch_stats:
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  state = state.apply_gradients(grads=grads, centers=centers,
                                batch_stats=batch_stats)
  return state, metrics


def class_sharded_eval_step(
    state: TrainState, batch: Batch, *, axis_name: str,
    dtype: Any = jnp.float32, model_axis: str = parallel.MODEL_AXIS
    ) -> tuple[Metrics, dict[str, jax.Array]]:
  """`eval_step` with class-sharded centers and kernel (see the train step).

  Returns:
    (metric sums over the global batch, this replica's 'feature', 'label'
    and 'weight'). No 'logits': (batch, C) is what class sharding exists
    not to gather.
  """
  backbone, kernel = _split_classifier(state.params)
  features, _, _ = _apply_model(state, backbone, batch['image'], train=False)
  logits = _class_sharded_logits(features, kernel, dtype=dtype,
                                 axis_name=axis_name, model_axis=model_axis)
  labels = batch['label']
  num_classes = state.centers.shape[0] * jax.lax.axis_size(model_axis)
  valid_weights = batch['weight'] * loss_lib.valid_label_mask(labels,
                                                               num_classes)
  global_labels = jax.lax.all_gather(labels, axis_name, axis=0, tiled=True)
  metrics = _class_sharded_metric_sums(
      features, logits, labels, batch['weight'], global_labels=global_labels,
      global_cross_entropy=sharded.sharded_softmax_cross_entropy(
          logits, global_labels, model_axis=model_axis),
      center_distances=sharded.sharded_center_distances(
          features, labels, state.centers, valid_weights,
          model_axis=model_axis),
      num_classes=num_classes, axis_name=axis_name, model_axis=model_axis)
  return metrics, {'feature': features, 'label': labels,
                   'weight': batch['weight']}


def feature_step(state: TrainState, batch: Batch, *, mirror: bool,
                 class_sharded: bool = False,
                 axis_name: Optional[str] = None
                 ) -> tuple[Metrics, dict[str, jax.Array]]:
  """Test features of one batch, for open-set (face) evaluation.

  With `mirror`, the paper's test feature: the features of each image and of
  its horizontal mirror, concatenated (2D values). One forward pass of the
  2b images rather than two passes.

  Returns:
    ({} (no metrics), {'feature': (b, D or 2D), 'index': the batch's
    'label' (`extract_features` passes each image's index there), 'weight'}),
    in the `(metrics, outputs)` form of `DataParallel.compile_eval_step`.
  """
  del axis_name  # Per-example: nothing to reduce.
  params = state.params
  if class_sharded:  # The model runs without its (split) classifier.
    params, _ = _split_classifier(params)
  images = batch['image']
  if mirror:
    images = jnp.concatenate([images, jnp.flip(images, axis=2)])
  features, _, _ = _apply_model(state, params, images, train=False)
  if mirror:
    features = jnp.concatenate(jnp.split(features, 2), axis=-1)
  return {}, {'feature': features, 'index': batch['label'],
              'weight': batch['weight']}


def compile_feature_step(dp: parallel.DataParallel,
                         config: ml_collections.ConfigDict):
  """`feature_step` compiled once for `dp`, mirroring as the config says."""
  return dp.compile_eval_step(functools.partial(
      feature_step, mirror=config.evaluation.mirror,
      class_sharded=config.get('class_shards', 1) > 1))


def extract_features(feature_fn, dp: parallel.DataParallel, state: TrainState,
                     images: Any, *, batch_size: int) -> np.ndarray:
  """Test features of uint8 images, on every process.

  Args:
    feature_fn: from `compile_feature_step`.
    dp: the DataParallel `state` is laid out for.
    state: the (placed) train state.
    images: uint8 (N, H, W, C), an ndarray or a lazy array-like
      (`face_data.ImageFiles`); each process reads only its share of a batch.
    batch_size: the global batch size.

  Returns:
    float32 (N, F) features, row i of image i (placed by each example's
    index, so a mesh that interleaves processes cannot reorder them).
  """
  num_images = len(images)
  split = input_pipeline.Split(
      images=images, labels=np.arange(num_images, dtype=np.int32),
      name='features')
  features = None
  for batch in input_pipeline.epoch_batches(
      split, global_batch_size=batch_size, epoch=0, seed=0, shuffle=False,
      process_index=jax.process_index(), process_count=jax.process_count()):
    _, outputs = feature_fn(state, dp.put_batch(batch))
    outputs = parallel.fetch_global(outputs)
    if features is None:
      features = np.zeros((num_images, outputs['feature'].shape[-1]),
                          np.float32)
    real = outputs['weight'] > 0
    features[outputs['index'][real]] = outputs['feature'][real]
  return features


def evaluate_open_set(feature_fn, dp: parallel.DataParallel,
                      state: TrainState, dataset: input_pipeline.Dataset,
                      config: ml_collections.ConfigDict
                      ) -> tuple[dict[str, float], dict[str, Any]]:
  """Verification and identification on the dataset's unseen identities.

  Args:
    feature_fn: from `compile_feature_step`.
    dp: the DataParallel `state` is laid out for.
    state: the (placed) train state.
    dataset: with `verification` and/or `identification` sets.
    config: the experiment config (`evaluation`, `batch_size`, ...).

  Returns:
    Flat metrics named '<set>/<metric>' (e.g. 'lfw/accuracy') and the curves
    `{'roc': {set: (far, tar)}, 'cmc': {set: cmc}}` (see
    `evaluation.open_set_metrics`); both empty when the dataset has neither
    set.
  """
  if dataset.verification is None and dataset.identification is None:
    return {}, {}
  return evaluation.open_set_metrics(
      functools.partial(extract_features, feature_fn, dp, state,
                        batch_size=config.batch_size),
      dataset, config.evaluation)


def step_functions(config: ml_collections.ConfigDict):
  """(train step, eval step) for `DataParallel.compile_*_step`.

  The replicated `train_step`/`eval_step`, or their class-sharded versions
  when `config.class_shards > 1`.
  """
  center_kwargs = dict(center_loss_weight=config.center_loss.weight,
                       center_alpha=config.center_loss.alpha)
  if config.get('class_shards', 1) == 1:
    classifier_loss = ClassifierLoss.from_config(config.loss)
    return (functools.partial(train_step, classifier_loss=classifier_loss,
                              pair_loss=PairLoss.from_config(config.loss),
                              **center_kwargs),
            functools.partial(eval_step, classifier_loss=classifier_loss))
  dtype = jnp.dtype(config.model.get('dtype', 'float32'))
  return (functools.partial(class_sharded_train_step, dtype=dtype,
                            **center_kwargs),
          functools.partial(class_sharded_eval_step, dtype=dtype))


def summarize(metric_sums: Metrics) -> dict[str, float]:
  """Turns accumulated metric sums into means (and the invalid-label count).

  Per-example metrics are divided by the summed weight (so 'pair_positives'
  is same-identity pairs, or triplet anchors, per example); 'pair_loss' by
  the summed pair (or anchor) count, so over several steps it is the mean
  per pair, not a mean of per-step means.
  """
  sums = parallel.fetch_replicated(metric_sums)
  weight = max(float(sums['weight']), 1e-12)
  out = {k: float(v) / weight for k, v in sums.items()
         if k not in ('weight', 'invalid_labels', 'pair_loss', 'pair_count')}
  if 'pair_loss' in sums:  # A mean over pairs (or anchors), not examples.
    out['pair_loss'] = float(sums['pair_loss']) / max(
        float(sums['pair_count']), 1.0)
  out['invalid_labels'] = int(sums['invalid_labels'])
  out['num_examples'] = float(sums['weight'])
  return out


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the run stops."""


def _evaluate(eval_fn, dp, state, split, config) -> dict[str, Any]:
  """Runs `eval_step` over a whole split (each example exactly once)."""
  metric_sums, features, labels = None, [], []
  for batch in input_pipeline.epoch_batches(
      split, global_batch_size=config.batch_size, epoch=0, seed=config.seed,
      shuffle=False, process_index=jax.process_index(),
      process_count=jax.process_count()):
    sums, outputs = eval_fn(state, dp.put_batch(batch))
    metric_sums = sums if metric_sums is None else jax.tree.map(
        jnp.add, metric_sums, sums)
    outputs = parallel.fetch_global(outputs)  # All processes' examples.
    real = outputs['weight'] > 0
    features.append(outputs['feature'][real])
    labels.append(outputs['label'][real])
  features, labels = np.concatenate(features), np.concatenate(labels)
  centers = parallel.fetch_global(dp.host_state(state).centers)
  results = summarize(metric_sums)
  results.update(evaluation.compactness_metrics(features, labels, centers))
  return {'metrics': results, 'features': features, 'labels': labels,
          'centers': centers}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains `config`'s objective, evaluating, checkpointing, plotting.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is one.
  Writes `metrics.jsonl`, TensorBoard event files, for 2-D features
  `features_step_<N>.png`, and for face datasets with verification pairs
  `roc_step_<N>.png` and `roc.npz` (the latest ROC) into `workdir`. SIGTERM
  (preemption) saves a checkpoint before returning.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: directory for checkpoints, metrics and plots.

  Returns:
    The final evaluation metrics: the closed-set test split's, and the
    open-set ones named '<set>/<metric>' (e.g. 'lfw/accuracy').

  Raises:
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is
      kept and the message names the step.
  """
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  writer = writers.create_writer(workdir, is_main_process=is_main)
  dataset = input_pipeline.load_dataset(config.input)
  check_class_shards(config, dataset.num_classes)
  dp = parallel.DataParallel.create(
      config.parallel, model_shards=config.get('class_shards', 1))
  dp.check_batch_size(config.batch_size)

  # K > 0: P x K batches for the pair losses (an epoch then leaves out each
  # identity's remainder of images, n % K, drawn anew every epoch).
  images_per_identity = config.get('batch_images_per_identity', 0)
  epoch_examples = dataset.train.num_examples
  if images_per_identity:
    epoch_examples = input_pipeline.balanced_epoch_length(
        dataset.train.labels, images_per_identity)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      epoch_examples, config.batch_size, drop_remainder=True)
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the '
                     f'{epoch_examples} training examples of an epoch.')
  num_steps = (config.num_train_steps if config.num_train_steps > 0 else
               int(math.ceil(config.num_epochs * steps_per_epoch)))
  eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                else steps_per_epoch)

  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  state = create_train_state(
      config, jax.random.key(config.seed), image_shape=dataset.image_shape,
      num_classes=dataset.num_classes, learning_rate_fn=learning_rate_fn)
  manager = checkpointing.create_manager(workdir,
                                         max_to_keep=config.keep_checkpoints)
  restored = checkpointing.restore_latest(manager, state)
  if restored is not None:
    state, saved_position = restored
    logging.info('Resumed from the checkpoint at step %d.', int(state.step))
  start_step = int(state.step)
  if start_step == 0 and is_main:
    writer.write_hparams(config.to_dict())
    logging.info('Parameters:\n%s',
                 parameter_overview.get_parameter_overview(state.params))

  state = dp.put_state(state)
  train_step_fn, eval_step_fn = step_functions(config)
  train_fn = dp.compile_train_step(train_step_fn)
  eval_fn = dp.compile_eval_step(eval_step_fn)
  feature_fn = (compile_feature_step(dp, config)
                if dataset.verification or dataset.identification else None)
  augment_fn = input_pipeline.make_augment_fn(
      crop_padding=config.input.crop_padding, flip=config.input.flip)

  def data_position(step):
    return {'epoch': step // steps_per_epoch,
            'step_in_epoch': step % steps_per_epoch}

  if restored is not None and saved_position != data_position(start_step):
    # The data order is a function of the step for a fixed batch size; a
    # changed batch size (or dataset) resumes from a different position.
    logging.warning('The checkpoint was at data position %s, this config '
                    'resumes at %s: batch size or dataset changed?',
                    saved_position, data_position(start_step))

  def save_checkpoint(step, force=False):
    if not (force or step % config.checkpoint_every_steps == 0):
      return
    # Never let a non-finite state replace the last good checkpoint.
    if interval:
      _check_finite_and_summarize(interval, step - len(interval))
    host_state = dp.host_state(state)
    if not parallel.fetch_replicated(
        _all_finite((host_state.params, host_state.centers))):
      raise NonFiniteLossError(
          f'Non-finite params or centers after step {step}. Training '
          'stopped; the checkpoints in the workdir are from before it.')
    checkpointing.save(manager, host_state, step=step,
                       data_position=data_position(step), force=True)

  preempted = []
  previous_handler = signal.signal(
      signal.SIGTERM, lambda signum, frame: preempted.append(signum))
  try:
    step, interval, interval_start = start_step, [], time.perf_counter()
    final = None
    while step < num_steps and not preempted:
      position = data_position(step)
      batches = input_pipeline.epoch_batches(
          dataset.train, global_batch_size=config.batch_size,
          epoch=position['epoch'], seed=config.seed, shuffle=True,
          start_step=position['step_in_epoch'], augment_fn=augment_fn,
          drop_remainder=True, images_per_identity=images_per_identity,
          process_index=jax.process_index(),
          process_count=jax.process_count())
      for batch in batches:
        state, metrics = train_fn(state, dp.put_batch(batch))
        interval.append(metrics)
        step += 1
        if step % config.log_every_steps == 0 or step == num_steps:
          summary = _check_finite_and_summarize(interval, step - len(interval))
          elapsed = time.perf_counter() - interval_start
          summary['steps_per_second'] = len(interval) / elapsed
          summary['learning_rate'] = float(learning_rate_fn(step - 1))
          writer.write_scalars(step, {f'train/{k}': v
                                      for k, v in summary.items()})
          logging.info('step %d/%d, %.2f steps/s, ETA %s', step, num_steps,
                       summary['steps_per_second'], _format_seconds(
                           (num_steps - step) / summary['steps_per_second']))
          interval, interval_start = [], time.perf_counter()
        if step % eval_every == 0 or step == num_steps:
          final = _evaluate_and_write(eval_fn, feature_fn, dp, state,
                                      dataset, config, writer, workdir, step)
        save_checkpoint(step, force=step == num_steps)
        if not interval:  # Steps/s measures training, not eval or saving.
          interval_start = time.perf_counter()
        if step >= num_steps or preempted:
          break
    if preempted:
      logging.warning('SIGTERM received: saving a checkpoint at step %d and '
                      'stopping; rerun with the same workdir to resume.', step)
      save_checkpoint(step, force=True)
    elif final is None:  # Resumed after the end: evaluate what was restored.
      final = _evaluate_and_write(eval_fn, feature_fn, dp, state, dataset,
                                  config, writer, workdir, step)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  return final['metrics'] if final is not None else {}


def _check_finite_and_summarize(step_metrics: list[Metrics],
                                first_step: int) -> dict[str, float]:
  """Sums per-step metrics; raises naming the first step with a bad loss.

  Checked at logging time rather than every step: the per-step values stay on
  the device until then, so the check does not stall the pipeline.
  """
  host = parallel.fetch_replicated(step_metrics)
  for offset, sums in enumerate(host):
    for key in ('cross_entropy', 'center_loss', 'pair_loss'):
      if key in sums and not np.isfinite(sums[key]):
        raise NonFiniteLossError(
            f'Non-finite {key} ({sums[key]}) at step {first_step + offset + 1}. '
            'Training stopped; the checkpoints in the workdir are from before '
            'it. Try a smaller center_loss.weight or learning_rate.')
  return summarize(jax.tree.map(lambda *xs: np.sum(xs, axis=0), *host))


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _evaluate_and_write(eval_fn, feature_fn, dp, state, dataset, config,
                        writer, workdir, step) -> dict[str, Any]:
  """Evaluates the closed and open sets; writes metrics and plots."""
  result = {'metrics': {}, 'features': np.zeros((0, 0))}
  if dataset.test.num_examples:
    result = _evaluate(eval_fn, dp, state, dataset.test, config)
    writer.write_scalars(step, {f'test/{k}': v
                                for k, v in result['metrics'].items()})
  if feature_fn is not None:
    open_set, curves = evaluate_open_set(feature_fn, dp, state, dataset,
                                         config)
    writer.write_scalars(step, open_set)
    logging.info('Open-set metrics at step %d: %s', step, open_set)
    result['metrics'].update(open_set)
    if curves['roc'] and jax.process_index() == 0:
      verification.plot_roc(
          curves['roc'], path=os.path.join(workdir, f'roc_step_{step}.png'),
          title=f'{config.input.name}, step {step}')
      # The latest curve as data, for comparing runs (face_comparison).
      far, tar = next(iter(curves['roc'].values()))
      path = os.path.join(workdir, 'roc.npz')
      with open(path + '.tmp', 'wb') as f:
        np.savez(f, far=far, tar=tar, step=step)
      os.replace(path + '.tmp', path)
  if (config.plot_features and result['features'].shape[1] == 2
      and jax.process_index() == 0):
    image = plotting.save_feature_plot(
        os.path.join(workdir, f'features_step_{step}.png'),
        result['features'], result['labels'], dataset.class_names,
        centers=result['centers'],
        title=(f'{config.input.name} test, step {step}, lambda '
               f'{config.center_loss.weight:g}'))
    writer.write_images(step, {'test/features': image})
  return result


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
