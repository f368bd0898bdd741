"""Runs one per-replica step function three ways, chosen by a string.

* `'jit'`: `jax.jit` on a single device; the whole batch is one replica.
* `'pmap'`: `jax.pmap` over the local devices, state replicated per device,
  the batch split along a leading device axis (what TPU-pod users know).
* `'shard_map'`: `jax.jit(jax.shard_map(...))` over a 1-D mesh with a
  `'batch'` axis, state replicated, the batch sharded: pmap's current
  successor.

The step functions are written once, per replica, taking `axis_name` (None for
`'jit'`); they reduce across replicas with collectives on that axis.

Why `check_vma=False` for shard_map: with JAX's varying-axes checking on,
`jax.grad` inside shard_map already sums the gradient of replicated params
over the batch axis, while pmap does not; turning it off gives both mapped
modes the same semantics, so one step function with an explicit `psum` serves
both. The step keeps replicated outputs identical on every device itself
(Eq. 4 is computed from the all-gathered global batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MODES = ('jit', 'pmap', 'shard_map')
BATCH_AXIS = 'batch'

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A data-parallel execution mode and the devices it runs on.

  Build it with `DataParallel.create(mode)`; then `put_state`, `put_batch`,
  `compile_train_step`, `compile_eval_step` and `host_state` hide how each
  mode lays out its arrays.
  """
  mode: str
  devices: tuple[jax.Device, ...]
  mesh: Optional[jax.sharding.Mesh] = None

  @classmethod
  def create(cls, mode: str,
             devices: Optional[Sequence[jax.Device]] = None) -> 'DataParallel':
    """Validates `mode` and picks devices (default: all local devices)."""
    if mode not in MODES:
      raise ValueError(
          f'Unknown parallel mode {mode!r}; expected one of {MODES}.')
    devices = tuple(devices if devices is not None else jax.local_devices())
    if mode == 'jit':
      return cls(mode, devices[:1])
    # pmap uses the mesh only to lay out its stacked per-device arrays.
    mesh = jax.make_mesh((len(devices),), (BATCH_AXIS,), devices=devices)
    return cls(mode, devices, mesh)

  @property
  def num_replicas(self) -> int:
    return len(self.devices)

  @property
  def axis_name(self) -> Optional[str]:
    """The axis the step functions reduce over; None for single-device jit."""
    return None if self.mode == 'jit' else BATCH_AXIS

  def check_batch_size(self, batch_size: int) -> None:
    if batch_size % self.num_replicas:
      raise ValueError(
          f'Global batch size {batch_size} is not divisible by the '
          f'{self.num_replicas} devices of parallel mode {self.mode!r}.')

  def put_state(self, state: PyTree) -> PyTree:
    """Copies a host/single-device state into this mode's layout."""
    if self.mode == 'jit':
      return jax.device_put(state, self.devices[0])
    if self.mode == 'pmap':
      n = self.num_replicas
      return self._put_stacked(jax.tree.map(
          lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), state))
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def host_state(self, state: PyTree) -> PyTree:
    """The state as one copy (pmap keeps one per device)."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x[0], state)
    return state

  def put_batch(self, batch: dict[str, np.ndarray]) -> PyTree:
    """Places a global batch of host arrays, split across the replicas."""
    batch_size = len(next(iter(batch.values())))
    self.check_batch_size(batch_size)
    if self.mode == 'jit':
      return jax.device_put(batch, self.devices[0])
    if self.mode == 'pmap':
      n = self.num_replicas
      return self._put_stacked(
          jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch))
    return jax.device_put(batch, NamedSharding(self.mesh, P(BATCH_AXIS)))

  def _put_stacked(self, tree: PyTree) -> PyTree:
    """Puts arrays with a leading device axis one slice per device (pmap)."""
    return jax.device_put(tree, NamedSharding(self.mesh, P(BATCH_AXIS)))

  def compile_train_step(self, step_fn: Callable[..., tuple[PyTree, PyTree]]
                         ) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """Compiles `step_fn(state, batch, axis_name=...) -> (state, metrics)`.

    The state is donated: its buffers (params, optimizer state, centers) are
    reused for the new state, so Eq. 4's scatter updates the centers in place.
    Metrics come back as one copy.
    """
    fn = functools.partial(step_fn, axis_name=self.axis_name)
    if self.mode == 'jit':
      return jax.jit(fn, donate_argnums=0)
    if self.mode == 'pmap':
      pmapped = jax.pmap(fn, axis_name=BATCH_AXIS, donate_argnums=0,
                         devices=self.devices)
      def run(state, batch):
        state, metrics = pmapped(state, batch)
        return state, jax.tree.map(lambda x: x[0], metrics)
      return run
    return jax.jit(jax.shard_map(fn, mesh=self.mesh,
                                 in_specs=(P(), P(BATCH_AXIS)),
                                 out_specs=(P(), P()), check_vma=False),
                   donate_argnums=0)

  def compile_eval_step(self, step_fn: Callable[..., tuple[PyTree, PyTree]]
                        ) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """Compiles `step_fn(state, batch, axis_name=...) -> (metrics, outputs)`.

    `metrics` are reduced across replicas (one copy comes back); `outputs`
    are per-example arrays, returned in global batch order.
    """
    fn = functools.partial(step_fn, axis_name=self.axis_name)
    if self.mode == 'jit':
      return jax.jit(fn)
    if self.mode == 'pmap':
      pmapped = jax.pmap(fn, axis_name=BATCH_AXIS, devices=self.devices)
      def run(state, batch):
        metrics, outputs = pmapped(state, batch)
        return (jax.tree.map(lambda x: x[0], metrics),
                jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), outputs))
      return run
    return jax.jit(jax.shard_map(fn, mesh=self.mesh,
                                 in_specs=(P(), P(BATCH_AXIS)),
                                 out_specs=(P(), P(BATCH_AXIS)),
                                 check_vma=False))


def psum(tree: PyTree, axis_name: Optional[str]) -> PyTree:
  """Sums over replicas; the identity when there is one (axis_name None)."""
  if axis_name is None:
    return tree
  return jax.lax.psum(tree, axis_name)
