"""Orbax checkpoints of the whole training state, with a safe resume.

A checkpoint holds the params, optimizer state, centers (a popular port left
them out, so they reset on resume), batch statistics, step and RNG, and,
when given one, the input pipeline's grain iterator (item `input`, written
by grain's Orbax handler, one JSON state per process). Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a save
that is killed leaves no half-written step behind.

Integrity. Each checkpoint also stores a fingerprint of every leaf (a
position-weighted sum of its bits, computed on the devices, so a single
changed word anywhere changes it). `restore_latest` recomputes it; a step
that is unreadable or whose fingerprint differs (a flipped byte restores
without an error otherwise) is moved aside to `<workdir>/checkpoints_corrupt/`
with a warning, and the previous step is tried. Moving it aside, not just
skipping it, lets the run save that step afresh when it gets there again.

Evaluation reads less: `restore_latest_weights` restores only the params,
centers, batch statistics and step (no optimizer state), verified the same
way, after checking their shapes against the checkpoint's own metadata, so a
model that does not fit is named leaf by leaf instead of failing deep in
TensorStore.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any, Optional

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import orbax.checkpoint as ocp

from centerloss_jax.training import lifecycle

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
    data = jax.eval_shape(jax.random.key_data, state.rng)
    return state.replace(rng=jax.ShapeDtypeStruct(
        data.shape, data.dtype, sharding=state.rng.sharding))
  return state.replace(rng=jax.random.key_data(state.rng))


@jax.jit
def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """uint32: the sum of a leaf's 32-bit words times odd position weights.

  A changed word changes its term by `d * odd`, never 0 mod 2**32 for
  d != 0, so any single corrupted word is caught. The weights are products
  of odd row and column factors, which stay below 2**31 for any size.
  """
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  # 8-byte leaves (with jax_enable_x64) become pairs of 32-bit words.
  words = jax.lax.bitcast_convert_type(
      x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[
          x.dtype.itemsize]).astype(jnp.uint32)
  words = words.reshape((-1, words.shape[-1]) if words.ndim else (1, 1))
  rows = 2 * jax.lax.broadcasted_iota(jnp.uint32, words.shape, 0) + 1
  columns = 2 * jax.lax.broadcasted_iota(jnp.uint32, words.shape, 1) + 1
  return jnp.sum(words * rows * columns, dtype=jnp.uint32)


def fingerprint(state: PyTree) -> dict[str, int]:
  """`_leaf_fingerprint` of every leaf of a savable state, by leaf path.

  One compiled call per leaf, not one for the whole tree: XLA's CPU backend
  materialises a leaf's weighted words before summing them (its large
  reductions are split into a reduce-window, which takes no fused
  producer), and in one program every leaf's copy is live at once, a whole
  second state at the save of a class-sharded run. Leaf by leaf, the extra
  memory is the largest leaf's share. (Calls of a shape seen before reuse
  its compilation: the optimizer's twins of the params cost none.)
  """
  # Each value is fetched before the next leaf's call: calls dispatch
  # asynchronously, and queued ones could otherwise run side by side.
  return {jax.tree_util.keystr(path):
              int(jax.device_get(_leaf_fingerprint(leaf)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def save(manager: ocp.CheckpointManager, state: PyTree, *, step: int,
         input_iterator: Optional[grain.DatasetIterator] = None,
         force: bool = False) -> bool:
  """Saves `state` (a TrainState, one copy) as `step`; blocks until done.

  With several processes, every process calls this with the same global,
  replicated state; Orbax writes it once.

  Args:
    manager: from `create_manager`.
    state: one copy of the TrainState (`DataParallel.host_state`).
    step: the step number to save under (the state's step).
    input_iterator: the input pipeline, its state as of `step` (e.g.
      `data.pipeline.TrainingBatches`); each process writes its own.
    force: save even if the manager's interval policy would skip this step.

  Returns:
    Whether a checkpoint was written.
  """
  if step in manager.all_steps():
    return False
  savable = _to_savable(state)
  items = dict(
      state=ocp.args.StandardSave(savable),
      integrity=ocp.args.JsonSave({'fingerprint': fingerprint(savable)}))
  if input_iterator is not None:
    # A synchronous item: written before `manager.save` returns, so the
    # state is the one at `step` even while the pipeline runs on.
    items['input'] = grain.checkpoint.CheckpointSave(input_iterator)
  saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
  manager.wait_until_finished()
  return saved


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's restored leaves do not match its stored fingerprint."""


def _check_fingerprints(expected: dict[str, int],
                        actual: dict[str, int]) -> None:
  """Raises CorruptCheckpointError if a restored leaf's fingerprint (of
  `actual`, which may be a subset of the saved leaves) differs."""
  changed = [path for path in actual if expected.get(path) != actual[path]]
  if changed:
    raise CorruptCheckpointError(
        f'{len(changed)} of {len(actual)} restored leaves differ from their '
        f'fingerprint at save time, e.g. {changed[0]}')


def _skip_unusable(step: int, error: Exception,
                   unusable: list[tuple[int, str]]) -> None:
  """Records and logs a step that cannot be restored."""
  reason = lifecycle.one_line_reason(error)
  logging.warning('Checkpoint at step %d is unusable (%s); trying the '
                  'previous one.', step, reason)
  unusable.append((step, reason))


def _restore_step(manager: ocp.CheckpointManager, step: int,
                  target: PyTree,
                  input_iterator: Optional[grain.DatasetIterator]) -> PyTree:
  """One step's (savable) state, verified if it can be, and its input."""
  step_dir = os.path.join(manager.directory, str(step))
  has_integrity = os.path.isdir(os.path.join(step_dir, 'integrity'))
  items = dict(state=ocp.args.StandardRestore(target))
  if has_integrity:
    items['integrity'] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if has_integrity:
    _check_fingerprints(restored['integrity']['fingerprint'],
                        fingerprint(restored['state']))
  else:
    logging.warning('Checkpoint at step %d has no fingerprint (saved by an '
                    'older version); restored unverified.', step)
  if input_iterator is not None:
    _restore_input(manager, step, input_iterator)
  return restored['state']


def _restore_input(manager: ocp.CheckpointManager, step: int,
                   input_iterator: grain.DatasetIterator) -> None:
  """Sets `input_iterator` to its state at `step`, if the step has it.

  Restored after the state is verified, so a corrupt step never moves the
  pipeline. A step without this process's input state (saved without
  one, by an older version, or by another number of processes) leaves the
  iterator as it is, with a warning: the caller positions it by the step.
  """
  # grain's handler writes one file per process, named by this layout.
  state_file = os.path.join(
      manager.directory, str(step), 'input',
      f'process_{jax.process_index()}-of-{jax.process_count()}.json')
  if not os.path.exists(state_file):
    logging.warning('Checkpoint at step %d has no input state for process '
                    '%d of %d.', step, jax.process_index(),
                    jax.process_count())
    return
  manager.restore(step, args=ocp.args.Composite(
      input=grain.checkpoint.CheckpointRestore(input_iterator)))


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a bad step out of the manager's directory; returns where to."""
  source = os.path.join(manager.directory, str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory)),
                            'checkpoints_corrupt')
  target = os.path.join(target_dir, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    shutil.move(source, target)
  if jax.process_count() > 1:
    # Every process must see the move before it lists the steps again.
    multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree, *,
                   input_iterator: Optional[grain.DatasetIterator] = None
                   ) -> Optional[PyTree]:
  """Restores the newest sound checkpoint, or returns None if none exists.

  Steps newer than it that are unreadable or corrupt (see the module
  docstring) are moved aside to `checkpoints_corrupt/`, with a one-line
  warning each. When no step at all can be restored, nothing is moved: that
  is a mismatch of the run (another model, another code version), not
  corruption, and the checkpoints stay for the run they belong to.

  Args:
    manager: from `create_manager`.
    abstract_state: a TrainState (or its `jax.eval_shape`) giving the
      structure, shapes and dtypes to restore into.
    input_iterator: the input pipeline (a grain iterator), set to its saved
      state at the restored step where the step has one (see `save`).

  Returns:
    The restored state, or None when the directory has no checkpoint.

  Raises:
    RuntimeError: checkpoints exist but none of them could be restored,
      with each step's one-line reason.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        _to_savable(abstract_state))
  unusable = []
  for step in steps:
    try:
      state = _restore_step(manager, step, target, input_iterator)
    except Exception as e:  # pylint: disable=broad-except
      # Any failure to read (truncated file, missing shard, bad metadata,
      # other shapes) or a fingerprint mismatch: an older checkpoint is
      # better than no resume at all.
      _skip_unusable(step, e, unusable)
      continue
    for bad_step, _ in unusable:
      logging.warning('Moved the unusable checkpoint at step %d to %s.',
                      bad_step, _move_aside(manager, bad_step))
    return state.replace(rng=jax.random.wrap_key_data(state.rng))
  raise RuntimeError(
      f'None of the {len(steps)} checkpoints in {manager.directory} could be '
      'restored into this run (another model or config?): ' + '; '.join(
          f'step {step}: {reason}' for step, reason in unusable))


def latest_param_names(manager: ocp.CheckpointManager) -> Optional[set[str]]:
  """The top-level params of the newest checkpoint whose metadata reads (no
  array is read), e.g. to tell the layout it was saved in.

  Returns:
    The names; None when there is no checkpoint, an empty set when no
    step's metadata can be read (`restore_latest` then says why).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  for step in steps:
    try:
      metadata = ocp.PyTreeCheckpointHandler().metadata(
          epath.Path(_state_directory(manager, step))).tree
      return set(metadata['params'])
    except Exception:  # pylint: disable=broad-except
      continue  # Unreadable: restore_latest moves it aside, with a reason.
  return set()


