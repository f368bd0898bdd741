"""End-to-end tests of `train_and_evaluate` and `main` on tiny IDX data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

from centerloss_jax import data
from centerloss_jax import training
from centerloss_jax.training import checkpointing
import config_util
import repo_paths

REPO_ROOT = repo_paths.REPO_ROOT


def _config(data_dir, **overrides):
  return config_util.runlocal_config(data_dir, **overrides)


@pytest.fixture(scope='module')
def finished_run(tiny_idx_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  metrics = training.train_and_evaluate(_config(tiny_idx_dir), workdir)
  return workdir, metrics


def test_run_writes_metrics_plot_and_checkpoints(finished_run):
  workdir, metrics = finished_run
  # runlocal: 256 examples / batch 32 = 8 steps per epoch, 2 epochs.
  assert metrics['num_examples'] == 100, 'each test example exactly once'
  assert 0.0 <= metrics['accuracy'] <= 1.0
  for key in ('intra_class_spread', 'inter_class_min_distance',
              'spread_to_separation', 'center_loss'):
    assert np.isfinite(metrics[key]), key
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert any('train/cross_entropy' in r for r in records)
  # The centers' diagnostics are logged with the training metrics: they
  # move (from zero) and the features sit at a finite distance from them.
  train_records = [r for r in records if 'train/center_movement' in r]
  assert train_records
  for key in ('center_movement', 'center_norm', 'feature_center_distance'):
    assert all(np.isfinite(r[f'train/{key}']) for r in train_records), key
  assert train_records[0]['train/center_movement'] > 0
  test_records = [r for r in records if 'test/accuracy' in r]
  assert [r['step'] for r in test_records] == [8, 16]
  assert test_records[-1]['test/accuracy'] == pytest.approx(
      metrics['accuracy'])
  for step in (8, 16):
    assert os.path.getsize(
        os.path.join(workdir, f'features_step_{step}.png')) > 1000
  # The last plot's data, for figures across runs: the whole test split.
  with np.load(os.path.join(workdir, 'features.npz')) as plotted:
    assert int(plotted['step']) == 16
    assert plotted['features'].shape == (metrics['num_examples'], 2)
    assert plotted['labels'].shape == (metrics['num_examples'],)
    assert plotted['centers'].shape == (10, 2)
    assert list(plotted['class_names'])[:2] == ['T-shirt/top', 'Trouser']
  # The learning rate is logged with the train metrics (runlocal's
  # piecewise schedule: 0.01 throughout 16 steps).
  rates = [r['train/learning_rate'] for r in records
           if 'train/learning_rate' in r]
  assert rates and all(rate == pytest.approx(0.01) for rate in rates)
  # How long each step waited for its input: the bottleneck, visible.
  waits = [r for r in records if 'train/input_wait_ms' in r]
  assert len(waits) == len(rates)
  assert all(r['train/input_wait_ms'] >= 0 for r in waits)
  assert all(0 <= r['train/input_wait_fraction'] <= 1 for r in waits)
  assert any(name.startswith('events.out.tfevents')
             for name in os.listdir(workdir))
  assert sorted(int(s) for s in os.listdir(
      os.path.join(workdir, 'checkpoints')) if s.isdigit()) == [8, 12, 16]


def test_cosine_schedule_decays_over_num_train_steps_not_num_epochs():
  # The face config's form: num_train_steps set, num_epochs left at 1, with
  # 100 steps per epoch (a small dataset).
  config = config_util.runlocal_config(
      None, schedule='cosine', learning_rate=0.002, num_epochs=1.0,
      num_train_steps=28_000, warmup_epochs=0.0)
  total = training.state.total_train_steps(config, steps_per_epoch=100)
  assert total == 28_000
  lr = training.state.create_learning_rate_fn(
      config, steps_per_epoch=100, total_steps=total)
  assert float(lr(0)) == pytest.approx(0.002)
  assert float(lr(99)) == pytest.approx(0.002, rel=1e-4)
  assert float(lr(14_000)) == pytest.approx(0.001, rel=1e-4)  # Half-way.
  assert float(lr(27_000)) == pytest.approx(
      0.001 * (1 + np.cos(np.pi * 27_000 / 28_000)), rel=1e-3)
  assert float(lr(27_999)) < 1e-9 and float(lr(28_000)) == 0
  # Without num_train_steps, the epochs decide.
  epochs = config_util.runlocal_config(None, num_epochs=2.5)
  assert training.state.total_train_steps(epochs, steps_per_epoch=8) == 20
  warm = config_util.runlocal_config(
      None, schedule='cosine', warmup_epochs=3.0, num_train_steps=200)
  with pytest.raises(ValueError, match=r'warmup_epochs=3\.0 is 300 steps'):
    training.state.create_learning_rate_fn(warm, steps_per_epoch=100,
                                           total_steps=200)


def test_centers_are_trained_and_checkpointed(finished_run, tiny_idx_dir):
  workdir, _ = finished_run
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  state = _abstract_state(tiny_idx_dir)
  batches = _training_batches(tiny_idx_dir)
  restored = checkpointing.restore_latest(manager, state,
                                          input_iterator=batches)
  assert int(restored.step) == 16
  # The input pipeline's grain state, saved beside the step.
  assert batches.get_state() == {
      'next_step': 16, 'epoch': 2, 'step_in_epoch': 0, 'steps_per_epoch': 8,
      'global_batch_size': 32, 'seed': 0}
  centers = np.asarray(restored.centers)
  assert centers.shape == (10, 2)
  assert np.abs(centers).max() > 0, 'centers never left their zero init'


def test_restore_into_an_eval_shape_target(finished_run, tiny_idx_dir):
  """`jax.eval_shape` of the state is a valid (and cheap) restore target."""
  workdir, _ = finished_run
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  state = _abstract_state(tiny_idx_dir)
  expected = checkpointing.restore_latest(manager, state)
  restored = checkpointing.restore_latest(
      manager, jax.eval_shape(lambda s: s, state))
  jax.tree.map(np.testing.assert_array_equal,
               jax.random.key_data(restored.rng),
               jax.random.key_data(expected.rng))
  jax.tree.map(np.testing.assert_array_equal,
               (restored.params, restored.centers, restored.opt_state),
               (expected.params, expected.centers, expected.opt_state))


def _training_batches(data_dir):
  """A fresh input pipeline of `_config`'s run (at step 0)."""
  config = _config(data_dir)
  reader = data.batching.BatchReader(
      training.trainer.load_dataset(config.input).train,
      global_batch_size=config.batch_size, seed=config.seed, shuffle=True,
      drop_remainder=True)
  return data.pipeline.TrainingBatches(reader, num_steps=16)


