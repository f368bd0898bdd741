"""The training loop: `train_and_evaluate(config, workdir)`.

The edge where the experiment config is read: it loads the dataset, builds
the state, the objective and the class layout from the config, and hands
explicit values to everything below (`steps`, `features`, `parallel`,
`checkpointing`, `reporting`). The loop trains, logs, evaluates (closed-set
metrics and, for face datasets, the open-set protocols), checkpoints and
plots; a rerun with the same workdir resumes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, Optional

from absl import logging
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from centerloss_jax import data
from centerloss_jax import losses
from centerloss_jax import metrics
from centerloss_jax import models
from centerloss_jax import reporting
from centerloss_jax.training import checkpointing
from centerloss_jax.training.class_sharded_steps import ShardedClasses
from centerloss_jax.training import features as features_lib
from centerloss_jax.training import lifecycle
from centerloss_jax.training.objectives import Objective
from centerloss_jax.training import parallel
from centerloss_jax.training import run_config
from centerloss_jax.training import state as state_lib
from centerloss_jax.training import steps

Metrics = steps.Metrics

# Fields of `config.input` the trainer applies itself (augmentation); the
# others are the keyword arguments of the source's loader.
AUGMENTATION_FIELDS = ('crop_padding', 'flip')

# How long closing the checkpoint manager or the writers may take on the way
# out; after a failed write their threads can block forever.
CLOSE_SECONDS = 10.0


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the run stops."""


def load_dataset(input_config: ml_collections.ConfigDict) -> data.Dataset:
  """The dataset of `config.input`: `source` and its loader's arguments.

  Raises:
    ValueError: an unknown source, or a field its loader does not take
      (naming it and the accepted ones).
  """
  kwargs = input_config.to_dict()
  for field in AUGMENTATION_FIELDS:
    kwargs.pop(field, None)
  # `--config.input.pairs_file=None` gives a string field the string 'None';
  # no data path is called that, so it means None, as the user meant.
  kwargs = {key: None if value == 'None' else value
            for key, value in kwargs.items()}
  source = kwargs.pop('source')
  unknown = data.registry.unknown_arguments(source, kwargs)
  if unknown:
    raise ValueError(
        f'config.input has {", ".join(map(repr, unknown))}, which input '
        f'source {source!r} does not take; it takes '
        f'{", ".join(data.registry.accepted_arguments(source))}, and the '
        f'trainer reads {", ".join(AUGMENTATION_FIELDS)}.')
  return data.load_dataset(source, **kwargs)


def class_layout(config: ml_collections.ConfigDict) -> steps.ClassLayout:
  """Where the classes live: replicated, or split over `class_shards`."""
  if config.class_shards == 1:
    return steps.ReplicatedClasses()
  return ShardedClasses(dtype=jnp.dtype(config.model.dtype))


def step_functions(config: ml_collections.ConfigDict):
  """(train step, eval step) for `DataParallel.compile_*_step`.

  Raises:
    ValueError: the config's losses are not supported by its class layout.
  """
  objective = Objective.from_config(config)
  classes = class_layout(config)
  classes.check_losses(objective.classifier_loss, objective.pair_loss)
  return (functools.partial(steps.train_step, objective=objective,
                            classes=classes,
                            grad_clip_norm=config.grad_clip_norm),
          functools.partial(steps.eval_step,
                            classifier_loss=objective.classifier_loss,
                            center_normalize=objective.center_normalize,
                            classes=classes))


def compile_feature_step(dp: parallel.DataParallel,
                         config: ml_collections.ConfigDict):
  """The open-set feature step of `config` (mirror, class layout) for `dp`."""
  return features_lib.compile_feature_step(
      dp, mirror=config.evaluation.mirror, classes=class_layout(config))


def open_set_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`features.evaluate_open_set`'s keyword arguments from the config."""
  return dict(batch_size=config.batch_size,
              pca_dim=config.evaluation.pca_dim,
              max_rank=config.evaluation.max_rank,
              distractor_block_size=config.evaluation.distractor_block_size)


