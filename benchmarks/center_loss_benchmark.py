"""Benchmarks the center loss: cost vs num_classes, a baseline, LeNet++ steps.

Run from the repository root (so that `configs` imports):

  .venv/bin/python -m benchmarks.center_loss_benchmark

Prints markdown tables:

1. "Center-loss step": a jitted `(centers, features, labels) ->
   (loss, new_centers)` that computes `losses.center_loss` then
   `losses.update_centers(alpha=0.5)`, with the centers donated and threaded
   through the iterations (each step's new centers are the next step's input,
   so donation is real). Median ms per step, the ratio to the smallest
   num_classes of the same dim (target: 1M classes within 1.5x of 1K), XLA's
   compile-time memory analysis and what the optimised HLO does with the
   centers (aliasing, centers-sized copies).
2. The "distance-matrix" formulation of common ports (a batch x num_classes
   distance matrix and a one-hot matmul update with a num_classes x dim
   temporary), in the same run, and its time relative to ours.
3. The full LeNet++ `training.steps.train_step` (jit, donated state) with center loss
   weight 0.01 vs an honest softmax-only step (no center term, no center
   update, no center metric), interleaved iteration by iteration.

Times are medians of individually timed, `jax.block_until_ready`-ed steps after
warm-up; on a shared machine compare ratios within one run, not across runs.
Each configuration stops early after `--max_seconds_per_config` seconds once it
has `--min_iters` timed steps.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from benchmarks import common
from benchmarks import hlo_stats
from centerloss_jax import losses as loss_lib
from centerloss_jax import training
from configs import default as default_config

_NUM_CLASSES = flags.DEFINE_list(
    'num_classes', ['1_000', '16_000', '131_000', '1_000_000'],
    'Numbers of classes (rows of the centers) for the center-loss step.')
_DIMS = flags.DEFINE_list('dims', ['128', '512'], 'Feature dimensions.')
_BATCH = flags.DEFINE_integer('batch', 256, 'Batch of the center-loss step.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Center update rate (Eq. 4).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps per configuration.')
_ITERS = flags.DEFINE_integer('iters', 30,
                              'Max timed steps per center-loss configuration.')
_MIN_ITERS = flags.DEFINE_integer(
    'min_iters', 5, 'Timed steps always run before the time cap applies.')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds_per_config', 8.0,
    'Stop timing a configuration after this many seconds (once it has '
    '--min_iters steps).')
_BASELINE = flags.DEFINE_bool('baseline', True,
                              'Run the distance-matrix baseline (table 2).')
_BASELINE_MAX_CLASSES = flags.DEFINE_integer(
    'baseline_max_classes', 131_000,
    'Skip the baseline above this num_classes (memory/time).')
_LENET = flags.DEFINE_bool('lenet', True, 'Run the LeNet++ train steps.')
_LENET_BATCH = flags.DEFINE_integer('lenet_batch', 128, 'LeNet++ batch.')
_LENET_WARMUP = flags.DEFINE_integer('lenet_warmup', 2,
                                     'Untimed LeNet++ steps per variant.')
_LENET_ITERS = flags.DEFINE_integer('lenet_iters', 8,
                                    'Timed LeNet++ steps per variant.')
_LENET_WEIGHT0 = flags.DEFINE_bool(
    'lenet_weight0', True,
    'Also time train_step with center_loss_weight=0 (center update and '
    'center metric still run).')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed for the synthetic data.')

# ----------------------------------------------------------------------------
# Step functions.


def ours_step(centers, features, labels, *, alpha):
  """The package's center loss (Eq. 2) then center update (Eq. 4)."""
  value = loss_lib.center_loss(features, labels, centers)
  return value, loss_lib.update_centers(centers, features, labels, alpha=alpha)


def distance_matrix_step(centers, features, labels, *, alpha):
  """The formulation of common ports: dense over all classes.

  Loss: `||x||^2 + ||c||^2 - 2 x c^T` for every (example, class) pair, each
  example's own distance picked with a one-hot mask. Update: per-class sums
  and counts by a one-hot matmul, a num_classes x dim temporary, then Eq. 4 on
  every center (classes absent from the batch get a zero delta).
  """
  num_classes = centers.shape[0]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  sq_x = jnp.sum(features * features, axis=1, keepdims=True)
  sq_c = jnp.sum(centers * centers, axis=1)[None, :]
  distances = sq_x + sq_c - 2.0 * features @ centers.T
  own = jnp.sum(distances * one_hot, axis=1)
  value = 0.5 * jnp.mean(own)
  counts = jnp.sum(one_hot, axis=0)[:, None]
  sums = one_hot.T @ features
  delta = (counts * centers - sums) / (1.0 + counts)
  return value, centers - alpha * delta


