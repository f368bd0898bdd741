"""Evaluates a trained model's features on unseen identities.

  python -m centerloss_jax.evaluate --config=configs/synthetic_faces.py \
      --workdir=runs/synthetic_faces

Restores the latest checkpoint in `<workdir>/checkpoints` (the workdir the
trainer wrote) and runs the open-set protocols of the config's dataset, the
same code the trainer runs at each evaluation:

* verification (LFW protocol): features of each image and its mirror
  concatenated, optional PCA fitted on the 9 training folds
  (`--config.evaluation.pca_dim=...`), cosine similarity, 10-fold accuracy,
  ROC, AUC and TAR at FAR 1e-3 ... 1e-6 where the pair count allows;
* identification (MegaFace protocol): rank-1 and the CMC against the
  distractors, computed in blocks.

Writes `<output_dir>/evaluation.json` (the metrics, and the CMC as
`<set>/cmc`: rank-1 ... rank-`max_rank` rates) and `roc.png`, and prints
them. `--output_dir` defaults to `<workdir>/evaluation`.
Evaluate on another pairs set by overriding the config, e.g.
`--config.input.pairs_dir=/data/lfw --config.input.pairs_file=/data/pairs.txt`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from centerloss_jax import data
from centerloss_jax import reporting
from centerloss_jax.training import checkpointing
from centerloss_jax.training import features
from centerloss_jax.training import parallel
from centerloss_jax.training import state as state_lib
from centerloss_jax.training import trainer


def _define_flags() -> None:
  """Defines the command line's flags.

  Only when run as a program, so that `evaluate_checkpoint` can be imported
  next to other absl programs' flags (e.g. in a test session).
  """
  flags.DEFINE_string('workdir', None,
                      'The training run\'s workdir (with checkpoints/).')
  flags.DEFINE_string('output_dir', None, 'Where to write evaluation.json and '
                      'roc.png; default <workdir>/evaluation.')
  config_flags.DEFINE_config_file('config', None,
                                  'The run\'s experiment config.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def restore_checkpoint(config, workdir: str,
                       dataset: data.Dataset) -> state_lib.TrainState:
  """The latest checkpoint of a training run, as a host TrainState.

  Args:
    config: the run's experiment config.
    workdir: the run's workdir.
    dataset: the config's dataset (for the image shape and classes).

  Returns:
    The restored state (unplaced; `DataParallel.put_state` it).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`; nothing is created there.
  """
  checkpoint_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  missing = FileNotFoundError(
      f'No checkpoint under {checkpoint_dir}: train first (python -m '
      'centerloss_jax.main ... --workdir=...).')
  if not os.path.isdir(checkpoint_dir):
    raise missing
  # Shapes only: the checkpoint provides every value.
  target = jax.eval_shape(functools.partial(
      state_lib.create_train_state, config, image_shape=dataset.image_shape,
      num_classes=dataset.num_classes,
      learning_rate_fn=state_lib.create_learning_rate_fn(config, 1)),
                          jax.random.key(config.seed))
  manager = checkpointing.create_manager(
      os.path.abspath(workdir), max_to_keep=config.keep_checkpoints)
  try:
    restored = checkpointing.restore_latest(manager, target)
  finally:
    manager.close()
  if restored is None:
    raise missing
  return restored[0]


def evaluate_checkpoint(config, workdir: str) -> tuple[dict[str, Any],
                                                       dict[str, Any]]:
  """Open-set metrics of the latest checkpoint in `workdir`.

  Args:
    config: the experiment config the run was trained with (possibly with
      other evaluation sets or `evaluation` settings).
    workdir: the training run's workdir.

  Returns:
    (metrics '<set>/<metric>' plus 'step', curves as
    `features.evaluate_open_set`'s).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the config's dataset has no verification or identification
      set.
  """
  dataset = trainer.load_dataset(config.input)
  if dataset.verification is None and dataset.identification is None:
    raise ValueError(
        f'input.source={config.input.source!r} has no verification pairs or '
        'identification set to evaluate on; configure one (e.g. '
        'input.pairs_dir and input.pairs_file).')
  state = restore_checkpoint(config, workdir, dataset)
  dp = parallel.DataParallel.create(config.parallel,
                                    class_shards=config.class_shards)
  dp.check_batch_size(config.batch_size)
  metrics, curves = features.evaluate_open_set(
      trainer.compile_feature_step(dp, config), dp, dp.put_state(state),
      dataset, **trainer.open_set_settings(config))
  metrics['step'] = int(state.step)
  return metrics, curves


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  reporting.writers.quiet_orbax_logging()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  parallel.initialize_distributed(config.distributed)
  metrics, curves = evaluate_checkpoint(config, workdir)
  if jax.process_index() != 0:
    return
  output_dir = flags.FLAGS.output_dir or os.path.join(workdir, 'evaluation')
  os.makedirs(output_dir, exist_ok=True)
  results = dict(metrics)
  for name, rates in curves['cmc'].items():
    results[f'{name}/cmc'] = [float(r) for r in rates]
  with reporting.atomic_write(os.path.join(output_dir,
                                           'evaluation.json')) as f:
    json.dump(results, f, indent=2, sort_keys=True)
  if curves['roc']:
    reporting.plots.plot_roc(curves['roc'],
                             path=os.path.join(output_dir, 'roc.png'),
                             title=f'{config.input.name}, step '
                             f'{metrics["step"]}')
  logging.info('Open-set metrics: %s', results)
  for name, value in sorted(results.items()):
    if isinstance(value, float):
      value = f'{value:.4f}'
    elif isinstance(value, list):
      value = ' '.join(f'{v:.4f}' for v in value)
    print(f'{name:40s} {value}')
  print(f'Written to {output_dir}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