def summarize(metric_sums: Metrics) -> dict[str, float]:
  """Turns accumulated metric sums into means (and the invalid-label count).

  Per-example metrics are divided by the summed weight (so 'pair_positives'
  is same-identity pairs, or triplet anchors, per example); 'pair_loss' by
  the summed pair (or anchor) count, so over several steps it is the mean
  per pair, not a mean of per-step means.
  """
  sums = parallel.fetch_replicated(metric_sums)
  weight = max(float(sums['weight']), losses.EPSILON)
  out = {k: float(v) / weight for k, v in sums.items()
         if k not in ('weight', 'invalid_labels', 'pair_loss', 'pair_count')}
  if 'pair_loss' in sums:  # A mean over pairs (or anchors), not examples.
    out['pair_loss'] = float(sums['pair_loss']) / max(
        float(sums['pair_count']), 1.0)
  out['invalid_labels'] = int(sums['invalid_labels'])
  out['num_examples'] = float(sums['weight'])
  return out


def evaluate_split(eval_fn, dp: parallel.DataParallel, state,
                   split: data.Split, *, batch_size: int,
                   seed: int) -> dict[str, Any]:
  """Runs the eval step over a whole split (each example exactly once).

  Returns:
    {'metrics': summarized metrics plus `metrics.compactness_metrics`,
     'features', 'labels' (of the real examples), 'centers' (of the
     classes in the split, 'center_classes')}.
  """
  metric_sums, split_features, labels = None, [], []
  for batch in data.epoch_batches(
      split, global_batch_size=batch_size, epoch=0, seed=seed,
      shuffle=False, process_index=jax.process_index(),
      process_count=jax.process_count()):
    sums, outputs = eval_fn(state, dp.put_batch(batch))
    metric_sums = sums if metric_sums is None else jax.tree.map(
        jnp.add, metric_sums, sums)
    outputs = parallel.fetch_global(outputs)  # All processes' examples.
    real = outputs['weight'] > 0
    split_features.append(outputs['feature'][real])
    labels.append(outputs['label'][real])
  split_features, labels = np.concatenate(split_features), np.concatenate(labels)
  # Only the centers of the split's classes leave the devices: a class-
  # sharded run's (num_classes, D) centers never gather on one host.
  classes = np.unique(labels)
  centers = dp.fetch_rows(dp.host_state(state).centers, classes)
  results = summarize(metric_sums)
  results.update(metrics.compactness_metrics(
      split_features, np.searchsorted(classes, labels), centers))
  return {'metrics': results, 'features': split_features, 'labels': labels,
          'centers': centers, 'center_classes': classes}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False
                       ) -> dict[str, float]:
  """Trains `config`'s objective, evaluating, checkpointing, plotting.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is one.
  Writes `config.json` (the run's config), `metrics.jsonl` (one record per
  step and split, also across resumes), TensorBoard event files, for 2-D
  features `features_step_<N>.png` and `features.npz` (the latest plot's
  test features, labels, centers and class names), and for face datasets with
  verification pairs `roc_step_<N>.png` and `roc.npz` (the latest ROC) into
  `workdir`.

  The whole config and the workdir are checked before any work; the workdir
  is locked for the run (a second run on it is refused). SIGTERM or SIGINT
  (preemption) saves a checkpoint and raises `lifecycle.Preempted`.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: directory for checkpoints, metrics and plots.
    allow_config_change: resume even if the config differs from the stored
      one in fields that change the run's trajectory.

  Returns:
    The final evaluation metrics: the closed-set test split's, and the
    open-set ones named '<set>/<metric>' (e.g. 'lfw/accuracy').

  Raises:
    ValueError: a bad config value (naming it) or workdir, before any work.
    run_config.ConfigChangedError: resuming under a changed config.
    lifecycle.WorkdirInUseError: another run holds the workdir.
    lifecycle.Preempted: stopped by a signal, after saving a checkpoint.
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is
      kept and the message names the step.

  Examples:
    The default experiment's `runlocal` variant, a few seconds on a CPU,
    from the repository root (where `configs/` is importable), with the
    Fashion-MNIST IDX files in `data_dir`::

      from configs import default
      from centerloss_jax.training import train_and_evaluate

      config = default.get_config('runlocal')
      config.input.data_dir = '/usr/share/datasets/fashion-mnist'
      metrics = train_and_evaluate(config, workdir='/tmp/centerloss_run')
      print(metrics['accuracy'])

    `python -m centerloss_jax.main --config=configs/default.py:runlocal
    --workdir=/tmp/centerloss_run` does the same from the command line.
  """
  run_config.check_config(config)
  workdir = run_config.check_workdir(workdir)
  is_main = jax.process_index() == 0
  dataset = load_dataset(config.input)
  dp = parallel.DataParallel.create(config.parallel,
                                    class_shards=config.class_shards)
  dp.check_batch_size(config.batch_size)
  train_step_fn, eval_step_fn = step_functions(config)

  # K > 0: P x K batches for the pair losses (an epoch then leaves out each
  # identity's remainder of images, n % K, drawn anew every epoch).
  train_batches = data.batching.BatchReader(
      dataset.train, global_batch_size=config.batch_size, seed=config.seed,
      shuffle=True, drop_remainder=True,
      augment_fn=data.batching.make_augment_fn(
          crop_padding=config.input.crop_padding, flip=config.input.flip),
      images_per_identity=config.batch_images_per_identity,
      process_index=jax.process_index(), process_count=jax.process_count())
  steps_per_epoch = train_batches.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the '
                     f'{train_batches.epoch_length} training examples of an '
                     'epoch.')
  num_steps = state_lib.total_train_steps(config, steps_per_epoch)
  eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                else steps_per_epoch)
  if config.eval_every_steps == -1 and (dataset.verification
                                        or dataset.identification):
    logging.warning('eval_every_steps=-1 runs the open-set protocols every '
                    'epoch (%d steps); set it in steps for face datasets.',
                    steps_per_epoch)
  logging.info('Training %d steps (%.4g epochs of %d steps), evaluating every '
               '%d steps, with the %s learning-rate schedule.', num_steps,
               num_steps / steps_per_epoch, steps_per_epoch, eval_every,
               config.schedule)

  learning_rate_fn = state_lib.create_learning_rate_fn(
      config, steps_per_epoch=steps_per_epoch, total_steps=num_steps)
  init_state = functools.partial(
      state_lib.create_train_state, config, jax.random.key(config.seed),
      image_shape=dataset.image_shape, num_classes=dataset.num_classes,
      learning_rate_fn=learning_rate_fn)
  # Shapes only (a bad model config fails here, before any work): a fresh
  # run computes the state in its layout, a resume reads it into it.
  abstract_state = dp.abstract_state(init_state)

  os.makedirs(workdir, exist_ok=True)
  with contextlib.ExitStack() as run:
    if is_main:  # One lock per run, however many processes it has.
      run.enter_context(lifecycle.WorkdirLock(workdir))
    run_config.store_or_compare(workdir, config,
                                allow_changes=allow_config_change,
                                write=is_main)
    manager = checkpointing.create_manager(
        workdir, max_to_keep=config.keep_checkpoints)
    run.callback(lifecycle.close_within, CLOSE_SECONDS, manager.close,
                 'checkpoint manager')
    pipeline_config = config.pipeline
    batches = data.pipeline.TrainingBatches(
        train_batches, num_steps=num_steps, place=dp.put_batch,
        num_workers=pipeline_config.num_workers,
        num_threads=pipeline_config.num_threads,
        prefetch=pipeline_config.prefetch,
        device_prefetch=pipeline_config.device_prefetch)
    run.callback(lifecycle.close_within, CLOSE_SECONDS, batches.close,
                 'input pipeline')
    state = restore_checkpoint(manager, abstract_state, config,
                               input_iterator=batches)
    if state is None:
      state = dp.create_state(init_state)
    start_step = int(parallel.fetch_replicated(state.step))
    if start_step:
      logging.info('Resumed from the checkpoint at step %d, input at %s.',
                   start_step, batches.get_state())
    if batches.next_step != start_step:
      if batches.next_step:
        raise RuntimeError(
            f'The checkpoint at step {start_step} holds the input state of '
            f'step {batches.next_step}.')
      # No input state in the checkpoint (see `checkpointing`): every
      # batch is a function of its step, so the step positions the input.
      batches.set_state({'next_step': start_step})
    # Records past the restored step are from the lost part of a run.
    writer = reporting.writers.create_writer(
        workdir, is_main_process=is_main, resume_step=start_step)
    run.callback(lifecycle.close_within, CLOSE_SECONDS, writer.close,
                 'metric writers')
    if start_step == 0:
      # Statistics computed where the params live, by every process.
      overview = parameter_overview.get_parameter_overview(
          state.params, include_stats='global')
      if is_main:
        writer.write_hparams(config.to_dict())
        logging.info('Parameters:\n%s', overview)

    state = dp.put_state(state)
    train_fn = dp.compile_train_step(train_step_fn)
    eval_fn = dp.compile_eval_step(eval_step_fn)
    feature_fn = (compile_feature_step(dp, config)
                  if dataset.verification or dataset.identification else None)
    evaluate = functools.partial(_evaluate_and_write, eval_fn, feature_fn, dp,
                                 dataset=dataset, config=config,
                                 writer=writer, workdir=workdir)
    save = functools.partial(_save_checkpoint, manager, dp,
                             input_iterator=batches)
    signals = run.enter_context(lifecycle.PreemptionSignals())

    step, interval, interval_start = start_step, [], time.perf_counter()
    input_wait, final = 0.0, None
    while step < num_steps and signals.received is None:
      # Time blocked on input: the pipeline, not the model, is the
      # bottleneck when this is a large part of the step time.
      wait_start = time.perf_counter()
      batch = next(batches)
      input_wait += time.perf_counter() - wait_start
      state, step_metrics = train_fn(state, batch)
      interval.append(step_metrics)
      step += 1
      if step % config.log_every_steps == 0 or step == num_steps:
        summary = _check_finite_and_summarize(interval, step - len(interval))
        elapsed = time.perf_counter() - interval_start
        summary['steps_per_second'] = len(interval) / elapsed
        summary['input_wait_ms'] = 1000 * input_wait / len(interval)
        summary['input_wait_fraction'] = input_wait / elapsed
        summary['learning_rate'] = float(learning_rate_fn(step - 1))
        writer.write_scalars(step, {f'train/{k}': v
                                    for k, v in summary.items()})
        logging.info('step %d/%d, %.2f steps/s (%.0f%% waiting for input), '
                     'ETA %s', step, num_steps, summary['steps_per_second'],
                     100 * summary['input_wait_fraction'], _format_seconds(
                         (num_steps - step) / summary['steps_per_second']))
        interval, interval_start, input_wait = [], time.perf_counter(), 0.0
      # Save before evaluating: an evaluation that crashes (a corrupt test
      # image) must not lose the steps since the last checkpoint.
      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        save(state, interval, step=step)
      if step % eval_every == 0 or step == num_steps:
        final = evaluate(state, step)
      if not interval:  # Steps/s measures training, not eval or saving.
        interval_start = time.perf_counter()
    if signals.received is not None:
      save(state, interval, step=step)
      writer.flush()
      raise lifecycle.Preempted(signals.received, step, workdir)
    if final is None:  # Resumed after the end: evaluate what was restored.
      final = evaluate(state, step)
    manager.wait_until_finished()
    writer.flush()
  return final['metrics']