# ----------------------------------------------------------------------------
# Compilation, HLO inspection and timing.


def _compile(fn: Callable[..., Any], *args) -> Any:
  return jax.jit(fn, donate_argnums=0).lower(*args).compile()


def _data(num_classes: int, dim: int, batch: int, seed: int):
  """Random centers, features and labels (uniform over the classes)."""
  k_c, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
  centers = jax.random.normal(k_c, (num_classes, dim), jnp.float32)
  features = jax.random.normal(k_x, (batch, dim), jnp.float32)
  labels = jax.random.randint(k_y, (batch,), 0, num_classes, jnp.int32)
  return jax.block_until_ready((centers, features, labels))


def _measure(fn, num_classes, dim) -> dict[str, Any]:
  """Compiles `fn` for one size, inspects its HLO and times it."""
  centers, features, labels = _data(num_classes, dim, _BATCH.value,
                                    _SEED.value)
  compiled = _compile(functools.partial(fn, alpha=_ALPHA.value), centers,
                      features, labels)
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  ops = hlo_stats.class_sized_ops(hlo, num_classes)
  times, centers, donated = common.time_threaded(
      compiled, centers, (features, labels), warmup=_WARMUP.value,
      iters=_ITERS.value, min_iters=_MIN_ITERS.value,
      max_seconds=_MAX_SECONDS.value)
  del centers
  return {
      'median': statistics.median(times),
      'n': len(times),
      'temp': memory.temp_size_in_bytes if memory else float('nan'),
      'argument': memory.argument_size_in_bytes if memory else float('nan'),
      'alias': memory.alias_size_in_bytes if memory else float('nan'),
      'aliased': hlo_stats.aliases_first_argument(hlo),
      'copies': ops.count('copy'),
      'ops': ops,
      'donated': donated,
  }


def _check_baseline_matches(dim: int) -> float:
  """Max |difference| of (loss, new centers) between ours and the baseline."""
  centers, features, labels = _data(1000, dim, _BATCH.value, _SEED.value)
  labels = labels % 100  # Plenty of duplicate classes in the batch.
  ours = jax.jit(functools.partial(ours_step, alpha=_ALPHA.value))(
      centers, features, labels)
  base = jax.jit(functools.partial(distance_matrix_step, alpha=_ALPHA.value))(
      centers, features, labels)
  loss_err = abs(float(ours[0]) - float(base[0])) / abs(float(ours[0]))
  centers_err = float(jnp.max(jnp.abs(ours[1] - base[1])))
  return max(loss_err, centers_err)


# ----------------------------------------------------------------------------
# Sections.


