"""Timing and table helpers shared by the benchmarks (HLO: `hlo_stats`)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax

_MIB = 2.0**20


def summarize_ops(ops: Sequence[str]) -> str:
  """'copy x2, wrapped_scatter': each op name once, with its count."""
  counts = {}
  for op in ops:
    counts[op] = counts.get(op, 0) + 1
  return ', '.join(f'{op} x{n}' if n > 1 else op for op, n in counts.items()
                   ) or 'none'


def time_threaded(compiled, centers, args, *, warmup, iters, min_iters,
                   max_seconds):
  """Median-able step times, feeding each step's centers to the next.

  Returns (times in seconds, final centers, whether the first call deleted the
  donated input).
  """
  first_input = centers
  value, centers = compiled(centers, *args)
  jax.block_until_ready((value, centers))
  donated = first_input.is_deleted()
  del first_input
  for _ in range(max(warmup - 1, 0)):
    value, centers = compiled(centers, *args)
  jax.block_until_ready(centers)
  times, start = [], time.perf_counter()
  for i in range(iters):
    t0 = time.perf_counter()
    value, centers = compiled(centers, *args)
    jax.block_until_ready((value, centers))
    times.append(time.perf_counter() - t0)
    if i + 1 >= min_iters and time.perf_counter() - start > max_seconds:
      break
  return times, centers, donated


def ms(seconds: float) -> str:
  return f'{1e3 * seconds:.3f}' if seconds < 0.1 else f'{1e3 * seconds:.1f}'


def mib(num_bytes: float) -> str:
  return f'{num_bytes / _MIB:.2f}'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


