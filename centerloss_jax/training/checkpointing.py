"""Orbax checkpoints of the whole training state, with a safe resume.

A checkpoint holds the params, optimizer state, centers (a popular port left
them out, so they reset on resume), batch statistics, step, RNG, and the
position in the data (epoch and step within it). Orbax writes each checkpoint
to a temporary directory and renames it when complete, so a save that is
killed leaves no half-written step behind; and if the latest step is
unreadable anyway (a corrupt file), `restore_latest` falls back to the
previous one with a warning instead of stopping the run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

PyTree = Any


def create_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  """A manager for `<workdir>/checkpoints` keeping the last `max_to_keep`."""
  if max_to_keep < 1:
    raise ValueError(f'keep_checkpoints must be >= 1, got {max_to_keep}.')
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def _to_savable(state: PyTree) -> PyTree:
  """Typed PRNG keys are stored as their raw uint32 data.

  Works on a concrete state and on its `jax.eval_shape` (whose key is a
  ShapeDtypeStruct), the cheap restore target.
  """
  if isinstance(state.rng, jax.ShapeDtypeStruct):
    return state.replace(rng=jax.eval_shape(jax.random.key_data, state.rng))
  return state.replace(rng=jax.random.key_data(state.rng))


def save(manager: ocp.CheckpointManager, state: PyTree, *, step: int,
         data_position: dict[str, int], force: bool = False) -> bool:
  """Saves `state` (a TrainState, one copy) as `step`; blocks until done.

  With several processes, every process calls this with the same global,
  replicated state; Orbax writes it once.

  Args:
    manager: from `create_manager`.
    state: one copy of the TrainState (`DataParallel.host_state`).
    step: the step number to save under (the state's step).
    data_position: where the input pipeline stands, e.g.
      {'epoch': 3, 'step_in_epoch': 120}; restored with the state.
    force: save even if the manager's interval policy would skip this step.

  Returns:
    Whether a checkpoint was written.
  """
  if step in manager.all_steps():
    return False
  saved = manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(_to_savable(state)),
          data_position=ocp.args.JsonSave(dict(data_position))),
      force=force)
  manager.wait_until_finished()
  return saved


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree
                   ) -> Optional[tuple[PyTree, dict[str, int]]]:
  """Restores the newest readable checkpoint, or returns None if none exists.

  Args:
    manager: from `create_manager`.
    abstract_state: a TrainState (or its `jax.eval_shape`) giving the
      structure, shapes and dtypes to restore into.

  Returns:
    `(state, data_position)` or None when the directory has no checkpoint.

  Raises:
    RuntimeError: checkpoints exist but none of them could be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        _to_savable(abstract_state))
  errors = []
  for step in steps:
    try:
      restored = manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target),
              data_position=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      # Any failure to read (truncated file, missing shard, bad metadata):
      # an older checkpoint is better than no resume at all.
      logging.warning('Checkpoint at step %d is unreadable (%s: %s); trying '
                      'the previous one.', step, type(e).__name__, e)
      errors.append(f'step {step}: {type(e).__name__}: {e}')
      continue
    state = restored['state']
    state = state.replace(rng=jax.random.wrap_key_data(state.rng))
    return state, {k: int(v) for k, v in restored['data_position'].items()}
  raise RuntimeError(
      f'None of the checkpoints in {manager.directory} could be restored:\n' +
      '\n'.join(errors))