def center_loss_tables(sizes: Sequence[int], dims: Sequence[int]) -> None:
  """Tables 1 and 2."""
  ours, base = {}, {}
  for dim in dims:
    for num_classes in sizes:
      ours[num_classes, dim] = _measure(ours_step, num_classes, dim)
      if _BASELINE.value and num_classes <= _BASELINE_MAX_CLASSES.value:
        base[num_classes, dim] = _measure(distance_matrix_step, num_classes,
                                          dim)

  smallest = min(sizes)

  def rows(results):
    out = []
    for dim in dims:
      for num_classes in sizes:
        r = results[num_classes, dim]
        ratio = r['median'] / results[smallest, dim]['median']
        centers_bytes = 4 * num_classes * dim
        out.append([
            f'{num_classes:,}', dim, common.ms(r['median']), r['n'],
            f'{ratio:.2f}', common.mib(r['temp']), common.mib(centers_bytes),
            common.mib(r['alias']),
            'yes' if r['donated'] else 'NO',
            'yes' if r['aliased'] else 'no',
            r['copies'],
            'yes' if r['aliased'] and not r['copies'] else 'NO',
            common.summarize_ops(r['ops'])])
    return out

  header = ['classes', 'dim', 'median ms', 'n', f'x {smallest:,}-class',
            'temp MiB', 'centers MiB', 'alias MiB', 'donated',
            'io-aliased', 'centers copies', 'in place',
            'num_classes-sized HLO ops']
  legend = (
      f'`x {smallest:,}-class`: median over the same dim\'s {smallest:,}-class '
      'median (target: <= 1.5 at 1M). `temp MiB`: '
      '`compiled.memory_analysis().temp_size_in_bytes`, XLA\'s scratch '
      'buffers beyond arguments and outputs, which should not grow with '
      'num_classes. `alias MiB`: bytes of outputs that share an argument\'s '
      'buffer. `donated`: the input centers were deleted by the first call. '
      '`io-aliased`: the executable\'s input_output_alias maps the centers '
      'to the new centers. `centers copies`: `copy` instructions of '
      'num_classes-sized arrays in the optimised entry computation. '
      '`in place`: aliased and no such copy. Last column: every '
      'entry-computation instruction (not parameters) with a num_classes '
      'dimension.')

  print(f'\n## 1. Center-loss step (center_loss + update_centers, alpha '
        f'{_ALPHA.value}, batch {_BATCH.value}, centers donated and threaded)'
        '\n')
  print(common.table(header, rows(ours)))
  print('\n' + legend)

  if _BASELINE.value:
    print('\n## 2. Distance-matrix baseline (B x C distances, one-hot pick, '
          'one-hot matmul update with a C x D temporary)\n')
    max_err = max(_check_baseline_matches(dim) for dim in dims)
    base_rows = []
    for dim in dims:
      for num_classes in sizes:
        r, o = base.get((num_classes, dim)), ours[num_classes, dim]
        if r is None:
          base_rows.append([f'{num_classes:,}', dim,
                            'skipped (memory/time)', '-', common.ms(o['median']),
                            '-', '-'])
          continue
        base_rows.append([
            f'{num_classes:,}', dim, common.ms(r['median']), r['n'],
            common.ms(o['median']), f'{r["median"] / o["median"]:.1f}',
            common.mib(r['temp'])])
    print(common.table(['classes', 'dim', 'baseline median ms', 'n',
                  'ours median ms', 'baseline / ours', 'baseline temp MiB'],
                 base_rows))
    print(f'\nBaseline skipped above --baseline_max_classes='
          f'{_BASELINE_MAX_CLASSES.value:,}. Sanity check: baseline and ours '
          f'agree to {max_err:.1e} (max of relative loss difference and '
          'absolute center difference, 1,000 classes, 100 distinct labels in '
          'the batch).')


def _softmax_only_step(state: training.TrainState, batch: training.steps.Batch):
  """`training.steps.train_step` without any center-loss work, for the overhead.

  Same model, CE normalisation, RNG folding, optimizer update and metrics,
  minus the center term of the loss, the center update and the center-loss
  metric. The centers stay in the (donated) state, untouched.
  """
  labels = batch['label']
  num_classes = state.centers.shape[0]
  weights = loss_lib.common.effective_weights(labels, num_classes,
                                              batch['weight'])
  total_weight = jnp.maximum(jnp.sum(weights), loss_lib.EPSILON)
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    features, logits = state.apply_fn({'params': params}, batch['image'],
                                      train=True, rngs={'dropout': rng})
    ce = loss_lib.softmax_cross_entropy_loss(logits, labels, reduction='none')
    return jnp.sum(weights * ce) / total_weight, (features, logits, ce)

  grads, (features, logits, ce) = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = {
      'cross_entropy': jnp.sum(weights * ce),
      'accuracy': jnp.sum(weights * (jnp.argmax(logits, -1) == labels)),
      'feature_norm': jnp.sum(weights * jnp.linalg.norm(features, axis=-1)),
      'weight': jnp.sum(weights),
      'invalid_labels': loss_lib.invalid_label_count(labels, num_classes,
                                                     batch['weight']),
  }
  return state.apply_gradients(grads=grads), metrics


