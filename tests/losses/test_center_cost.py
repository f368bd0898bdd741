"""The cost of the compiled center-loss programs (losses.center).

No num_classes-sized temporaries in `center_loss` or `update_centers`, the
centers only read by the loss, and updated in place when donated, read from
the compiled HLO (`benchmarks/hlo_stats.py`).
"""

import functools
import re

import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import pytest

from benchmarks import hlo_stats
from centerloss_jax import losses as loss_lib


# ---------------------------------------------------------------------------
# Cost: no num_classes-sized temporaries; in-place update when donated.
# ---------------------------------------------------------------------------

_MANY_CLASSES, _COST_DIM, _COST_BATCH = 100_000, 8, 16


def _num_classes_sized_ops(hlo_text, num_classes=_MANY_CLASSES,
                           dim=_COST_DIM):
  """HLO instructions that make a num_classes-sized array other than in place.

  Allowed: the (num_classes, dim) centers as parameters, scatters into them
  and fusions whose root is such a scatter (XLA runs those in place on a
  donated buffer), and tuple references. Anything else with a dimension
  num_classes (a copy, a one-hot, a `[batch, C]` distance matrix, a `[C]`
  count vector) is returned as a violation.
  """
  violations = []
  for line, results, in_place in hlo_stats.ops_making(
      hlo_text, lambda dims: num_classes in dims):
    other_shape = any(num_classes in dims and dims != (num_classes, dim)
                      for _, dims in results)
    if other_shape or not in_place:
      violations.append(line[:160])
  return violations


def _abstract_inputs():
  return dict(
      centers=jax.ShapeDtypeStruct((_MANY_CLASSES, _COST_DIM), jnp.float32),
      features=jax.ShapeDtypeStruct((_COST_BATCH, _COST_DIM), jnp.float32),
      labels=jax.ShapeDtypeStruct((_COST_BATCH,), jnp.int32),
      weights=jax.ShapeDtypeStruct((_COST_BATCH,), jnp.float32))


def _update_fn_abstract(centers, features, labels, weights):
  return loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                 weights=weights)


def _naive_update_with_one_hot(centers, features, labels, weights):
  """Eq. 4 the costly way, to show the HLO check catches it."""
  one_hot = jax.nn.one_hot(labels, centers.shape[0]) * weights[:, None]
  counts = one_hot.sum(0)
  sums = one_hot.T @ features
  return centers + 0.5 * (sums - counts[:, None] * centers) / (
      1.0 + counts[:, None])


@functools.lru_cache(maxsize=None)
def _compiled_text(fn, donate):
  inputs = _abstract_inputs()
  jitted = jax.jit(fn, donate_argnums=0 if donate else ())
  return jitted.lower(inputs['centers'], inputs['features'], inputs['labels'],
                      inputs['weights']).compile().as_text()


def test_hlo_check_flags_a_one_hot_implementation():
  violations = _num_classes_sized_ops(
      _compiled_text(_naive_update_with_one_hot, donate=True))
  assert any(f'[{_COST_BATCH},{_MANY_CLASSES}]' in v for v in violations), (
      'The HLO check missed the batch x num_classes one-hot; it cannot protect '
      f'update_centers. Violations found: {violations}')


def test_update_centers_compiles_without_num_classes_sized_temporaries():
  violations = _num_classes_sized_ops(
      _compiled_text(_update_fn_abstract, donate=True))
  assert not violations, (
      'update_centers (donated centers) materialises arrays of size '
      f'num_classes={_MANY_CLASSES} besides its in-place scatter: {violations}')


def test_update_centers_jaxpr_has_no_num_classes_sized_intermediates():
  inputs = _abstract_inputs()
  jaxpr = jax.make_jaxpr(_update_fn_abstract)(**inputs).jaxpr
  offenders = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        if _MANY_CLASSES in getattr(var.aval, 'shape', ()) and (
            eqn.primitive.name != 'scatter'):
          offenders.append(f'{eqn.primitive.name}: {var.aval}')
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr)
  assert not offenders, (
      f'update_centers builds num_classes-sized intermediates: {offenders}')