def _abstract_state(data_dir):
  config = _config(data_dir)
  return training.create_train_state(
      config, jax.random.key(0), image_shape=(28, 28, 1), num_classes=10,
      learning_rate_fn=training.state.create_learning_rate_fn(
          config, steps_per_epoch=8, total_steps=16))


def test_corrupt_latest_checkpoint_falls_back_to_previous(
    finished_run, tiny_idx_dir, tmp_path):
  workdir, _ = finished_run
  copy = tmp_path / 'checkpoints'
  shutil.copytree(os.path.join(workdir, 'checkpoints'), copy)
  # Overwrite every file of the latest step.
  for root, _, files in os.walk(copy / '16'):
    for name in files:
      with open(os.path.join(root, name), 'w') as f:
        f.write('garbage')
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  restored = checkpointing.restore_latest(
      manager, _abstract_state(tiny_idx_dir))
  assert int(restored.step) == 12


def test_non_finite_loss_stops_naming_the_step(tiny_idx_dir, tmp_path):
  config = _config(tiny_idx_dir, learning_rate=1e12, num_epochs=1.0,
                   checkpoint_every_steps=2)
  with pytest.raises(training.trainer.NonFiniteLossError, match=r'at step \d+'):
    training.train_and_evaluate(config, str(tmp_path))
  # Whatever was saved before the blow-up is finite.
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  restored = checkpointing.restore_latest(manager,
                                          _abstract_state(tiny_idx_dir))
  if restored is not None:
    for leaf in jax.tree.leaves(restored.params):
      assert np.all(np.isfinite(leaf))


