"""The train state and what builds it: model, schedule, optimizer, centers.

The Flax examples' factories: `create_model`, `total_train_steps`,
`create_learning_rate_fn`, `create_optimizer`, `create_train_state` (and
`create_inference_state`, its optimizer-free twin for evaluation), each
reading the experiment config it is given.
"""

from __future__ import annotations

import math
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from centerloss_jax import models
from centerloss_jax.training.objectives import ClassifierLoss

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
  """Validates `config.class_shards` against the number of classes.

  Each side of class sharding is checked once, where it is known: the mesh
  (>= 1 shards, mode 'shard_map', devices) by `parallel.DataParallel.create`,
  the losses by `class_sharded_steps.ShardedClasses.check_losses`, the
  classes here (`create_train_state` calls it).

  Returns:
    The number of class shards (1: the classes are not sharded).

  Raises:
    ValueError: class_shards > 1 not dividing num_classes.
  """
  class_shards = config.class_shards
  if class_shards > 1 and num_classes % class_shards:
    raise ValueError(
        f'class_shards={class_shards} does not divide num_classes='
        f'{num_classes}: every shard must hold as many classes.')
  return class_shards


def total_train_steps(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> int:
  """The run's length in steps: `num_train_steps`, or `num_epochs` epochs.

  Computed once by the trainer and given to the schedule, the loop and the
  logs alike, so a config that sets `num_train_steps` decays its schedule
  over those steps, not over `num_epochs`.
  """
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * steps_per_epoch))


def create_learning_rate_fn(config: ml_collections.ConfigDict, *,
                            steps_per_epoch: int,
                            total_steps: int) -> optax.Schedule:
  """`config.schedule`: 'constant', 'piecewise' or 'cosine' (with warm-up).

  Piecewise boundaries are given in steps (`config.lr_boundaries`) with the
  factor applied at each (`config.lr_decay_factor`), as in the reference
  Caffe solver (x0.8 at 5K, 8K and 10K iterations). The cosine schedule
  warms up linearly for `config.warmup_epochs` epochs, then decays to 0 at
  `total_steps`.

  Args:
    config: the experiment config.
    steps_per_epoch: steps in one epoch (for `warmup_epochs`).
    total_steps: the run's length, from `total_train_steps`.

  Raises:
    ValueError: an unknown schedule, or a cosine warm-up that does not end
      before `total_steps` (naming both).
  """
  lr = config.learning_rate
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'piecewise':
    unreached = [int(b) for b in config.lr_boundaries if b >= total_steps]
    if unreached:
      logging.warning('lr_boundaries %s are at or after the last step (%d): '
                      'the learning rate never decays there.', unreached,
                      total_steps)
    return optax.piecewise_constant_schedule(
        lr, {int(b): config.lr_decay_factor for b in config.lr_boundaries})
  if config.schedule == 'cosine':
    warmup = config.warmup_epochs * steps_per_epoch
    if warmup >= total_steps:
      raise ValueError(
          f'config.warmup_epochs={config.warmup_epochs} is {warmup:g} steps '
          f'({steps_per_epoch} per epoch), not fewer than the run\'s '
          f'{total_steps} steps: the cosine schedule would never decay.')
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)
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

  Examples:
    The state of the default experiment's `runlocal` variant (a narrow
    LeNet++ with 2-D features), from the repository root, where `configs/`
    is importable. `jax.eval_shape` gives its shapes without computing it,
    as the trainer does before it creates the state on the devices:

    >>> import jax
    >>> import optax
    >>> from configs import default
    >>> from centerloss_jax.training import state
    >>> config = default.get_config('runlocal')
    >>> def init():
    ...   return state.create_train_state(
    ...       config, jax.random.key(0), image_shape=(28, 28, 1),
    ...       num_classes=10,
    ...       learning_rate_fn=optax.constant_schedule(config.learning_rate))
    >>> abstract_state = jax.eval_shape(init)  # init() computes the state.
    >>> print(abstract_state.centers.shape, abstract_state.step.dtype)
    (10, 2) int32
  """
  return _create_state(config, rng, image_shape=image_shape,
                       num_classes=num_classes,
                       tx=create_optimizer(config, learning_rate_fn))


def move_classifier(state: TrainState, *, class_sharded: bool,
                    scope: str) -> TrainState:
  """`state` with its classifier kernel where `class_sharded` keeps it.

  Replicated training keeps the (feature_dim, num_classes) kernel in the
  model, at `params[scope]['kernel']`; class-sharded training outside it,
  at `params['classifier']['kernel']`, so that it can be split (see
  `create_train_state`). This moves it, in the params and in each of their
  optimizer-state twins (momentum, Adam's moments), which is how a
  checkpoint of one layout resumes in the other. It works on concrete and
  abstract states alike: the leaves (with their shardings) move unchanged.

  Args:
    state: a TrainState in either layout.
    class_sharded: the layout to move to.
    scope: the model's classifier scope (`models.classifier_scope`).
  """
  source, target = ((scope, 'classifier') if class_sharded
                    else ('classifier', scope))

  def move(node):
    if isinstance(node, dict):
      node = {key: move(value) for key, value in node.items()}
      # A params tree (or a twin): its root holds the bias-free head.
      if (isinstance(node.get(source), dict) and set(node[source]) == {'kernel'}
          and target not in node):
        node[target] = node.pop(source)
      return node
    if isinstance(node, tuple) and hasattr(node, '_fields'):  # optax states
      return type(node)(*map(move, node))
    if isinstance(node, (tuple, list)):
      return type(node)(map(move, node))
    return node

  return state.replace(params=move(state.params),
                       opt_state=move(state.opt_state))


def create_inference_state(config: ml_collections.ConfigDict, rng: jax.Array,
                           *, image_shape: tuple[int, ...],
                           num_classes: int) -> TrainState:
  """`create_train_state` without an optimizer (empty `opt_state`).

  What evaluation restores a checkpoint's params, centers and batch
  statistics into: the optimizer fields of the config are not read, so a
  run can be evaluated whatever it was trained with.
  """
  return _create_state(config, rng, image_shape=image_shape,
                       num_classes=num_classes, tx=optax.identity())


def _create_state(config: ml_collections.ConfigDict, rng: jax.Array, *,
                  image_shape: tuple[int, ...], num_classes: int,
                  tx: optax.GradientTransformation) -> TrainState:
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
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx,
                           centers=centers, batch_stats=batch_stats,
                           rng=state_rng)