# What evaluation restores of a TrainState: the model's weights, its centers
# and the step, not the optimizer state or the RNG.
WEIGHT_FIELDS = ('step', 'params', 'centers', 'batch_stats')


class CheckpointMismatchError(ValueError):
  """A checkpoint's leaves do not fit the model a config builds."""


def _shape_mismatches(metadata: PyTree, target: PyTree) -> list[str]:
  """'path: checkpoint (...), config (...)' for each leaf that differs."""
  stored = {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
            jax.tree_util.tree_flatten_with_path(metadata)[0]}
  wanted = {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
            jax.tree_util.tree_flatten_with_path(target)[0]}
  problems = []
  for path in sorted(set(stored) | set(wanted)):
    if path not in stored:
      problems.append(f'{path}: not in the checkpoint, {wanted[path]} in '
                      'this config\'s model')
    elif path not in wanted:
      problems.append(f'{path}: {stored[path]} in the checkpoint, not in '
                      'this config\'s model')
    elif stored[path] != wanted[path]:
      problems.append(f'{path}: {stored[path]} in the checkpoint, '
                      f'{wanted[path]} in this config\'s model')
  return problems


def _as_state_paths(fingerprints: dict[str, int]) -> dict[str, int]:
  """Fingerprint keys of a dict of fields (`['params']...`) as the saved
  TrainState's (`.params...`)."""
  return {re.sub(r"^\['(\w+)'\]", r'.\1', path): value
          for path, value in fingerprints.items()}


