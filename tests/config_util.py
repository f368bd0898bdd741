"""Experiment configs for tests: the tiny `runlocal` ones, with overrides."""

from configs import common
from configs import default


def runlocal_config(data_dir: str, **overrides):
  """`configs/default.py:runlocal` reading IDX files from `data_dir`.

  Args:
    data_dir: the IDX files' directory (e.g. conftest's `tiny_idx_dir`).
    **overrides: dotted field paths and their values, e.g.
      `**{'loss.pair': 'contrastive'}` or `parallel='pmap'`.
  """
  return common.with_overrides(default.get_config('runlocal'),
                               {'input.data_dir': data_dir, **overrides})
