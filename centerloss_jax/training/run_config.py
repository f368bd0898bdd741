"""The config at the edge of a run: checked whole, stored, compared on resume.

`check_config` and `check_workdir` run before any work and before anything
is created in the workdir, so a bad value costs no compile and leaves no
empty `metrics.jsonl` behind. `store_or_compare` keeps the run's config as
`<workdir>/config.json` and refuses to resume under a config that would
change the run's trajectory (a different lambda, learning rate, model, ...),
naming the fields, unless the caller allows it explicitly.
`load_stored_config` gives it back, for evaluation (`centerloss_jax.evaluate`),
which `check_evaluation_config` lets change only evaluation and data fields.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from absl import logging
import ml_collections

from centerloss_jax import reporting
from centerloss_jax.training import objectives
from centerloss_jax.training import parallel

CONFIG_FILE = 'config.json'

# Fields a resume may change freely: how often to log, evaluate, save and
# plot, how to run (the parallel mode gives the same numbers up to float
# rounding), how to evaluate, how to reach the other hosts.
TRAJECTORY_FREE_FIELDS = ('log_every_steps', 'eval_every_steps',
                          'checkpoint_every_steps', 'keep_checkpoints',
                          'plot_features', 'parallel')
TRAJECTORY_FREE_GROUPS = ('evaluation.', 'distributed.', 'pipeline.')
# Fields of `config.input` that shape the trained weights (classifier and
# centers, the first dense layer): evaluation cannot change them.
EVALUATION_FIXED_INPUT_FIELDS = ('input.num_classes', 'input.image_shape')

SCHEDULES = ('constant', 'piecewise', 'cosine')


class ConfigChangedError(ValueError):
  """The config differs from the stored one in fields that matter."""


def _require(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise ValueError(f'config.{field} must be {expected}, got {value!r}.')


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field, its value and the rule.

  Only checks values; the data sources check their own arguments when they
  load, and `Objective.from_config` the loss kinds.
  """
  # The objective: alpha in [0, 1], a known rule, known loss kinds.
  objectives.Objective.from_config(config)
  weight = config.center_loss.weight
  _require(_is_number(weight) and weight >= 0, 'center_loss.weight', weight,
           'a finite number >= 0 (lambda of Eq. 5)')
  for field in ('learning_rate',):
    value = config[field]
    _require(_is_number(value) and value > 0, field, value,
             'a finite number > 0')
  for field in ('momentum', 'weight_decay', 'warmup_epochs'):
    value = config[field]
    _require(_is_number(value) and value >= 0, field, value,
             'a finite number >= 0')
  clip = config.grad_clip_norm
  _require(clip is None or (_is_number(clip) and clip > 0), 'grad_clip_norm',
           clip, 'None (no clipping) or a finite number > 0')
  _require(config.schedule in SCHEDULES, 'schedule', config.schedule,
           f'one of {SCHEDULES}')
  if config.num_train_steps <= 0:
    _require(_is_number(config.num_epochs) and config.num_epochs > 0,
             'num_epochs', config.num_epochs,
             '> 0 (or set num_train_steps > 0)')
  for field in ('batch_size', 'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'class_shards'):
    value = config[field]
    _require(isinstance(value, int) and value >= 1, field, value,
             'an integer >= 1')
  _require(config.eval_every_steps == -1 or config.eval_every_steps >= 1,
           'eval_every_steps', config.eval_every_steps,
           '-1 (every epoch) or an integer >= 1')
  _require(config.batch_images_per_identity >= 0,
           'batch_images_per_identity', config.batch_images_per_identity,
           '0 (random batches) or K >= 1')
  _require(config.parallel in parallel.MODES, 'parallel', config.parallel,
           f'one of {parallel.MODES}')
  for field in ('num_workers', 'num_threads', 'prefetch', 'device_prefetch'):
    value = config.pipeline[field]
    _require(isinstance(value, int) and value >= 0, f'pipeline.{field}',
             value, 'an integer >= 0')


def check_workdir(workdir: str) -> str:
  """The absolute workdir, after checking it can hold a run.

  Raises:
    ValueError: an empty path (which would write into the current
      directory).
    NotADirectoryError: the workdir, or its `checkpoints`, is a file.
    PermissionError: the workdir (or `checkpoints`) exists but cannot be
      written (probed by creating and removing a file).
  """
  if not workdir or not workdir.strip():
    raise ValueError(f'workdir must be a directory path, got {workdir!r} '
                     '(an empty path would write into the current '
                     'directory).')
  workdir = os.path.abspath(workdir)
  for path in (workdir, os.path.join(workdir, 'checkpoints')):
    if os.path.exists(path) and not os.path.isdir(path):
      raise NotADirectoryError(
          f'{path} exists and is not a directory; a run needs it to be one '
          '(move the file away or pass another --workdir).')
    if os.path.isdir(path):
      probe = os.path.join(path, f'.write_probe_{os.getpid()}')
      try:
        with open(probe, 'w') as f:
          f.write('probe')
        os.remove(probe)
      except OSError as e:
        raise PermissionError(
            f'Cannot write into {path} ({e.strerror}); a run must save '
            'checkpoints and metrics there.') from e
  return workdir


def _flat(config: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _as_json(config: ml_collections.ConfigDict) -> dict:
  # Through JSON and back, so tuples compare equal to the stored lists.
  return json.loads(config.to_json(sort_keys=True))


def config_changes(stored: dict, current: dict) -> list[str]:
  """'field: stored -> current' for each trajectory field that differs.

  Only fields both configs have are compared: a field added to the configs
  since the run started (or removed from them) is a change of the code,
  whose defaults keep the old behaviour, not of the experiment.
  """
  return _changes(stored, current, free=lambda field: (
      field in TRAJECTORY_FREE_FIELDS
      or field.startswith(TRAJECTORY_FREE_GROUPS)))


def evaluation_changes(stored: dict, current: dict) -> list[str]:
  """`config_changes`, for evaluating a run rather than resuming it.

  Evaluation may also change the data (other verification pairs, moved
  data paths) and the batch size, but not what decides the trained weights'
  shapes: `EVALUATION_FIXED_INPUT_FIELDS`, the model, the losses, ...
  """
  def free(field):
    if field in EVALUATION_FIXED_INPUT_FIELDS:
      return False
    return (field in TRAJECTORY_FREE_FIELDS + ('batch_size',)
            or field.startswith(TRAJECTORY_FREE_GROUPS + ('input.',)))
  return _changes(stored, current, free=free)


def record_changes(stored: dict, current: dict) -> list[str]:
  """`config_changes`, for reusing a finished run's record in a study.

  A record (`experiments/seeds.py`) holds a run's final metrics, so every
  field that changes them counts, `evaluation.*` included (mirroring, PCA).
  Free are how the run was logged, saved and run, and where its data lay:
  the input's paths (`data_dir`, `*_dir`, `*_file`) name a place, not the
  data, so a study's records are reused where the data lies elsewhere.
  """
  def free(field):
    is_path = field.startswith('input.') and field.endswith(('_dir', '_file'))
    return (is_path or field in TRAJECTORY_FREE_FIELDS
            or field.startswith(('distributed.', 'pipeline.')))
  return _changes(stored, current, free=free)


def _changes(stored: dict, current: dict, *, free) -> list[str]:
  old, new = _flat(stored), _flat(current)
  return [f'{field}: {old[field]!r} -> {new[field]!r}'
          for field in sorted(set(old) & set(new))
          if not free(field) and old[field] != new[field]]


def load_stored_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """The run's config from `<workdir>/config.json`, or None if there is none.

  JSON keeps no types: lists come back as the tuples the configs use, and
  unset (None) fields as placeholders of any type, so that command-line
  overrides of them (`--config.evaluation.pca_dim=128`) still parse.
  """
  path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    stored = json.load(f)

  def typed(value):
    if isinstance(value, dict):
      return ml_collections.ConfigDict({k: typed(v) for k, v in value.items()})
    if isinstance(value, list):
      return tuple(typed(v) for v in value)
    if value is None:
      return ml_collections.config_dict.placeholder(object)
    return value
  return typed(stored)


def check_evaluation_config(workdir: str,
                            config: ml_collections.ConfigDict) -> None:
  """Raises if `config` differs from the run's beyond evaluation and data.

  Args:
    workdir: the run's workdir; without a stored config nothing is checked
      (the checkpoint's shapes still are, when it is restored).
    config: the config an evaluation is about to use.

  Raises:
    ConfigChangedError: naming each field that differs, with both values.
  """
  stored = load_stored_config(workdir)
  if stored is None:
    return
  changes = evaluation_changes(_as_json(stored), _as_json(config))
  if changes:
    raise ConfigChangedError(
        f'The config differs from the one {workdir} was trained with '
        f'({CONFIG_FILE}) beyond evaluation and data fields: '
        f'{"; ".join(changes)}. Leave out --config: evaluate then reads the '
        f'run\'s {CONFIG_FILE}, and --config.<field>=... overrides of '
        'evaluation.*, input.* (but not input.num_classes or '
        'input.image_shape), batch_size or parallel apply to it.')


def store_or_compare(workdir: str, config: ml_collections.ConfigDict, *,
                     allow_changes: bool, write: bool) -> None:
  """Stores the config, or checks it against the one stored by this run.

  Args:
    workdir: the run's (absolute, locked) workdir.
    config: this invocation's config.
    allow_changes: resume even if trajectory fields changed (the new
      config is then stored, the change logged).
    write: whether this process writes the file (process 0 only).

  Raises:
    ConfigChangedError: trajectory fields changed and `allow_changes` is
      False; the message names each field with its old and new value.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = _as_json(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    changes = config_changes(stored, current)
    if changes and not allow_changes:
      raise ConfigChangedError(
          f'The config differs from the one this workdir was trained with '
          f'({path}) in fields that change the run: {"; ".join(changes)}. '
          'Resume with the stored config, pass another --workdir, or allow '
          'the change explicitly (--allow_config_change).')
    if changes:
      logging.warning('Resuming with a changed config (allowed): %s',
                      '; '.join(changes))
    elif stored == current:
      return
  if write:
    with reporting.atomic_write(path) as f:
      json.dump(current, f, indent=2, sort_keys=True)
