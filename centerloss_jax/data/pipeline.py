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
reader's `process_index`), as before. Moving batches to the devices ahead
of the step is the trainer's (`training.parallel.prefetch_to_devices`).
"""

from __future__ import annotations

import os
import threading
import time

from absl import flags
import grain

from centerloss_jax.data.batching import BatchReader


def batch_iterator(reader: BatchReader, *, first_step: int, num_steps: int,
                   num_workers: int = 0, num_threads: int = 1,
                   prefetch: int = 2) -> grain.DatasetIterator:
  """The batches of global steps `first_step .. num_steps - 1`, in order.

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
  for name, value in (('num_workers', num_workers),
                      ('num_threads', num_threads), ('prefetch', prefetch)):
    if value < 0:
      raise ValueError(f'{name} must be >= 0, got {value}.')
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