def restore_checkpoint(manager, abstract_state,
                       config: ml_collections.ConfigDict, *,
                       input_iterator: Optional[
                           data.pipeline.TrainingBatches] = None):
  """The newest checkpoint in this run's layout, whichever it was saved in.

  A checkpoint of the replicated layout resumes with class_shards > 1 and
  back (`state.move_classifier`); one of another class_shards is read into
  this run's shards by Orbax. Each process reads only its shards, straight
  into their place.

  Args:
    manager: from `checkpointing.create_manager`.
    abstract_state: the run's state, e.g. `DataParallel.abstract_state`;
      its shardings say where each leaf is read to.
    config: the run's config (`class_shards`, `model.name`).
    input_iterator: the input pipeline, set to its checkpointed state.

  Returns:
    The state (in `abstract_state`'s layout), or None without checkpoints.
  """
  names = checkpointing.latest_param_names(manager)
  if names is None:
    return None
  class_sharded = config.class_shards > 1
  scope = models.classifier_scope(config.model.name)
  saved_sharded = 'classifier' in names and scope not in names
  if scope == 'classifier' or saved_sharded == class_sharded:
    return checkpointing.restore_latest(manager, abstract_state,
                                        input_iterator=input_iterator)
  logging.info('The checkpoint keeps the classifier %s; moving it.',
               'outside the model (class-sharded)' if saved_sharded
               else 'in the model (replicated)')
  state = checkpointing.restore_latest(
      manager, state_lib.move_classifier(abstract_state,
                                         class_sharded=saved_sharded,
                                         scope=scope),
      input_iterator=input_iterator)
  return state_lib.move_classifier(state, class_sharded=class_sharded,
                                   scope=scope)


