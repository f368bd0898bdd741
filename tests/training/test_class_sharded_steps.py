"""Class-sharded centers and classifier (`config.class_shards`) in training.

Mesh: the 8 fake CPU devices of conftest.py as ('batch', 'classes') = (2, 4).
The class-sharded run is checked against the replicated shard_map run
(class_shards=1) of the same config from the same init: same losses, metrics,
backbone params, classifier kernel and centers after three steps, with the
centers, the kernel and its momentum really split over 'classes'. The
face_scale:runlocal config (FaceResNet on synthetic identities, here with
ArcFace + center loss and clipping) trains end to end, checkpoints and
resumes, in one process x 8 devices and in 2 processes x 4 (jax.distributed
over 127.0.0.1), with the replicated run's results. The 2 processes start
with the first face_scale test and run beside this module's other tests; the
last test waits for them.
"""

import functools
import json
import os
import sys

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from centerloss_jax import training
from centerloss_jax.training import parallel
from configs import default
from configs import face_scale
import multiprocess_util
import repo_paths

NUM_CLASSES = 16                       # 4 per class shard.
IMAGE_SHAPE = (8, 8, 1)                # LeNet++'s three pools: 8 -> 1.
GLOBAL_BATCH = 16
_TOL = dict(rtol=1e-5, atol=1e-6)
_CLASSIFIER = 'Dense_1'                # The replicated model's classifier.


def _config(class_shards, **overrides):
  config = default.get_config()
  config.update_from_flattened_dict(overrides)
  config.model.stage_channels = (2, 2, 2)
  config.model.feature_dim = 8
  config.parallel = 'shard_map'
  config.class_shards = class_shards
  config.input.num_classes = NUM_CLASSES
  config.center_loss.weight = 0.1
  return config


