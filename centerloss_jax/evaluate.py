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

Writes `<output_dir>/evaluation.json` (the metrics) and `roc.png`, and
prints the metrics. `--output_dir` defaults to `<workdir>/evaluation`.
Evaluate on another pairs set by overriding the config, e.g.
`--config.input.pairs_dir=/data/lfw --config.input.pairs_file=/data/pairs.txt`.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from centerloss_jax import checkpointing
from centerloss_jax import input_pipeline
from centerloss_jax import parallel
from centerloss_jax import train
from centerloss_jax import verification
from centerloss_jax import writers

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'The training run\'s workdir (with checkpoints/).',
    required=True)
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Where to write evaluation.json and roc.png; default '
    '<workdir>/evaluation.')
config_flags.DEFINE_config_file('config', None, 'The run\'s experiment config.',
                                lock_config=True)
flags.mark_flags_as_required(['config'])


def evaluate_checkpoint(config, workdir: str) -> tuple[dict[str, float],
                                                       dict]:
  """Open-set metrics of the latest checkpoint in `workdir`.

  Args:
    config: the experiment config the run was trained with (possibly with
      other evaluation sets or `evaluation` settings).
    workdir: the training run's workdir.

  Returns:
    (metrics '<set>/<metric>' plus 'step', ROC curves {set: (far, tar)}).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the config's dataset has no verification or identification
      set.
  """
  dataset = input_pipeline.load_dataset(config.input)
  if dataset.verification is None and dataset.identification is None:
    raise ValueError(
        f'input.source={config.input.source!r} has no verification pairs or '
        'identification set to evaluate on; configure one (e.g. '
        'input.pairs_dir and input.pairs_file).')
  dp = parallel.DataParallel.create(
      config.parallel, model_shards=config.get('class_shards', 1))
  dp.check_batch_size(config.batch_size)
  state = train.create_train_state(
      config, jax.random.key(config.seed), image_shape=dataset.image_shape,
      num_classes=dataset.num_classes,
      learning_rate_fn=train.create_learning_rate_fn(config, 1))
  manager = checkpointing.create_manager(
      os.path.abspath(workdir), max_to_keep=config.keep_checkpoints)
  try:
    restored = checkpointing.restore_latest(manager, state)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(
        f'No checkpoint under {os.path.join(workdir, "checkpoints")}: train '
        'first (python -m centerloss_jax.main ... --workdir=...).')
  state, _ = restored
  step = int(state.step)
  metrics, curves = train.evaluate_open_set(dp, dp.put_state(state), dataset,
                                            config)
  metrics['step'] = step
  return metrics, curves


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_orbax_logging()
  config = flags.FLAGS.config
  parallel.initialize_distributed(config.distributed)
  metrics, curves = evaluate_checkpoint(config, _WORKDIR.value)
  if jax.process_index() != 0:
    return
  output_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, 'evaluation')
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, 'evaluation.json')
  # Written whole or not at all: a crash never leaves half a file.
  with open(path + '.tmp', 'w') as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  if curves:
    verification.plot_roc(curves, path=os.path.join(output_dir, 'roc.png'),
                          title=f'{config.input.name}, step {metrics["step"]}')
  logging.info('Open-set metrics: %s', metrics)
  for name, value in sorted(metrics.items()):
    print(f'{name:40s} {value:.4f}' if isinstance(value, float)
          else f'{name:40s} {value}')
  print(f'Written to {output_dir}')


if __name__ == '__main__':
  app.run(main)