def _save_checkpoint(manager, dp: parallel.DataParallel, state,
                     interval: list[Metrics], *, step: int,
                     input_iterator: data.pipeline.TrainingBatches) -> None:
  """Checkpoints `state` as `step`, unless it is not finite.

  Never lets a non-finite state replace the last good checkpoint: the
  not-yet-logged steps of `interval` are checked first (naming a bad step),
  then the params and centers.
  """
  if interval:
    _check_finite_and_summarize(interval, step - len(interval))
  host_state = dp.host_state(state)
  if not parallel.fetch_replicated(
      _all_finite((host_state.params, host_state.centers))):
    raise NonFiniteLossError(
        f'Non-finite params or centers after step {step}. Training '
        'stopped; the checkpoints in the workdir are from before it.')
  checkpointing.save(manager, host_state, step=step,
                     input_iterator=input_iterator, force=True)


def _check_finite_and_summarize(step_metrics: list[Metrics],
                                first_step: int) -> dict[str, float]:
  """Sums per-step metrics; raises naming the first step with a bad loss.

  Checked at logging time rather than every step: the per-step values stay on
  the device until then, so the check does not stall the pipeline.
  """
  host = parallel.fetch_replicated(step_metrics)
  for offset, sums in enumerate(host):
    _check_finite_losses(sums, step=first_step + offset + 1)
  return summarize(jax.tree.map(lambda *xs: np.sum(xs, axis=0), *host))


