"""Metric writers: TensorBoard event files, `metrics.jsonl` and console lines.

The methods follow clu's `MetricWriter` interface (`write_scalars`,
`write_images`, `write_hparams`, `flush`, `close`). clu's own writers are not
used because `clu.metric_writers` (0.0.12) imports TensorFlow at import time,
which this codebase does not otherwise need; TensorBoard files are written
with tensorboardX instead. Only process 0 writes (see `create_writer`).
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
import time
from typing import Any, Mapping

from absl import logging
import numpy as np

from centerloss_jax.reporting import files


class JsonlWriter:
  """Appends one JSON object per `write_scalars` call to `metrics.jsonl`.

  Each line is written whole and flushed, for scripts that tail or parse the
  file while the run goes on. The file keeps one record per step and split
  (the key prefix before '/', e.g. 'train', 'test', 'lfw'), across resumes:
  opened with `resume_step`, it drops the records after that step (the part
  of an earlier run that its checkpoint did not keep, about to be redone),
  and a record for a (step, split) already written is not written again (a
  rerun of a finished run re-evaluates its last step).
  """

  def __init__(self, path: str, *, resume_step: int = 0):
    kept = []
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            continue  # A line cut by a crash mid-write.
          if record.get('step', 0) <= resume_step:
            kept.append(record)
      # Rewritten whole, so an interruption leaves the old file, not half.
      with files.atomic_write(path) as f:
        for record in kept:
          f.write(json.dumps(record, sort_keys=True) + '\n')
    self._written = {(r['step'], _split(key)) for r in kept for key in r
                     if key != 'step'}
    self._file = open(path, 'a', encoding='utf-8')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    for key, value in scalars.items():
      if (record['step'], _split(key)) in self._written:
        continue
      value = float(value)
      # JSON has no NaN/inf; keep them visible as strings.
      record[key] = value if math.isfinite(value) else str(value)
    if len(record) == 1:
      return
    self._written.update((record['step'], _split(key)) for key in record
                         if key != 'step')
    self._file.write(json.dumps(record, sort_keys=True) + '\n')
    self._file.flush()

  def write_images(self, step, images) -> None:
    del step, images

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _split(key: str) -> str:
  """'test' for 'test/accuracy': which evaluation a metric belongs to."""
  return key.split('/', 1)[0]


class TensorBoardWriter:
  """TensorBoard event files in the workdir (viewable with `tensorboard`).

  Written synchronously, in the caller's thread, and flushed after every
  call. tensorboardX's `SummaryWriter` writes from a background thread that
  dies on a failed write (a full disk), after which its bounded queue blocks
  the training loop forever; here the `OSError` reaches the caller at once.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    # pylint: enable=g-import-not-at-top
    self._summary, self._event_pb2 = summary, event_pb2
    self._events = event_file_writer.EventsWriter(
        os.path.join(logdir, 'events'))

  def _write(self, step: int, summaries) -> None:
    for value in summaries:
      self._events.write_event(self._event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=value))
    self._events.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write(step, [self._summary.scalar(key, float(value))
                       for key, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    self._write(step, [self._summary.image(key, np.asarray(image),
                                           dataformats='HWC')
                       for key, image in images.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._write(0, [self._summary.text(
        'hparams', json.dumps(hparams, indent=2, sort_keys=True,
                              default=str))])

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class LoggingWriter:
  """Console lines through absl logging."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = ', '.join(f'{k}={float(v):.5g}' for k, v in sorted(scalars.items()))
    logging.info('[%d] %s', step, values)

  def write_images(self, step, images) -> None:
    logging.info('[%d] images: %s', step, ', '.join(images))

  def write_hparams(self, hparams) -> None:
    logging.info('hparams: %s', hparams)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter:
  """Forwards every call to each of its writers."""

  def __init__(self, writers):
    self._writers = list(writers)

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for writer in self._writers:
        getattr(writer, name)(*args, **kwargs)
    return call


def create_writer(workdir: str, *, is_main_process: bool,
                  resume_step: int = 0) -> MultiWriter:
  """Console, TensorBoard and `metrics.jsonl` on process 0; console elsewhere.

  Args:
    workdir: the run's directory; created if missing.
    is_main_process: only process 0 writes files, so processes never race.
    resume_step: the step the run resumes from; `metrics.jsonl` drops its
      records after it.
  """
  if not is_main_process:
    return MultiWriter([])
  os.makedirs(workdir, exist_ok=True)
  return MultiWriter([
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'),
                  resume_step=resume_step),
      TensorBoardWriter(workdir),
      LoggingWriter(),
  ])


def _drop_orbax_info(record) -> bool:
  return (record.levelno >= std_logging.WARNING
          or 'orbax' not in record.pathname)


def quiet_orbax_logging() -> None:
  """Drops Orbax's INFO lines (dozens per checkpoint); keeps its warnings."""
  logging.get_absl_logger().addFilter(_drop_orbax_info)
