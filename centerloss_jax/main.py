"""Runs an experiment config: train, evaluate, checkpoint, plot.

Intentionally short: the logic is in `centerloss_jax.training`, importable
and tested.

  python -m centerloss_jax.main --config=configs/default.py --workdir=/tmp/cl

Override any config field, e.g. `--config.center_loss.weight=0`.

Exit codes: 0 when the run finished; 143 (SIGTERM) or 130 (SIGINT) when it
was preempted, after saving a checkpoint (rerun the command to resume); 1 on
any other failure, with the reason on the last line of stderr.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from centerloss_jax.reporting import writers
from centerloss_jax.training import lifecycle
from centerloss_jax.training import parallel
from centerloss_jax.training import trainer

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'plots; a rerun with the same workdir resumes.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_bool('allow_config_change', False, 'Resume even if the config '
                  "differs from the workdir's config.json in fields that "
                  'change the run (lambda, learning rate, model, ...).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  lifecycle.run_main(_train)


def _train():
  writers.quiet_orbax_logging()
  # Before anything touches the devices: multi-host runs need the runtime up.
  parallel.initialize_distributed(FLAGS.config.distributed)
  logging.info('JAX devices: %s (process %d of %d)', jax.devices(),
               jax.process_index(), jax.process_count())
  metrics = trainer.train_and_evaluate(
      FLAGS.config, FLAGS.workdir,
      allow_config_change=FLAGS.allow_config_change)
  logging.info('Final test metrics: %s', metrics)
  print('Final test metrics:', {k: round(v, 4) for k, v in metrics.items()})
  print(f'Metrics, plots and checkpoints are in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=lifecycle.parse_flags)