def _check_finite_losses(values: dict[str, Any], *, step: int,
                         split: str = '') -> None:
  """Raises NonFiniteLossError naming the first NaN/inf loss and its step."""
  for key in ('cross_entropy', 'center_loss', 'pair_loss'):
    if key in values and not np.isfinite(values[key]):
      raise NonFiniteLossError(
          f'Non-finite {split}{key} ({values[key]}) at step {step}. Training '
          'stopped; the checkpoints in the workdir are from before it. Try a '
          'smaller center_loss.weight or learning_rate.')


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _evaluate_and_write(eval_fn, feature_fn, dp, state, step, *, dataset,
                        config, writer, workdir) -> dict[str, Any]:
  """Evaluates the closed and open sets; writes metrics and plots."""
  result = {'metrics': {}, 'features': np.zeros((0, 0))}
  if dataset.test.num_examples:
    result = evaluate_split(eval_fn, dp, state, dataset.test,
                            batch_size=config.batch_size, seed=config.seed)
    # Checked before anything is written: no non-finite test record.
    _check_finite_losses(result['metrics'], step=step, split='test ')
    writer.write_scalars(step, {f'test/{k}': v
                                for k, v in result['metrics'].items()})
  if feature_fn is not None:
    open_set, curves = features_lib.evaluate_open_set(
        feature_fn, dp, state, dataset, **open_set_settings(config))
    writer.write_scalars(step, open_set)
    logging.info('Open-set metrics at step %d: %s', step, open_set)
    result['metrics'].update(open_set)
    if curves['roc'] and jax.process_index() == 0:
      reporting.plots.plot_roc(
          curves['roc'], path=os.path.join(workdir, f'roc_step_{step}.png'),
          title=f'{dataset.name}, step {step}')
      # The latest curve as data, for comparing runs (face_comparison).
      far, tar = next(iter(curves['roc'].values()))
      with reporting.atomic_write(os.path.join(workdir, 'roc.npz'),
                                  'wb') as f:
        np.savez(f, far=far, tar=tar, step=step)
  if (config.plot_features and result['features'].shape[1] == 2
      and jax.process_index() == 0):
    image = reporting.plots.save_feature_plot(
        os.path.join(workdir, f'features_step_{step}.png'),
        result['features'], result['labels'], dataset.class_names,
        centers=result['centers'], center_classes=result['center_classes'],
        title=(f'{dataset.name} test, step {step}, lambda '
               f'{config.center_loss.weight:g}'))
    writer.write_images(step, {'test/features': image})
    # The latest plot as data, for figures across runs (experiments/).
    with reporting.atomic_write(os.path.join(workdir, 'features.npz'),
                                'wb') as f:
      np.savez(f, features=result['features'], labels=result['labels'],
               centers=result['centers'],
               center_classes=result['center_classes'],
               class_names=np.array(dataset.class_names), step=step)
  return result


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
