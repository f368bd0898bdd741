"""The training input pipeline on grain: batches made off the main thread.

`batch_iterator` turns a `batching.BatchReader` into a grain pipeline over
global step numbers: `MapDataset.range(first, last).map(reader)`. One element
is one batch (this process's share of a global batch), made by the reader
exactly as `epoch_batches` makes it, so the batches, their order and their
augmentations are bit-identical to the loop's whatever the number of worker
processes or threads: each is a pure function of `(seed, step)`.

* `num_workers > 0`: that many worker processes (`mp_prefetch`), each making
  every `num_workers`-th batch, decoding, aligning and augmenting outside
  the training process's GIL.
* `num_threads`: threads making batches ahead in each process (grain's
  `ReadOptions`); 0 makes them on demand, in the caller's thread.
* `prefetch`: batches made ahead, per thread pool and per worker.

Multi-host: each process makes only its share of every global batch (the
reader's `process_index`), as before.

`TrainingBatches` is what the trainer iterates: that pipeline, plus
transfers to the devices dispatched ahead of the step, as a checkpointable
grain iterator. Its state is the next step to hand out, so it is the same
for any number of workers or threads and a resume continues at the exact
batch after a change of either (grain's own multiprocess state records one
position per worker and cannot be restored into another worker count).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Optional

from absl import flags
from absl import logging
import grain

from centerloss_jax.data.batching import BatchReader


def batch_iterator(reader: BatchReader, *, first_step: int, num_steps: int,
                   num_workers: int = 0, num_threads: int = 1,
                   prefetch: int = 2) -> grain.DatasetIterator:
  """The batches of global steps `first_step` to `num_steps - 1`, in order.

  Args:
    reader: makes the batch of a global step.
    first_step: the first step (a resumed run's checkpointed step).
    num_steps: one past the last step.
    num_workers: worker processes; 0 makes batches in this process.
    num_threads: threads making batches ahead (per process); 0: none.
    prefetch: batches buffered ahead by the threads, and per worker.

  Returns:
    A grain iterator of batch dicts; `close()` it to stop the workers.

  Raises:
    ValueError: a negative count or an empty or reversed step range.
  """
  _check_counts(num_workers=num_workers, num_threads=num_threads,
                prefetch=prefetch)
  if not 0 <= first_step < num_steps:
    raise ValueError(f'Steps {first_step}..{num_steps - 1}: expected '
                     f'0 <= first_step < num_steps.')
  if not flags.FLAGS.is_parsed():
    # grain's threads read its absl flags and raise while they are unparsed
    # (a notebook, a test, a library caller): their defaults are wanted.
    flags.FLAGS.mark_as_parsed()
  dataset = grain.MapDataset.range(first_step, num_steps).map(reader)
  dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers:
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers,
                                     per_worker_buffer_size=max(prefetch, 1)),
        worker_init_fn=exit_with_parent)
  return iter(dataset)


def _check_counts(**counts: int) -> None:
  for name, value in counts.items():
    if value < 0:
      raise ValueError(f'{name} must be >= 0, got {value}.')


class TrainingBatches(grain.DatasetIterator):
  """The batches of steps `next_step` to `num_steps - 1`, placed ahead.

  A grain `DatasetIterator` (`get_state`/`set_state`), saved in checkpoints
  with grain's Orbax handler (`training.checkpointing.save`). Its state
  counts the batches handed to the caller, not those made or placed ahead:
  `{'next_step': n}`, plus the reader's seed, batch size and epoch length
  (to warn when a resume's differ) and the epoch and step in it (to read).

  Nothing starts until the first `next` (or `start_prefetch`); `set_state`
  stops what was made ahead and restarts from the restored step.
  """

  def __init__(self, reader: BatchReader, *, num_steps: int,
               place: Optional[Callable[[dict[str, Any]], Any]] = None,
               num_workers: int = 0, num_threads: int = 1, prefetch: int = 2,
               device_prefetch: int = 2):
    """Batches from step 0 (see `set_state` for a resume).

    Args:
      reader: makes the batch of a global step.
      num_steps: one past the last step.
      place: moves a host batch to the devices (`DataParallel.put_batch`);
        None hands out host batches.
      num_workers: worker processes (see `batch_iterator`).
      num_threads: threads making batches ahead in each process.
      prefetch: batches buffered ahead by the threads, and per worker.
      device_prefetch: placed batches kept in flight; 0 or 1 places each
        batch when it is asked for.

    Raises:
      ValueError: a negative count.
    """
    super().__init__()
    # Set first: grain's `__del__` closes even a half-constructed iterator.
    self._host = None
    self._placed = collections.deque()
    self._next_step = 0
    self._made = 0  # Batches taken from the host pipeline.
    _check_counts(num_workers=num_workers, num_threads=num_threads,
                  prefetch=prefetch, device_prefetch=device_prefetch)
    self._reader = reader
    self._num_steps = num_steps
    self._place = place or (lambda batch: batch)
    self._host_options = dict(num_workers=num_workers,
                              num_threads=num_threads, prefetch=prefetch)
    self._in_flight = max(device_prefetch, 1)

  @property
  def next_step(self) -> int:
    """The step whose batch the next `next` returns."""
    return self._next_step

  def start_prefetch(self) -> None:
    """Starts making batches (workers, threads) from `next_step`."""
    if self._host is None and self._made < self._num_steps:
      self._host = batch_iterator(
          self._reader, first_step=self._made, num_steps=self._num_steps,
          **self._host_options)

  def __next__(self):
    if self._next_step >= self._num_steps:
      raise StopIteration
    self.start_prefetch()
    # Dispatching the transfers before they are needed lets the next
    # batches travel to the devices while the current step runs.
    while len(self._placed) < self._in_flight and self._made < self._num_steps:
      self._placed.append(self._place(next(self._host)))
      self._made += 1
    if self._made == self._num_steps:
      self._stop_host()  # Every batch is made: the workers can go.
    self._next_step += 1
    return self._placed.popleft()

  def get_state(self) -> dict[str, int]:
    reader = self._reader
    return {'next_step': self._next_step,
            'epoch': self._next_step // reader.steps_per_epoch,
            'step_in_epoch': self._next_step % reader.steps_per_epoch,
            'steps_per_epoch': reader.steps_per_epoch,
            'global_batch_size': reader.global_batch_size,
            'seed': reader.seed}

  def set_state(self, state: dict[str, int]) -> None:
    """Continues at `state['next_step']` (from `get_state`, or a checkpoint).

    A step at or past `num_steps` (a run resumed after its end, or made
    shorter) hands out nothing.

    Raises:
      ValueError: a state without a non-negative integer `next_step`.
    """
    step = state.get('next_step')
    if not isinstance(step, int) or step < 0:
      raise ValueError(f'Input state {state}: expected a non-negative '
                       'integer next_step.')
    current = self.get_state()
    changed = {key: (state[key], current[key])
               for key in ('seed', 'global_batch_size', 'steps_per_epoch')
               if key in state and state[key] != current[key]}
    if changed:
      # Allowed config changes (`--allow_config_change`) resume by step:
      # the same step of another data order.
      logging.warning('The checkpointed input differs (%s); continuing at '
                      'step %d of this run\'s data order.', ', '.join(
                          f'{key} {old} -> {new}'
                          for key, (old, new) in changed.items()), step)
    self.close()
    self._next_step = self._made = step

  def close(self) -> None:
    """Stops the workers and drops what was made ahead; `next` restarts."""
    self._stop_host()
    self._placed.clear()
    self._made = self._next_step

  def _stop_host(self) -> None:
    if self._host is not None:
      self._host.close()
      self._host = None


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Ends a worker process once its parent is gone (`worker_init_fn`).

  A training process killed outright (SIGKILL, the OOM killer) cannot close
  its pipeline, and grain's workers would then live on, orphaned, holding
  their memory. Each worker watches its parent's pid instead and exits
  within a second of it changing (the orphan is re-parented).
  """
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='exit with parent', daemon=True).start()
