"""Runs one per-replica step function three ways, chosen by a string.

* `'jit'`: `jax.jit` on a single device; the whole batch is one replica.
* `'pmap'`: `jax.pmap` over the local devices, state replicated per device,
  the batch split along a leading device axis (what TPU-pod users know).
* `'shard_map'`: `jax.jit(jax.shard_map(...))` over a 1-D mesh with a
  `'batch'` axis, state replicated, the batch sharded: pmap's current
  successor.

The step functions are written once, per replica, taking `axis_name` (None for
`'jit'`); they reduce across replicas with collectives on that axis.

Class sharding (`class_shards > 1`, shard_map only): the mesh is 2-D,
`('batch', 'classes')`, the batch split over `'batch'` and replicated over
`'classes'`; the centers (`P('classes', None)`) and the classifier kernel
with its optimizer-state twins (`P(None, 'classes')`) are split along the
classes over `'classes'`, everything else replicated. The step functions
then reduce over both axes themselves (see
`centerloss_jax.losses.class_sharded`); `axis_name` stays `'batch'`, the
class axis is `CLASS_AXIS`.

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
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MODES = ('jit', 'pmap', 'shard_map')
BATCH_AXIS = 'batch'
CLASS_AXIS = 'classes'
# The tree-path keys of the class-sharded classifier kernel: in the params
# and in every optimizer-state twin of them (momentum, Adam's moments).
CLASSIFIER_PATH = ('classifier', 'kernel')

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
  class_shards: int = 1

  @classmethod
  def create(cls, mode: str,
             devices: Optional[Sequence[jax.Device]] = None, *,
             class_shards: int = 1) -> 'DataParallel':
    """Validates `mode` and picks its devices.

    Args:
      mode: 'jit', 'pmap' or 'shard_map'.
      devices: shard_map's mesh; by default every device of every process
        (`jax.devices()`). pmap always maps over all devices, each process
        feeding its local ones (as on TPU pods), so for pmap this must be
        None. jit uses the first local device.
      class_shards: shards of the classes (centers and classifier kernel)
        over a `'classes'` mesh axis; > 1 needs mode 'shard_map' and a
        device count divisible by it. 1: plain data parallelism.

    Returns:
      The DataParallel for `mode`.

    Raises:
      ValueError: an unknown `mode`, `devices` for pmap, or `class_shards`
        that do not fit the mode or the device count.

    Examples:
      >>> import jax
      >>> from centerloss_jax.training import DataParallel
      >>> dp = DataParallel.create('jit')
      >>> print(dp.num_replicas, dp.axis_name)
      1 None
      >>> dp = DataParallel.create('shard_map')  # Every device: one replica.
      >>> print(dp.num_replicas == jax.device_count(), dp.axis_name)
      True batch
    """
    if mode not in MODES:
      raise ValueError(
          f'Unknown parallel mode {mode!r}; expected one of {MODES}.')
    if class_shards < 1:
      raise ValueError(f'class_shards must be >= 1, got {class_shards}.')
    if class_shards > 1:
      if mode != 'shard_map':
        raise ValueError(
            f'class_shards={class_shards} needs parallel mode '
            f"'shard_map' (a 2-D ('batch', 'classes') mesh), got parallel="
            f'{mode!r}.')
      devices = tuple(devices or jax.devices())
      if len(devices) % class_shards:
        raise ValueError(
            f'class_shards={class_shards} does not divide the '
            f'{len(devices)} devices.')
      mesh = jax.make_mesh((len(devices) // class_shards, class_shards),
                           (BATCH_AXIS, CLASS_AXIS), devices=devices)
      return cls(mode, devices, mesh, class_shards)
    if mode == 'jit':
      if jax.process_count() > 1:
        raise ValueError(
            "Parallel mode 'jit' runs on one device; with "
            f'{jax.process_count()} processes use shard_map or pmap.')
      return cls(mode, tuple(devices or jax.local_devices())[:1])
    if mode == 'pmap' and devices is not None:
      raise ValueError('pmap maps over all devices; pass devices=None.')
    if devices is None:
      devices = jax.devices() if mode == 'shard_map' else jax.local_devices()
    devices = tuple(devices)
    mesh = jax.make_mesh((len(devices),), (BATCH_AXIS,), devices=devices)
    return cls(mode, devices, mesh)

  @property
  def num_replicas(self) -> int:
    """Replicas over all processes: the divisor of the global batch."""
    if self.mode == 'pmap':
      return len(self.devices) * jax.process_count()
    # Class shards of one batch replica see the same examples.
    return len(self.devices) // self.class_shards

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
    """Copies a state into this mode's layout (a no-op for leaves already
    there, e.g. from `create_state` or a restore into `abstract_state`)."""
    if self.mode == 'jit':
      return jax.device_put(state, self.devices[0])
    if self.mode == 'pmap':
      # Stacked, one slice per local device; pmap itself places them (a
      # committed placement on the local devices confuses multi-process pmap).
      n = len(self.devices)
      return jax.tree.map(
          lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), state)
    shardings = self.state_shardings(state)
    placed = lambda x, sharding: (isinstance(x, jax.Array)
                                  and x.sharding == sharding)
    if all(jax.tree.leaves(jax.tree.map(placed, state, shardings))):
      return state
    return _replicate_from_host(state, shardings)

  def state_shardings(self, state: PyTree) -> PyTree:
    """Where each leaf of a (concrete or abstract) state lives in training:
    `state_specs` on the mesh (shard_map), or the one device (jit); pmap
    stacks a copy per device instead (`put_state`)."""
    if self.mode != 'shard_map':
      device = jax.sharding.SingleDeviceSharding(self.devices[0])
      return jax.tree.map(lambda _: device, state)
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec),
                        self.state_specs(state),
                        is_leaf=lambda x: isinstance(x, P))

  def create_state(self, init_fn: Callable[[], PyTree]) -> PyTree:
    """`init_fn()`, computed where `state_shardings` puts each leaf.

    Compiled with those output shardings, so a split leaf (the class-sharded
    centers, classifier kernel and its optimizer twins) is computed shard by
    shard on its devices: no process ever holds more than its share of a
    num_classes-sized array. JAX's partitionable threefry makes the random
    init the same whatever the sharding. `put_state` finishes the layout
    (pmap's stacking; a no-op otherwise).

    With split leaves, each is computed by a call of its own, finished
    before the next starts, in tree order (the params, where the random
    kernel is, come before their optimizer twins and the centers), then the
    other leaves in one call. In a single program the kernel's random-number
    scratch (threefry's counters and bits, 3x the kernel) would be live
    while every split output is already allocated: twice the state at the
    peak instead of 4/3. Each call computes just its leaf (XLA drops the
    rest of `init_fn`), with the same values.
    """
    if self.mode == 'pmap':
      # Uncommitted, on the default device: `put_state` stacks it and pmap
      # places the copies itself.
      return jax.jit(init_fn)()
    abstract = jax.eval_shape(init_fn)
    shardings = self.state_shardings(abstract)
    if self.class_shards == 1:
      return jax.jit(init_fn, out_shardings=shardings)()
    treedef = jax.tree.structure(abstract)
    shardings = treedef.flatten_up_to(shardings)
    split = [i for i, sharding in enumerate(shardings)
             if not sharding.is_fully_replicated]
    leaves = [None] * len(shardings)
    for i in split:
      leaves[i] = jax.jit(lambda i=i: jax.tree.leaves(init_fn())[i],
                          out_shardings=shardings[i])().block_until_ready()
    rest = [i for i in range(len(shardings)) if i not in split]
    values = jax.jit(
        lambda: [jax.tree.leaves(init_fn())[i] for i in rest],
        out_shardings=[shardings[i] for i in rest])()
    for i, value in zip(rest, values):
      leaves[i] = value
    return jax.tree.unflatten(treedef, leaves)

  def abstract_state(self, init_fn: Callable[[], PyTree]) -> PyTree:
    """`create_state`'s shapes, dtypes and shardings, computing nothing: a
    restore target that Orbax reads straight into the training layout."""
    abstract = jax.eval_shape(init_fn)
    if self.mode == 'pmap':
      return abstract  # Restored uncommitted, like `create_state`'s.
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                 sharding=sharding),
        abstract, self.state_shardings(abstract))

  def state_specs(self, state: PyTree) -> PyTree:
    """The PartitionSpec of every leaf of `state` on this mode's mesh.

    All P() (replicated) unless the classes are sharded: then the centers are
    split by rows, `P('classes', None)`, and every leaf whose tree path ends
    in `CLASSIFIER_PATH` (the kernel in the params and its optimizer-state
    twins, which have the kernel's shape) by columns, `P(None, 'classes')`.
    """
    def spec(path, _):
      if self.class_shards == 1:
        return P()
      keys = tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path)
      if keys == ('centers',):
        return P(CLASS_AXIS, None)
      if keys[-len(CLASSIFIER_PATH):] == CLASSIFIER_PATH:
        return P(None, CLASS_AXIS)
      return P()
    return jax.tree_util.tree_map_with_path(spec, state)

  def host_state(self, state: PyTree) -> PyTree:
    """The state as one copy, e.g. to checkpoint (pmap keeps one per device).

    With several processes the copy is a global array replicated over all
    devices (or, with class sharding, split over them as in training), which
    Orbax saves once for all processes; restore it into the unplaced state
    from `state.create_train_state` and `put_state` it again.
    """
    if self.mode != 'pmap':
      return state
    # The first local replica. (Not `x[0]`: with several processes pmap's
    # outputs are global arrays whose row 0 this process may not hold.)
    state = jax.tree.map(lambda x: x.addressable_data(0)[0], state)
    if jax.process_count() == 1:
      return state
    return _replicate_from_host(state, NamedSharding(
        jax.make_mesh((jax.device_count(),), (BATCH_AXIS,)), P()))

  def fetch_rows(self, array: jax.Array, rows: np.ndarray) -> np.ndarray:
    """A numpy copy of `array[rows]` (e.g. some classes' centers), in any
    process; a class-sharded array sends only those rows, never gathering
    whole on a host."""
    if self.class_shards > 1:
      return fetch_replicated(_take_rows(
          array, rows, sharding=NamedSharding(self.mesh, P())))
    return fetch_global(array)[rows]

  def put_batch(self, batch: dict[str, np.ndarray]) -> PyTree:
    """Places this process's share of a global batch across the replicas.

    Args:
      batch: host arrays with this process's examples of the global batch
        (all of it with one process), e.g. from
        `data.epoch_batches(..., process_index=jax.process_index())`.

    Returns:
      The batch laid out for the compiled steps: one global array sharded
      over the mesh (shard_map; assembled from every process's share), stacked
      per local device (pmap), or on the one device (jit).
    """
    local_batch_size = len(next(iter(batch.values())))
    self.check_batch_size(local_batch_size * jax.process_count())
    if self.mode == 'jit':
      return jax.device_put(batch, self.devices[0])
    if self.mode == 'pmap':
      n = len(self.devices)
      return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  def compile_train_step(self, step_fn: Callable[..., tuple[PyTree, PyTree]]
                         ) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """Compiles `step_fn(state, batch, axis_name=...) -> (state, metrics)`.

    The state is donated: its buffers (params, optimizer state, centers) are
    reused for the new state, so Eq. 4's scatter updates the centers in place.
    Metrics come back as one copy. Except under pmap, the step has the
    `.lower(state, batch)` of a jitted function.
    """
    fn = functools.partial(step_fn, axis_name=self.axis_name)
    if self.mode == 'jit':
      return jax.jit(fn, donate_argnums=0)
    if self.mode == 'pmap':
      # No `devices=`: pmap then spans every process's devices (each process
      # feeding its local ones), which a list of local devices would not.
      pmapped = jax.pmap(fn, axis_name=BATCH_AXIS, donate_argnums=0)
      def run(state, batch):
        state, metrics = pmapped(state, batch)
        return state, jax.tree.map(lambda x: x.addressable_data(0)[0],
                                   metrics)
      return run
    if self.class_shards == 1:
      return jax.jit(jax.shard_map(fn, mesh=self.mesh,
                                   in_specs=(P(), P(BATCH_AXIS)),
                                   out_specs=(P(), P()), check_vma=False),
                     donate_argnums=0)
    return self._compile_for_state(
        lambda specs: jax.jit(jax.shard_map(
            fn, mesh=self.mesh, in_specs=(specs, P(BATCH_AXIS)),
            out_specs=(specs, P()), check_vma=False), donate_argnums=0))

  def compile_eval_step(self, step_fn: Callable[..., tuple[PyTree, PyTree]]
                        ) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """Compiles `step_fn(state, batch, axis_name=...) -> (metrics, outputs)`.

    `metrics` are reduced across replicas (one copy comes back); `outputs`
    are per-example arrays of the global batch (`fetch_global` makes them
    numpy on every process). Their row order is the mesh's, which on a
    multi-host mesh may interleave processes: carry an example index along
    (as the 'index' of `features.extract_features` does) rather than assume
    it.
    """
    fn = functools.partial(step_fn, axis_name=self.axis_name)
    if self.mode == 'jit':
      return jax.jit(fn)
    if self.mode == 'pmap':
      pmapped = jax.pmap(fn, axis_name=BATCH_AXIS)
      def run(state, batch):
        metrics, outputs = pmapped(state, batch)
        # This process's examples, in order, then (with several processes)
        # every process's, so the outputs are global as in the other modes.
        def gather(x):
          local = np.concatenate(
              [np.asarray(shard.data) for shard in x.addressable_shards])
          local = local.reshape((-1,) + x.shape[2:])
          if jax.process_count() == 1:
            return local
          return np.asarray(multihost_utils.process_allgather(local,
                                                              tiled=True))
        return (jax.tree.map(lambda x: x.addressable_data(0)[0], metrics),
                jax.tree.map(gather, outputs))
      return run
    if self.class_shards == 1:
      return jax.jit(jax.shard_map(fn, mesh=self.mesh,
                                   in_specs=(P(), P(BATCH_AXIS)),
                                   out_specs=(P(), P(BATCH_AXIS)),
                                   check_vma=False))
    return self._compile_for_state(
        lambda specs: jax.jit(jax.shard_map(
            fn, mesh=self.mesh, in_specs=(specs, P(BATCH_AXIS)),
            out_specs=(P(), P(BATCH_AXIS)), check_vma=False)))

  def _compile_for_state(self, compile_fn: Callable[[PyTree], Callable]
                         ) -> Callable[[PyTree, PyTree], Any]:
    """`compile_fn(state_specs)(state, batch)`, compiled per state structure.

    The state's specs depend on its tree (which leaves are the centers and
    the kernel), known only at the first call.
    """
    compiled = {}
    def for_state(state):
      treedef = jax.tree.structure(state)
      if treedef not in compiled:
        compiled[treedef] = compile_fn(self.state_specs(state))
      return compiled[treedef]
    def run(state, batch):
      return for_state(state)(state, batch)
    # As on a jitted function: the program for these arguments, for its HLO
    # and memory analysis (the benchmarks').
    run.lower = lambda state, batch: for_state(state).lower(state, batch)
    return run


@functools.partial(jax.jit, static_argnames='sharding')
def _take_rows(array: jax.Array, rows: np.ndarray, *,
               sharding: NamedSharding) -> jax.Array:
  """`array[rows]`, laid out as `sharding`: `DataParallel.fetch_rows`' gather.

  Compiled: run eagerly, the same gather of a class-sharded array passes
  through a whole (num_classes, D) copy of it first.
  """
  return array.at[rows].get(out_sharding=sharding)


def _replicate_from_host(tree: PyTree, sharding: Any) -> PyTree:
  """Copies identical per-process values onto the devices of `sharding`.

  Each process supplies its own (equal) copy: with several processes the
  mesh holds devices this process cannot address, where only host data built
  by `make_array_from_callback` may be placed. Each device takes its block of
  the value, so a split sharding places a split array.

  Args:
    tree: host or single-device values, the same in every process.
    sharding: one NamedSharding for every leaf, or a tree of them matching
      `tree`.
  """
  def put(x, sharding):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype,
                                                    jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding),
                                      impl=jax.random.key_impl(x))
    host = fetch_global(x)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: put(x, sharding), tree)
  return jax.tree.map(put, tree, sharding)


def fetch_replicated(tree: PyTree) -> PyTree:
  """Numpy copies of replicated arrays (metrics, state), in any process.

  A global array spanning several processes cannot be read whole from one;
  every process holds a full replica, so read the local one.
  """
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def fetch_global(tree: PyTree) -> PyTree:
  """Numpy copies of whole global arrays, replicated or split, in any process.

  Like `fetch_replicated`, but an array split over devices of several
  processes (class-sharded centers, per-example outputs) is all-gathered
  first, in order; every process must call it.
  """
  def fetch(x):
    if (isinstance(x, jax.Array) and not x.is_fully_addressable
        and not x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return fetch_replicated(x)
  return jax.tree.map(fetch, tree)


def initialize_distributed(config) -> None:
  """Starts JAX's multi-controller runtime when the config asks for it.

  Call before anything else touches JAX devices. With `coordinator_address`
  unset, `jax.distributed.initialize()` detects the cluster itself (Cloud
  TPU pods, SLURM, Open MPI, Kubernetes); otherwise the address, process
  count and id are passed explicitly. CPU processes talk through gloo.

  Args:
    config: the `distributed` section of an experiment config, with
      `initialize` (bool), `coordinator_address`, `num_processes`,
      `process_id`.
  """
  if not config.initialize:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if config.coordinator_address:
    jax.distributed.initialize(config.coordinator_address,
                               config.num_processes, config.process_id)
  else:
    jax.distributed.initialize()


def psum(tree: PyTree, axis_name: Optional[str]) -> PyTree:
  """Sums over replicas; the identity when there is one (axis_name None)."""
  if axis_name is None:
    return tree
  return jax.lax.psum(tree, axis_name)
