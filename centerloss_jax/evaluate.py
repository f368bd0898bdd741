"""Evaluates a trained model's features on unseen identities.

  python -m centerloss_jax.evaluate --workdir=runs/synthetic_faces

Reads the run's config from `<workdir>/config.json` (the trainer stores it),
restores the params, centers and batch statistics of the latest checkpoint
in `<workdir>/checkpoints` (not the optimizer state: how the run was
trained does not matter) and runs the open-set protocols of the config's
dataset, the same code the trainer runs at each evaluation:

* verification (LFW protocol): features of each image and its mirror
  concatenated, optional PCA fitted on the 9 training folds
  (`--config.evaluation.pca_dim=...`), cosine similarity, 10-fold accuracy,
  ROC, AUC and TAR at FAR 1e-3 ... 1e-6 where the pair count allows;
* identification (MegaFace protocol): rank-1 and the CMC against the
  distractors, computed in blocks.

Overrides may change evaluation and data fields only: `evaluation.*`,
`input.*` (other pairs, moved data; not `input.num_classes` or
`input.image_shape`), `batch_size`, `parallel`, e.g.
`--config.input.pairs_dir=/data/lfw --config.input.pairs_file=/data/pairs.txt`.
Any other change is refused, naming the fields. `--config=<file>` is only
needed for a workdir without `config.json`; with one, the file must agree
with it outside those fields.

Writes `<output_dir>/evaluation.json` (the metrics, and the CMC as
`<set>/cmc`: rank-1 ... rank-`max_rank` rates) and `roc.png`, and prints
them. `--output_dir` defaults to `<workdir>/evaluation`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from centerloss_jax import data
from centerloss_jax import reporting
from centerloss_jax.training import checkpointing
from centerloss_jax.training import features
from centerloss_jax.training import lifecycle
from centerloss_jax.training import parallel
from centerloss_jax.training import run_config
from centerloss_jax.training import state as state_lib
from centerloss_jax.training import trainer


def _define_flags() -> None:
  """Defines the command line's flags, except `--config`
  (`_define_config_flag`, once `--workdir` is known).

  Only when run as a program, so that `evaluate_checkpoint` can be imported
  next to other absl programs' flags (e.g. in a test session).
  """
  flags.DEFINE_string('workdir', None,
                      'The training run\'s workdir (with checkpoints/).')
  flags.DEFINE_string('output_dir', None, 'Where to write evaluation.json and '
                      'roc.png; default <workdir>/evaluation.')
  flags.mark_flags_as_required(['workdir'])


def _define_config_flag(argv: list[str]) -> None:
  """Defines `--config`: the workdir's stored config, unless a file is named.

  `--workdir` is read first; the stored config then becomes the flag's value,
  so that `--config.<field>=...` overrides it. A command line that names a
  config file (`--config=...`) gets that file instead.

  Raises:
    flags.Error: no `--workdir`, or no stored config and no file named.
  """
  flags.FLAGS(argv, known_only=True)
  names_a_file = any(arg == '--config' or arg.startswith('--config=')
                     for arg in argv[1:])
  workdir = flags.FLAGS.workdir
  stored = None if names_a_file else run_config.load_stored_config(workdir)
  if stored is not None:
    config_flags.DEFINE_config_dict(
        'config', stored,
        f'The run\'s config (from {workdir}/{run_config.CONFIG_FILE}).',
        lock_config=True)
    return
  if not names_a_file:
    raise flags.Error(
        f'{workdir} has no {run_config.CONFIG_FILE} (not a workdir, or '
        'trained before the trainer stored it?); pass the run\'s config with '
        '--config=<file>.')
  config_flags.DEFINE_config_file('config', None,
                                  'The run\'s experiment config.',
                                  lock_config=True)


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data.Dataset) -> state_lib.TrainState:
  """The latest checkpoint's weights, as a host TrainState for evaluation.

  Only the params, centers, batch statistics and step are restored
  (`checkpointing.restore_latest_weights`); the state has no optimizer.

  Args:
    config: the run's experiment config (its model, losses and classes).
    workdir: the run's workdir.
    dataset: the config's dataset (for the image shape and classes).

  Returns:
    The restored state (unplaced; `DataParallel.put_state` it).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`; nothing is created there.
    checkpointing.CheckpointMismatchError: the checkpoint does not fit the
      config's model, naming the leaves.
  """
  checkpoint_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  missing = FileNotFoundError(
      f'No checkpoint under {checkpoint_dir}: train first (python -m '
      'centerloss_jax.main ... --workdir=...).')
  if not os.path.isdir(checkpoint_dir):
    raise missing
  rng = jax.random.key(config.seed)
  # Shapes only: the checkpoint provides every value.
  abstract = jax.eval_shape(functools.partial(
      state_lib.create_inference_state, config,
      image_shape=dataset.image_shape, num_classes=dataset.num_classes), rng)
  manager = checkpointing.create_manager(
      os.path.abspath(workdir), max_to_keep=config.keep_checkpoints)
  try:
    restored = checkpointing.restore_latest_weights(manager, abstract)
  finally:
    manager.close()
  if restored is None:
    raise missing
  return restored.replace(rng=rng)


def evaluate_checkpoint(
    workdir: str, config: Optional[ml_collections.ConfigDict] = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Open-set metrics of the latest checkpoint in `workdir`.

  Args:
    workdir: the training run's workdir.
    config: the config to evaluate with; None reads the run's own
      (`<workdir>/config.json`). It may differ from the stored one only in
      evaluation and data fields (`run_config.check_evaluation_config`).

  Returns:
    (metrics '<set>/<metric>' plus 'step', curves as
    `features.evaluate_open_set`'s).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`, or no config given and
      none stored.
    run_config.ConfigChangedError: `config` differs from the stored one in
      other fields, naming them.
    ValueError: the config's dataset has no verification or identification
      set.
  """
  if config is None:
    config = run_config.load_stored_config(workdir)
    if config is None:
      raise FileNotFoundError(
          f'No {run_config.CONFIG_FILE} in {workdir} to read the run\'s '
          'config from; pass the config it was trained with.')
  else:  # The stored config itself needs no comparison with itself.
    run_config.check_evaluation_config(workdir, config)
  dataset = trainer.load_dataset(config.input)
  if dataset.verification is None and dataset.identification is None:
    raise ValueError(
        f'input.source={config.input.source!r} has no verification pairs or '
        'identification set to evaluate on; configure one (e.g. '
        'input.pairs_dir and input.pairs_file).')
  dp = parallel.DataParallel.create(config.parallel,
                                    class_shards=config.class_shards)
  dp.check_batch_size(config.batch_size)
  state = restore_checkpoint(config, workdir, dataset)
  metrics, curves = features.evaluate_open_set(
      trainer.compile_feature_step(dp, config), dp, dp.put_state(state),
      dataset, **trainer.open_set_settings(config))
  metrics['step'] = int(state.step)
  return metrics, curves


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  lifecycle.run_main(_evaluate)


def _evaluate() -> None:
  reporting.writers.quiet_orbax_logging()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  parallel.initialize_distributed(config.distributed)
  metrics, curves = evaluate_checkpoint(workdir, config)
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
  app.run(main, flags_parser=functools.partial(
      lifecycle.parse_flags, define_flags=_define_config_flag))
