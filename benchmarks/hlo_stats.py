"""What a compiled XLA program computes and communicates, from its HLO text.

The one HLO parser of the benchmarks and the tests, for checking the cost
claims of this codebase on any backend: that the collectives of a
class-sharded step do not grow with the number of classes, that the donated
centers are updated in place (no copy, aliased to the output).

  text = jax.jit(step).lower(*args).compile().as_text()
  print(collective_bytes(collectives(text)))
"""

from __future__ import annotations

import re

import numpy as np

# `%name = <shape> opcode(operands), ...`; the shape may be a tuple.
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+'
    r'(?P<opcode>[a-z][\w\-]*)\((?P<operands>[^)]*)\)')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s*\(.*\{\s*$')
_ARRAY = re.compile(r'\b(pred|bf16|[fsu]\d+)\[([\d,]*)\]')
BYTES_PER_ELEMENT = {
    'pred': 1, 'bf16': 2, 'f16': 2, 'f32': 4, 'f64': 8, 's8': 1, 's16': 2,
    's32': 4, 's64': 8, 'u8': 1, 'u16': 2, 'u32': 4, 'u64': 8}
COLLECTIVE_OPCODES = ('all-gather', 'all-reduce', 'collective-permute',
                      'all-to-all', 'reduce-scatter', 'collective-broadcast',
                      'ragged-all-to-all')


def arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """[(dtype, dims)] of an HLO shape (an array or a tuple of arrays)."""
  return [(dtype, tuple(int(d) for d in dims.split(',') if d))
          for dtype, dims in _ARRAY.findall(shape_text)]


def instructions(hlo_text: str) -> list[tuple[str, str, str, str, list[str],
                                             str]]:
  """[(computation, name, shape, opcode, operand names, line)] of a module."""
  out, computation = [], None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      computation = match['name']
      continue
    match = _INSTRUCTION.match(line)
    if match:
      operands = re.findall(r'%([\w.\-]+)', match['operands'])
      out.append((computation, match['name'], match['shape'],
                  match['opcode'], operands, line.strip()))
  return out


def collectives(hlo_text: str) -> list[tuple[str, list, list]]:
  """[(opcode, result arrays, operand arrays)] of every collective op.

  Asynchronous pairs (`all-gather-start`/`-done`) count once, by the start.
  """
  found_instructions = instructions(hlo_text)
  shapes = {name: shape for _, name, shape, *_ in found_instructions}
  found = []
  for _, _, shape, opcode, operands, _ in found_instructions:
    base = opcode[:-len('-start')] if opcode.endswith('-start') else opcode
    if base in COLLECTIVE_OPCODES:
      found.append((base, arrays(shape),
                    [a for o in operands for a in arrays(shapes.get(o, ''))]))
  return found


def collective_bytes(found: list[tuple[str, list, list]]) -> int:
  """Bytes of the results of `collectives` (what arrives on each device)."""
  return sum(BYTES_PER_ELEMENT[dtype] * int(np.prod(dims, dtype=np.int64))
             for _, results, _ in found for dtype, dims in results)


_CALLS = re.compile(r'calls=%([\w.\-]+)')
# Ops that produce no new buffer of their shape: parameters, references into
# tuples, and scatters, which XLA runs in the (donated) operand's buffer.
_IN_PLACE_OPCODES = ('parameter', 'scatter', 'tuple', 'get-tuple-element')


def ops_making(hlo_text: str,
               predicate) -> list[tuple[str, list, bool]]:
  """Every instruction with a result array that `predicate` accepts.

  Args:
    hlo_text: compiled HLO text (`compiled.as_text()`).
    predicate: called with each array's dims tuple, e.g.
      `lambda dims: num_classes in dims`.

  Returns:
    One (line, result arrays, in_place) per matching instruction, the arrays
    as from `arrays`; `in_place` is True for
    parameters, tuples, scatters and fusions whose root is a scatter, the ops
    that write no new array of that size.
  """
  found = instructions(hlo_text)
  roots = {computation: opcode for computation, _, _, opcode, _, line in found
           if line.startswith('ROOT')}
  out = []
  for _, _, shape, opcode, _, line in found:
    results = arrays(shape)
    if not any(predicate(dims) for _, dims in results):
      continue
    called = _CALLS.search(line)
    in_place = opcode in _IN_PLACE_OPCODES or (
        opcode == 'fusion' and called is not None
        and roots.get(called[1]) == 'scatter')
    out.append((line, results, in_place))
  return out


def entry_instructions(hlo_text: str) -> list[tuple[str, str, str, str,
                                                   list[str], str]]:
  """`instructions` of the module's ENTRY computation only."""
  entry = re.search(r'^ENTRY\s+%([\w.\-]+)', hlo_text, re.MULTILINE)
  if entry is None:
    raise ValueError('No ENTRY computation in the HLO text.')
  return [found for found in instructions(hlo_text)
          if found[0] == entry[1]]


def class_sized_ops(hlo_text: str, num_classes: int) -> list[str]:
  """Entry-computation instructions (not parameters) with a num_classes dim.

  Only instructions whose result is one array count (not tuples). Fusions
  are named by the fusion's name without its numeric suffix (XLA names them
  after what they contain, e.g. `wrapped_scatter`), other ops by opcode.
  """
  found = []
  for _, name, shape, opcode, _, _ in entry_instructions(hlo_text):
    results = arrays(shape)
    if opcode == 'parameter' or len(results) != 1 or shape.startswith('('):
      continue
    if num_classes in results[0][1]:
      found.append(re.sub(r'\.\d+$', '', name) if opcode == 'fusion'
                   else opcode)
  return found


def copies_of(hlo_text: str, dtype: str, dims: tuple[int, ...]) -> int:
  """`copy` instructions of the entry computation making a (dtype, dims)."""
  return sum(1 for _, _, shape, opcode, _, _ in entry_instructions(hlo_text)
             if opcode == 'copy' and arrays(shape) == [(dtype, tuple(dims))])


def aliases_first_argument(hlo_text: str) -> bool:
  """Whether the module aliases parameter 0 to an output buffer."""
  header = hlo_text.splitlines()[0]
  match = re.search(r'input_output_alias=\{(.*?)\}\s*,\s*entry', header)
  return bool(match and re.search(r':\s*\(0,', match.group(1)))