def _main_command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'centerloss_jax.main',
          '--config=configs/default.py:runlocal',
          f'--config.input.data_dir={data_dir}', f'--workdir={workdir}',
          '--config.num_epochs=6', *extra]


def _latest_checkpoint(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return 0
  return max([int(s) for s in os.listdir(directory) if s.isdigit()] or [0])


def _run_until_checkpoint_then(sig, data_dir, workdir, min_step, *extra):
  """Starts main, sends `sig` once a checkpoint >= min_step exists.

  Returns the exit code, once the run and every process it started (input
  pipeline workers) have ended.
  """
  process = subprocess.Popen(_main_command(data_dir, workdir, *extra),
                             cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  try:
    while _latest_checkpoint(workdir) < min_step:
      assert process.poll() is None, 'run ended before it could be stopped'
      assert time.time() < deadline, 'no checkpoint within 180 s'
      time.sleep(0.2)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sig)
    code = process.wait(timeout=120)
    # Even a SIGKILLed run leaves no worker behind (they watch their parent).
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f'processes left running after {sig!r}: {alive}'
    return code
  finally:
    if process.poll() is None:
      process.kill()


def _final_state(workdir, data_dir):
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  return checkpointing.restore_latest(manager, _abstract_state(data_dir))


def test_preempted_then_killed_run_resumes_to_the_same_result(
    tiny_idx_dir, tmp_path):
  """SIGTERM (preemption), rerun, SIGKILL mid-run, rerun: same result as an
  uninterrupted run, though each part runs another input pipeline (no
  threads, 2 worker processes, 1 thread): the input state is the step."""
  num_steps = 6 * 8
  reference = str(tmp_path / 'reference')
  subprocess.run(_main_command(tiny_idx_dir, reference), cwd=REPO_ROOT,
                 check=True, capture_output=True, timeout=300)

  interrupted = str(tmp_path / 'interrupted')
  returncode = _run_until_checkpoint_then(signal.SIGTERM, tiny_idx_dir,
                                          interrupted, 8,
                                          '--config.pipeline.num_threads=0')
  assert returncode == 143, 'SIGTERM should save, then exit 143 (preempted)'
  preempted_at = _latest_checkpoint(interrupted)
  assert preempted_at < num_steps
  # The resumed run is killed after its next checkpoint (every 4 steps).
  _run_until_checkpoint_then(signal.SIGKILL, tiny_idx_dir, interrupted,
                             preempted_at + 4,
                             '--config.pipeline.num_workers=2')
  killed_at = _latest_checkpoint(interrupted)
  assert preempted_at < killed_at < num_steps
  # Each checkpoint holds the input pipeline's grain state at its step.
  steps = [name for name in os.listdir(os.path.join(interrupted,
                                                    'checkpoints'))
           if name.isdigit()]  # Not a save the SIGKILL cut short.
  for step in steps:
    with open(os.path.join(interrupted, 'checkpoints', step, 'input',
                           'process_0-of-1.json')) as f:
      assert json.load(f)['next_step'] == int(step)

  final_run = subprocess.run(_main_command(tiny_idx_dir, interrupted),
                             cwd=REPO_ROOT, check=True, capture_output=True,
                             text=True, timeout=300)
  # The resume took its data position from that state.
  assert f"input at {{'next_step': {killed_at}," in final_run.stderr
  expected = _final_state(reference, tiny_idx_dir)
  resumed = _final_state(interrupted, tiny_idx_dir)
  assert int(expected.step) == int(resumed.step) == num_steps
  np.testing.assert_allclose(resumed.centers, expected.centers, rtol=1e-6,
                             atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-6, atol=1e-7), resumed.params, expected.params)