def _batches(num_batches=3, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    labels = rng.integers(0, NUM_CLASSES - 1, size=GLOBAL_BATCH)
    labels[-2:] = NUM_CLASSES - 1        # Only in the last batch replica.
    labels[3] = NUM_CLASSES + 4          # Out of range: ignored and counted.
    weights = np.ones(GLOBAL_BATCH, np.float32)
    weights[0] = 0.0                     # Padding.
    batches.append({
        'image': rng.normal(size=(GLOBAL_BATCH,) + IMAGE_SHAPE).astype(
            np.float32),
        'label': labels.astype(np.int32), 'weight': weights})
  return batches


def _train(class_shards, batches, tx=None, **overrides):
  """(initial host state, placed state after the steps, per-step metrics,
  eval outputs); `tx` replaces the config's optimizer."""
  config = _config(class_shards, **overrides)
  state = training.create_train_state(
      config, jax.random.key(0), image_shape=IMAGE_SHAPE,
      num_classes=NUM_CLASSES, learning_rate_fn=optax.constant_schedule(0.05))
  if tx is not None:
    state = state.replace(tx=tx, opt_state=tx.init(state.params))
  dp = parallel.DataParallel.create('shard_map', class_shards=class_shards)
  train_step, eval_step = training.trainer.step_functions(config)
  step = dp.compile_train_step(train_step)
  placed = dp.put_state(state)
  metrics = []
  for batch in batches:
    placed, sums = step(placed, dp.put_batch(batch))
    metrics.append(training.trainer.summarize(sums))
  eval_sums, outputs = dp.compile_eval_step(eval_step)(
      placed, dp.put_batch(batches[0]))
  metrics.append(training.trainer.summarize(eval_sums))
  return state, placed, metrics, parallel.fetch_global(outputs)


def _backbone(params):
  return {k: v for k, v in params.items()
          if k not in ('classifier', _CLASSIFIER)}


# --- face_scale:runlocal end to end, in one process and in two ----------------


def _face_scale_runlocal(class_shards=4):
  """face_scale:runlocal (8 steps, a checkpoint and an evaluation every 4)
  with ArcFace + center loss, clipped."""
  config = face_scale.get_config('runlocal')
  config.loss.classifier = 'arcface'
  config.loss.scale = 16.0
  config.grad_clip_norm = 5.0
  config.class_shards = class_shards
  # The flips are drawn per process (`BatchReader`), so with them 2 processes
  # would train on other augmentations than 1.
  config.input.flip = False
  return config


# The closed-set metrics and the open-set protocols of the final evaluation.
_FACE_METRICS = ('cross_entropy', 'center_loss', 'accuracy', 'num_examples',
                 'intra_class_spread', 'inter_class_mean_distance',
                 'synthetic_pairs/accuracy', 'synthetic_pairs/auc',
                 'synthetic_identification/rank1')

_WORKER = """
import json, os, sys
flags = os.environ.get('XLA_FLAGS', '')
os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'
import jax
from centerloss_jax import training
from centerloss_jax.training import parallel
from test_class_sharded_steps import _face_scale_runlocal
process_id, port, workdir = sys.argv[1:]
config = _face_scale_runlocal()
config.distributed.update(initialize=True, num_processes=2,
                          coordinator_address=f'127.0.0.1:{port}',
                          process_id=int(process_id))
parallel.initialize_distributed(config.distributed)
assert jax.device_count() == 8 and jax.local_device_count() == 4
metrics = training.train_and_evaluate(config, workdir)
resumed = training.train_and_evaluate(config, workdir)  # Restore, re-shard.
if jax.process_index() == 0:
  with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    json.dump({'trained': metrics, 'resumed': resumed}, f)
jax.distributed.shutdown()
"""


@pytest.fixture(scope='module')
def two_processes_started(tmp_path_factory):
  """2 processes x 4 devices training and resuming face_scale:runlocal,
  started before the in-process runs so that they run beside them:
  (the processes, their workdir)."""
  root = tmp_path_factory.mktemp('two_processes')
  worker = root / 'worker.py'
  worker.write_text(_WORKER)
  port = multiprocess_util.free_port()
  with multiprocess_util.Processes(
      [[sys.executable, str(worker), str(i), str(port), str(root / 'run')]
       for i in range(2)],
      pythonpath=[repo_paths.REPO_ROOT, repo_paths.TESTS_DIR,
                  os.path.join(repo_paths.TESTS_DIR, 'training')],
      timeout=240) as processes:
    yield processes, root / 'run'


@pytest.fixture(scope='module')
def face_scale_run(two_processes_started, tmp_path_factory):
  """(workdir, final metrics) of face_scale:runlocal, 1 process x 8 devices."""
  del two_processes_started  # Started first, to run beside this run.
  workdir = tmp_path_factory.mktemp('face_scale')
  config = _face_scale_runlocal()
  assert config.class_shards == 4 and config.input.num_classes == 64
  assert config.model.name == 'face_resnet'
  return workdir, training.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def two_process_metrics(two_processes_started):
  """The final metrics of the 2 processes' run, trained and resumed."""
  processes, workdir = two_processes_started
  processes.wait()
  return json.loads((workdir / 'metrics.json').read_text())


@pytest.mark.slow
def test_face_scale_runlocal_checkpoints_every_4_steps(face_scale_run):
  workdir, _ = face_scale_run
  checkpoints = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  assert checkpoints == ['4', '8'], checkpoints


@pytest.mark.slow
def test_face_scale_runlocal_tests_one_image_per_identity(face_scale_run):
  _, metrics = face_scale_run
  assert metrics['num_examples'] == 16
  assert metrics['invalid_labels'] == 0


@pytest.mark.slow
def test_face_scale_runlocal_equals_replicated_training(face_scale_run,
                                                        tmp_path):
  """End to end, ArcFace + center loss + clipping with 4 class shards give
  the replicated run's numbers (64 classes, 48 of them padding)."""
  _, metrics = face_scale_run
  replicated = training.train_and_evaluate(_face_scale_runlocal(1),
                                           str(tmp_path))
  for key in _FACE_METRICS:
    np.testing.assert_allclose(metrics[key], replicated[key], rtol=1e-4,
                               err_msg=key)


# --- three steps, replicated and class-sharded --------------------------------


@pytest.fixture(scope='module')
def runs():
  batches = _batches()
  return _train(1, batches), _train(4, batches)


@pytest.mark.slow
def test_sharded_init_equals_replicated_init(runs):
  (replicated, *_), (sharded, *_) = runs
  assert _CLASSIFIER not in sharded.params
  np.testing.assert_array_equal(sharded.params['classifier']['kernel'],
                                replicated.params[_CLASSIFIER]['kernel'])
  jax.tree.map(np.testing.assert_array_equal, _backbone(sharded.params),
               _backbone(replicated.params))


@pytest.mark.slow
def test_each_sharded_step_counts_the_one_invalid_label(runs):
  (_, _, ref_metrics, _), (_, _, metrics, _) = runs
  for step, (got, want) in enumerate(zip(metrics, ref_metrics)):
    assert got['invalid_labels'] == want['invalid_labels'] == 1, step


@pytest.mark.slow
def test_sharded_steps_give_the_replicated_metrics(runs):
  (_, _, ref_metrics, _), (_, _, metrics, _) = runs
  for step, (got, want) in enumerate(zip(metrics, ref_metrics)):
    for key in ('cross_entropy', 'center_loss', 'accuracy', 'feature_norm',
                'num_examples'):
      np.testing.assert_allclose(got[key], want[key], **_TOL,
                                 err_msg=f'{key}, step {step + 1} (4 = eval)')


@pytest.mark.slow
def test_sharded_steps_give_the_replicated_centers(runs):
  (_, reference, _, _), (_, state, _, _) = runs
  assert int(state.step) == 3
  centers = np.asarray(state.centers)
  assert np.abs(centers).max() > 0, 'Set-up: the centers should move.'
  np.testing.assert_allclose(centers, reference.centers, **_TOL,
                             err_msg='centers after 3 steps')


@pytest.mark.slow
def test_sharded_steps_give_the_replicated_classifier(runs):
  (_, reference, _, _), (_, state, _, _) = runs
  np.testing.assert_allclose(state.params['classifier']['kernel'],
                             reference.params[_CLASSIFIER]['kernel'], **_TOL,
                             err_msg='classifier kernel after 3 steps')


@pytest.mark.slow
def test_sharded_steps_give_the_replicated_backbone(runs):
  (_, reference, _, _), (_, state, _, _) = runs
  jax.tree.map(functools.partial(np.testing.assert_allclose, **_TOL,
                                 err_msg='backbone params after 3 steps'),
               _backbone(state.params), _backbone(reference.params))


@pytest.mark.slow
def test_the_sharded_eval_step_gives_the_replicated_outputs(runs):
  (_, _, _, ref_out), (_, _, _, out) = runs
  np.testing.assert_allclose(out['feature'], ref_out['feature'], **_TOL)
  np.testing.assert_array_equal(out['label'], ref_out['label'])


@pytest.mark.slow
def test_centers_are_split_over_the_class_axis_by_rows(runs):
  _, (_, state, *_) = runs
  assert state.centers.sharding.spec == P('classes', None)
  assert state.centers.addressable_shards[0].data.shape == (
      NUM_CLASSES // 4, 8)


@pytest.mark.slow
def test_the_classifier_kernel_is_split_over_the_class_axis_by_columns(runs):
  _, (_, state, *_) = runs
  kernel = state.params['classifier']['kernel']
  assert kernel.sharding.spec == P(None, 'classes')
  assert kernel.addressable_shards[0].data.shape == (8, NUM_CLASSES // 4)


@pytest.mark.slow
def test_the_kernels_momentum_is_split_like_the_kernel(runs):
  _, (_, state, *_) = runs
  twins = [(jax.tree_util.keystr(path), leaf) for path, leaf in
           jax.tree_util.tree_leaves_with_path(state.opt_state)
           if 'classifier' in jax.tree_util.keystr(path)]
  assert twins, 'SGD momentum should hold a twin of the kernel.'
  for name, leaf in twins:
    assert leaf.sharding.spec == P(None, 'classes'), name


@pytest.mark.slow
def test_the_backbone_is_replicated(runs):
  _, (_, state, *_) = runs
  backbone = jax.tree.leaves(_backbone(state.params))
  assert all(leaf.sharding.is_fully_replicated for leaf in backbone), [
      leaf.sharding for leaf in backbone]


# ArcFace + center loss, gradients clipped to a global norm the steps exceed.
_MARGIN_AND_CLIP = {'loss.classifier': 'arcface', 'loss.scale': 8.0,
                    'grad_clip_norm': 0.5}
_CLIP_TOL = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture(scope='module')
def margin_runs():
  batches = _batches()
  return (_train(1, batches, **_MARGIN_AND_CLIP),
          _train(4, batches, **_MARGIN_AND_CLIP))


@pytest.mark.slow
def test_every_step_of_the_margin_runs_is_clipped(margin_runs):
  # Else the norm would not be checked.
  (_, _, ref_metrics, _), _ = margin_runs
  for step, want in enumerate(ref_metrics[:-1]):
    assert want['grad_norm'] > _MARGIN_AND_CLIP['grad_clip_norm'], step


@pytest.mark.slow
def test_arcface_with_clipping_gives_the_replicated_step_metrics(
    margin_runs):
  """The margin on the sharded cosine classifier, and the global-norm clip
  over all shards, give the replicated run's steps."""
  (_, _, ref_metrics, _), (_, _, metrics, _) = margin_runs
  for step, (got, want) in enumerate(zip(metrics[:-1], ref_metrics)):
    for key in ('cross_entropy', 'center_loss', 'accuracy', 'grad_norm'):
      np.testing.assert_allclose(got[key], want[key], **_CLIP_TOL,
                                 err_msg=f'{key}, step {step + 1}')


@pytest.mark.slow
def test_arcface_with_clipping_gives_the_replicated_eval_metrics(
    margin_runs):
  (_, _, ref_metrics, _), (_, _, metrics, _) = margin_runs
  for key in ('cross_entropy', 'accuracy'):
    np.testing.assert_allclose(metrics[-1][key], ref_metrics[-1][key],
                               **_CLIP_TOL, err_msg=f'eval {key}')


@pytest.mark.slow
def test_arcface_with_clipping_gives_the_replicated_state(margin_runs):
  (_, reference, _, _), (_, state, _, _) = margin_runs
  np.testing.assert_allclose(state.centers, reference.centers, **_CLIP_TOL)
  np.testing.assert_allclose(state.params['classifier']['kernel'],
                             reference.params[_CLASSIFIER]['kernel'],
                             **_CLIP_TOL)
  jax.tree.map(functools.partial(np.testing.assert_allclose, **_CLIP_TOL),
               _backbone(state.params), _backbone(reference.params))


@pytest.mark.slow
def test_the_clip_is_optax_clip_by_global_norm_before_the_optimizer(
    margin_runs):
  """Replicated, the step's clip equals optax's in front of the optimizer."""
  (_, clipped, *_), _ = margin_runs
  config = _config(1, **_MARGIN_AND_CLIP)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      training.state.create_optimizer(config, optax.constant_schedule(0.05)))
  _, chained, _, _ = _train(1, _batches(), tx=tx,
                            **{**_MARGIN_AND_CLIP, 'grad_clip_norm': None})
  jax.tree.map(np.testing.assert_array_equal, clipped.params, chained.params)


# --- which losses run class-sharded -------------------------------------------


def test_class_sharding_takes_the_margin_losses():
  config = _config(2, **{'loss.classifier': 'cosface'})
  training.trainer.step_functions(config)


def test_class_sharding_refuses_a_pair_loss_in_the_config():
  config = _config(2, **{'loss.pair': 'triplet'})
  with pytest.raises(ValueError, match="loss.pair='triplet'.*class_shards=1"):
    training.trainer.step_functions(config)


def test_the_sharded_step_refuses_a_pair_loss_given_to_it():
  # For users who build their own step.
  with pytest.raises(ValueError, match="'contrastive'"):
    training.class_sharded_steps.ShardedClasses().check_losses(
        training.ClassifierLoss('arcface'),
        training.PairLoss('contrastive', weight=1.0, margin=1.0))


# --- the state: born sharded, restored into any class layout ------------------


def _init(config, num_classes=NUM_CLASSES):
  return functools.partial(
      training.create_train_state, config, jax.random.key(0),
      image_shape=IMAGE_SHAPE, num_classes=num_classes,
      learning_rate_fn=optax.constant_schedule(0.05))


def _assert_same_state(got, want):
  jax.tree.map(np.testing.assert_array_equal,
               (got.step, got.params, got.opt_state, got.centers,
                jax.random.key_data(got.rng)),
               (want.step, want.params, want.opt_state, want.centers,
                jax.random.key_data(want.rng)))


def _assert_placed(state, dp):
  """Every leaf of `state` is where `dp` trains it."""
  for leaf, sharding in zip(jax.tree.leaves(state),
                            jax.tree.leaves(dp.state_shardings(state))):
    assert leaf.sharding == sharding, (leaf.shape, leaf.sharding, sharding)


@pytest.fixture(scope='module')
def born_sharded():
  """(state made by `create_state` with 4 class shards, its DataParallel)."""
  dp = parallel.DataParallel.create('shard_map', class_shards=4)
  return dp.create_state(_init(_config(4))), dp


@pytest.mark.slow
def test_a_state_born_sharded_has_the_host_inits_values(born_sharded):
  born, _ = born_sharded
  _assert_same_state(born, _init(_config(4))())  # The host's, one device.


@pytest.mark.slow
def test_a_state_born_sharded_is_placed_for_training(born_sharded):
  born, dp = born_sharded
  _assert_placed(born, dp)
  assert born.params['classifier']['kernel'].sharding.spec == P(
      None, 'classes')


@pytest.mark.slow
def test_putting_a_state_born_sharded_copies_nothing(born_sharded):
  born, dp = born_sharded
  assert dp.put_state(born) is born  # Already in place.


@pytest.mark.slow
def test_no_device_computes_a_whole_class_sized_array_at_init():
  # 64K classes x 8-d: the kernel, its momentum and the centers are 2 MiB
  # each whole, a quarter of that per class shard.
  num_classes = 65_536
  config = _config(4)
  config.input.num_classes = num_classes
  dp = parallel.DataParallel.create('shard_map', class_shards=4)
  init = _init(config, num_classes)
  whole = num_classes * 8 * 4
  compiled = jax.jit(init, out_shardings=dp.state_shardings(
      jax.eval_shape(init))).lower().compile()
  memory = compiled.memory_analysis()  # Per device.
  share = 3 * whole // 4  # A quarter of the kernel, momentum and centers.
  backbone = 64 * 1024
  assert share <= memory.output_size_in_bytes < share + backbone
  # Scratch for its own share only (the kernel quarter's random bits and
  # their transform), not for any whole (num_classes, 8) array.
  assert memory.temp_size_in_bytes < share + backbone, (
      memory.temp_size_in_bytes, share)


@pytest.mark.slow
def test_checkpoints_resume_across_class_layouts(runs, tmp_path):
  """Replicated -> 4 class shards -> 2 -> replicated, through checkpoints:
  the same values at every stop, each read into its run's layout."""
  (_, replicated, *_), _ = runs
  scope_moved = training.state.move_classifier(
      replicated, class_sharded=True, scope=_CLASSIFIER)
  previous = parallel.DataParallel.create('shard_map').host_state(replicated)
  for index, class_shards in enumerate((4, 2, 1)):
    manager = training.checkpointing.create_manager(
        str(tmp_path / str(index)), max_to_keep=1)
    training.checkpointing.save(manager, previous, step=3)
    config = _config(class_shards)
    dp = parallel.DataParallel.create('shard_map', class_shards=class_shards)
    restored = training.trainer.restore_checkpoint(
        manager, dp.abstract_state(_init(config)), config)
    manager.close()
    _assert_same_state(restored, scope_moved if class_shards > 1
                       else replicated)
    _assert_placed(restored, dp)
    previous = restored


# --- last: the 2 processes, started before the face_scale run, have run
# beside every run above ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('run', ['trained', 'resumed'])
def test_two_processes_match_one_process(two_process_metrics, face_scale_run,
                                         run):
  """2 processes x 4 devices: placement, the margin's and the clip's
  collectives, checkpoints and evaluation span hosts; the resume restores
  the sharded checkpoints and re-shards them."""
  _, expected = face_scale_run
  for key in _FACE_METRICS:
    np.testing.assert_allclose(two_process_metrics[run][key], expected[key],
                               rtol=1e-4, err_msg=f'{run}: {key}')