def restore_latest_weights(manager: ocp.CheckpointManager,
                           abstract_state: PyTree) -> Optional[PyTree]:
  """The newest checkpoint's params, centers, batch statistics and step.

  Nothing else is read: the optimizer state can be of any optimizer, or
  absent from `abstract_state` (`state.create_inference_state`). Nothing is
  moved aside or written; a newest step that cannot be read or fails its
  fingerprint is skipped with a warning for the previous one.

  Args:
    manager: from `create_manager`.
    abstract_state: a TrainState (or its `jax.eval_shape`) whose
      `WEIGHT_FIELDS` give the structure and shapes to restore.

  Returns:
    `abstract_state` with the restored `WEIGHT_FIELDS` (host arrays; its
    other fields as given), or None when there is no checkpoint.

  Raises:
    CheckpointMismatchError: the newest step's leaves differ from
      `abstract_state`'s in structure or shape, each one named.
    RuntimeError: no step could be read, with each step's reason.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  target = {field: jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                getattr(abstract_state, field))
            for field in WEIGHT_FIELDS
            if jax.tree.leaves(getattr(abstract_state, field))}
  unusable = []
  for step in steps:
    try:
      metadata = ocp.PyTreeCheckpointHandler().metadata(
          epath.Path(_state_directory(manager, step))).tree
    except Exception as e:  # pylint: disable=broad-except
      _skip_unusable(step, e, unusable)
      continue
    mismatches = _shape_mismatches(
        {field: metadata.get(field, {}) for field in target}, target)
    if mismatches:
      raise CheckpointMismatchError(
          f'The checkpoint at step {step} in {manager.directory} does not fit '
          f'the model this config builds ({len(mismatches)} leaves): '
          + '; '.join(mismatches[:5])
          + ('; ...' if len(mismatches) > 5 else '')
          + '. Evaluate with the config the run was trained with.')
    try:
      weights = _restore_weights(manager, step, target)
    except Exception as e:  # pylint: disable=broad-except
      _skip_unusable(step, e, unusable)
      continue
    return abstract_state.replace(**weights)
  raise RuntimeError(
      f'None of the {len(steps)} checkpoints in {manager.directory} could be '
      'read: ' + '; '.join(f'step {step}: {reason}'
                           for step, reason in unusable))


def _state_directory(manager: ocp.CheckpointManager, step: int) -> str:
  # Read directly: the manager knows the item's handler only once it saved.
  return os.path.join(manager.directory, str(step), 'state')


def _restore_weights(manager: ocp.CheckpointManager, step: int,
                     target: dict[str, PyTree]) -> dict[str, PyTree]:
  """`target`'s fields of one step, verified against its fingerprint."""
  weights = ocp.PyTreeCheckpointer().restore(
      _state_directory(manager, step),
      args=ocp.args.PyTreeRestore(
          target, restore_args=ocp.checkpoint_utils.construct_restore_args(
              target), partial_restore=True))
  if os.path.isdir(os.path.join(manager.directory, str(step), 'integrity')):
    expected = manager.restore(step, args=ocp.args.Composite(
        integrity=ocp.args.JsonRestore()))['integrity']['fingerprint']
    _check_fingerprints(expected, _as_state_paths(fingerprint(weights)))
  else:
    logging.warning('Checkpoint at step %d has no fingerprint (saved by an '
                    'older version); restored unverified.', step)
  return weights