def lenet_table() -> None:
  """Table 3: the full LeNet++ train step with and without the center loss."""
  config = default_config.get_config()
  num_classes = config.input.num_classes
  batch_size = _LENET_BATCH.value
  config.batch_size = batch_size
  steps_per_epoch = 60000 // batch_size
  lr_fn = training.state.create_learning_rate_fn(
      config, steps_per_epoch=steps_per_epoch,
      total_steps=training.state.total_train_steps(config, steps_per_epoch))
  k_x, k_y = jax.random.split(jax.random.key(_SEED.value + 1))
  batch = {
      'image': jax.random.uniform(k_x, (batch_size, 28, 28, 1), jnp.float32),
      'label': jax.random.randint(k_y, (batch_size,), 0, num_classes,
                                  jnp.int32),
      'weight': jnp.ones((batch_size,), jnp.float32),
  }

  variants = [
      ('train_step, center_loss_weight=0.01', functools.partial(
          training.steps.train_step, objective=training.Objective(
              center_loss_weight=0.01,
              center_alpha=config.center_loss.alpha))),
      ('softmax only (no center term, update or metric)',
       _softmax_only_step),
  ]
  if _LENET_WEIGHT0.value:
    variants.append(('train_step, center_loss_weight=0 (update still runs)',
                     functools.partial(
                         training.steps.train_step,
                         objective=training.Objective(
                             center_loss_weight=0.0,
                             center_alpha=config.center_loss.alpha))))

  compiled, states, info = [], [], []
  for _, fn in variants:
    state = training.create_train_state(
        config, jax.random.key(_SEED.value), image_shape=(28, 28, 1),
        num_classes=num_classes, learning_rate_fn=lr_fn)
    c = jax.jit(fn, donate_argnums=0).lower(state, batch).compile()
    hlo = c.as_text()
    centers_copies = hlo_stats.copies_of(hlo, 'f32', state.centers.shape)
    memory = c.memory_analysis()
    info.append({'copies': centers_copies,
                 'temp': memory.temp_size_in_bytes if memory else float('nan')})
    compiled.append(c)
    states.append(state)

  for _ in range(_LENET_WARMUP.value):
    for i, c in enumerate(compiled):
      states[i], metrics = c(states[i], batch)
      jax.block_until_ready((states[i], metrics))
  times = [[] for _ in compiled]
  for _ in range(_LENET_ITERS.value):  # Interleaved: drift hits all alike.
    for i, c in enumerate(compiled):
      t0 = time.perf_counter()
      states[i], metrics = c(states[i], batch)
      jax.block_until_ready((states[i], metrics))
      times[i].append(time.perf_counter() - t0)

  medians = [statistics.median(t) for t in times]
  rows = []
  for (name, _), median, t, extra in zip(variants, medians, times, info):
    rows.append([name, f'{1e3 * median:.1f}', f'{min(t) * 1e3:.1f}',
                 f'{max(t) * 1e3:.1f}', len(t),
                 f'{batch_size / median:.1f}',
                 f'{median / medians[1]:.3f}', common.mib(extra['temp']),
                 extra['copies']])
  print(f'\n## 3. LeNet++ train step (batch {batch_size}, 28x28x1, stage '
        f'channels {tuple(config.model.stage_channels)}, feature_dim '
        f'{config.model.feature_dim}, {num_classes} classes, '
        f'{config.optimizer} lr {config.learning_rate}; jit, state donated; '
        'variants interleaved)\n')
  print(common.table(['variant', 'median ms/step', 'min ms', 'max ms', 'n',
                'images/s', 'x softmax only', 'temp MiB', 'centers copies'],
               rows))
  print(f'\nCenter-loss overhead (with / without): '
        f'{medians[0] / medians[1]:.3f}x. `centers copies`: `copy` '
        'instructions of the (num_classes, feature_dim) centers in the '
        'optimised entry computation.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  device = jax.devices()[0]
  try:
    usable_cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    usable_cpus = os.cpu_count()
  print('# Center-loss benchmark\n')
  print(f'- jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
        f'numpy {np.__version__}')
  print(f'- backend: {jax.default_backend()}, device kind: '
        f'{device.device_kind}, devices: {jax.device_count()}')
  print(f'- CPUs: os.cpu_count()={os.cpu_count()}, usable={usable_cpus}')
  print(f'- XLA_FLAGS: {os.environ.get("XLA_FLAGS", "(unset)")}')
  print(f'- timing: warm-up {_WARMUP.value}, up to {_ITERS.value} timed steps '
        f'(at least {_MIN_ITERS.value}, cap {_MAX_SECONDS.value:g} s per '
        f'configuration), medians')

  sizes = sorted(int(s) for s in _NUM_CLASSES.value)
  dims = [int(d) for d in _DIMS.value]
  start = time.perf_counter()
  center_loss_tables(sizes, dims)
  if _LENET.value:
    lenet_table()
  print(f'\nTotal wall time: {time.perf_counter() - start:.0f} s.')


if __name__ == '__main__':
  app.run(main)