def _loss_then_update(centers, features, labels, weights, axis_name=None):
  """Algorithm 1 in one program: the loss reads c^t, Eq. 4 writes c^t+1."""
  return (loss_lib.center_loss(features, labels, centers, weights),
          loss_lib.update_centers(centers, features, labels, alpha=0.5,
                                  weights=weights, axis_name=axis_name))


@pytest.mark.parametrize('mode', ['jit', 'shard_map'])
def test_loss_and_update_in_one_donated_step_do_not_copy_centers(mode):
  # A train step (and the Flax modules) read the centers for the loss and
  # scatter into them for Eq. 4. If the scatter does not depend on that read,
  # XLA must finish the read first and copies all (C, D) centers to do so.
  inputs = _abstract_inputs()
  args = [inputs[k] for k in ('centers', 'features', 'labels', 'weights')]
  if mode == 'jit':
    step = jax.jit(_loss_then_update, donate_argnums=0)
  else:
    num_devices = len(jax.devices())
    mesh = jax.make_mesh((num_devices,), ('batch',))
    shardings = [NamedSharding(mesh, spec)
                 for spec in (P(), P('batch'), P('batch'), P('batch'))]
    args = [jax.ShapeDtypeStruct((a.shape[0] * (num_devices if i else 1),)
                                 + a.shape[1:], a.dtype, sharding=s)
            for i, (a, s) in enumerate(zip(args, shardings))]
    step = jax.jit(jax.shard_map(
        functools.partial(_loss_then_update, axis_name='batch'), mesh=mesh,
        in_specs=(P(),) + (P('batch'),) * 3, out_specs=P(), check_vma=False),
                   donate_argnums=0)
  text = step.lower(*args).compile().as_text()
  violations = _num_classes_sized_ops(text)
  assert not violations, (
      f'Loss + update under {mode} with donated centers materialises '
      f'num_classes-sized arrays (a copy of the centers?): {violations}')


@functools.lru_cache(maxsize=None)
def _center_loss_text():
  inputs = _abstract_inputs()
  return jax.jit(loss_lib.center_loss).lower(
      inputs['features'], inputs['labels'], inputs['centers'],
      inputs['weights']).compile().as_text()


def test_center_loss_compiles_without_num_classes_sized_temporaries():
  violations = _num_classes_sized_ops(_center_loss_text())
  assert not violations, (
      'center_loss materialises num_classes-sized arrays (a distance matrix?): '
      f'{violations}')


def test_center_loss_only_reads_the_centers():
  assert 'scatter' not in _center_loss_text(), (
      'center_loss should only read the centers.')


# JAX 0.10 prints `input_output_alias={ {}: (0, {}, may-alias) }` in the
# HloModule line: output {} (the single result) reuses parameter 0.
_ALIAS = re.compile(r'input_output_alias=\{\s*\{\}:\s*\(0,\s*\{\}')


def test_donated_centers_alias_the_output_buffer():
  donated = _compiled_text(_update_fn_abstract, donate=True)
  assert _ALIAS.search(donated), (
      'With donate_argnums=0 the centers input is not aliased to the output: '
      'the update is not in place. HLO header: '
      f'{donated.splitlines()[0][:300]}')


def test_alias_check_finds_no_alias_without_donation():
  not_donated = _compiled_text(_update_fn_abstract, donate=False)
  assert not _ALIAS.search(not_donated), (
      'Alias found without donation: the alias check cannot fail.')


def test_hlo_check_notices_the_copy_of_undonated_centers():
  # Without donation XLA must copy the centers; the cost check sees that.
  not_donated = _compiled_text(_update_fn_abstract, donate=False)
  assert _num_classes_sized_ops(not_donated), (
      'The HLO check does not notice the copy of undonated centers.')
