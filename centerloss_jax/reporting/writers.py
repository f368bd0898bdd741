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
from typing import Any, Mapping

from absl import logging
import numpy as np


class JsonlWriter:
  """Appends one JSON object per `write_scalars` call to `metrics.jsonl`.

  Each line is written whole and flushed, for scripts that tail or parse the
  file while the run goes on.
  """

  def __init__(self, path: str):
    self._file = open(path, 'a', encoding='utf-8')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    for key, value in scalars.items():
      value = float(value)
      # JSON has no NaN/inf; keep them visible as strings.
      record[key] = value if math.isfinite(value) else str(value)
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


class TensorBoardWriter:
  """TensorBoard event files in the workdir (viewable with `tensorboard`)."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    for key, image in images.items():
      self._writer.add_image(key, np.asarray(image), global_step=int(step),
                             dataformats='HWC')

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._writer.add_text('hparams', json.dumps(hparams, indent=2,
                                                sort_keys=True, default=str))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


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


def create_writer(workdir: str, *, is_main_process: bool) -> MultiWriter:
  """Console, TensorBoard and `metrics.jsonl` on process 0; console elsewhere.

  Args:
    workdir: the run's directory; created if missing.
    is_main_process: only process 0 writes files, so processes never race.
  """
  if not is_main_process:
    return MultiWriter([])
  os.makedirs(workdir, exist_ok=True)
  return MultiWriter([
      LoggingWriter(),
      TensorBoardWriter(workdir),
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
  ])


def _drop_orbax_info(record) -> bool:
  return (record.levelno >= std_logging.WARNING
          or 'orbax' not in record.pathname)


def quiet_orbax_logging() -> None:
  """Drops Orbax's INFO lines (dozens per checkpoint); keeps its warnings."""
  logging.get_absl_logger().addFilter(_drop_orbax_info)
