"""Timing, HLO inspection and table helpers shared by the benchmarks."""

from __future__ import annotations

import re
import time
from typing import Any, Sequence

import jax

_MIB = 2.0**20


def entry_computation(hlo_text: str) -> str:
  return hlo_text[hlo_text.index('\nENTRY'):]


INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]\S*\s+([\w\-]+)\(')


def class_sized_ops(hlo_text: str, num_classes: int) -> list[str]:
  """Entry-computation instructions (not parameters) with a num_classes dim.

  Fusions are named by the fusion's name without its numeric suffix (XLA names
  them after what they contain, e.g. `wrapped_scatter`).
  """
  found = []
  for line in entry_computation(hlo_text).splitlines():
    match = INSTRUCTION.match(line)
    if not match:
      continue
    name, dims, opcode = match.groups()
    if opcode == 'parameter' or not dims:
      continue
    if num_classes in [int(d) for d in dims.split(',')]:
      found.append(re.sub(r'\.\d+$', '', name) if opcode == 'fusion'
                   else opcode)
  return found


def summarize_ops(ops: Sequence[str]) -> str:
  counts = {}
  for op in ops:
    counts[op] = counts.get(op, 0) + 1
  return ', '.join(f'{op} x{n}' if n > 1 else op for op, n in counts.items()
                   ) or 'none'


def aliases_first_argument(hlo_text: str) -> bool:
  """Whether the module aliases parameter 0 to an output buffer."""
  header = hlo_text.splitlines()[0]
  match = re.search(r'input_output_alias=\{(.*?)\}\s*,\s*entry', header)
  return bool(match and re.search(r':\s*\(0,', match.group(1)))


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


