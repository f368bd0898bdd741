"""Comparing two computations that differ only in float rounding.

Two execution modes of one step (one device and eight, replicated and
class-sharded classes) add the same terms in another order. For a sum of n
float32 terms the two orders differ by at most about `2 (n - 1) u sum|x_i|`
(Higham, Accuracy and Stability of Numerical Algorithms, sec. 4.2), with
u = 2**-24 the unit roundoff; `sum|x_i|` is at most n times the largest term.
So tolerances here are stated as a number of reassociated terms, not as
bits of one CPU, and a failure names the leaf and the size of its difference.
"""

import jax
import numpy as np

UNIT_ROUNDOFF = 2.0**-24  # float32


def reassociation_rtol(terms: int, steps: int = 1) -> float:
  """The relative bound on two orders of `steps` sums of `terms` float32 terms."""
  return 2 * (terms - 1) * steps * UNIT_ROUNDOFF


def assert_trees_close(actual, expected, *, rtol: float, what: str) -> None:
  """Each leaf of `actual` within `rtol` of `expected`, relative to its scale.

  A leaf's tolerance is `rtol * max|expected leaf|`, elementwise: the error of
  a reassociated sum scales with the magnitude of its terms, not of its
  result, so an element near zero is held to its leaf's scale.

  Raises:
    AssertionError: naming every leaf out of tolerance, with its largest
      difference, the tolerance and where the difference is.
  """
  actual_leaves = jax.tree_util.tree_leaves_with_path(actual)
  expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
  assert [p for p, _ in actual_leaves] == [p for p, _ in expected_leaves], (
      f'{what}: the trees differ in structure')
  failures = []
  for (path, got), (_, want) in zip(actual_leaves, expected_leaves):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    name = jax.tree_util.keystr(path)
    if got.shape != want.shape:
      failures.append(f'{name}: shape {got.shape} != {want.shape}')
      continue
    if not np.all(np.isfinite(got)) or not np.all(np.isfinite(want)):
      failures.append(f'{name}: non-finite values')
      continue
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    difference = np.abs(got - want)
    worst = float(np.max(difference)) if difference.size else 0.0
    tolerance = rtol * scale
    if worst > tolerance:
      index = np.unravel_index(int(np.argmax(difference)), difference.shape)
      failures.append(
          f'{name}: max |difference| {worst:.3g} > {tolerance:.3g} '
          f'(rtol {rtol:.3g} x scale {scale:.3g}), at {index}: '
          f'{got[index]:.9g} vs {want[index]:.9g}')
  assert not failures, f'{what} differ:\n  ' + '\n  '.join(failures)
