"""Fault injection: the run as a cluster scheduler and a busy lab meet it.

Each case starts its own `python -m centerloss_jax.main` processes on the
tiny runlocal config (a checkpoint every 4 steps), injects one fault, and
checks what an operator sees: the exit code, the last line of stderr, how
long it took, and what is left in the workdir. Every process runs under a
hard timeout and is killed at the end of its test; the long-lived ones
share runs (one run is preempted, then refused, then resumed).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import config_util
import repo_paths
from centerloss_jax import data
from centerloss_jax import training
from centerloss_jax.training import checkpointing
from centerloss_jax.training import run_config

SETPRIV = '/usr/bin/setpriv'
TIMEOUT = 120  # Seconds any one process may take, hang or not.


def _command(data_dir, workdir, *flags):
  return [sys.executable, '-m', 'centerloss_jax.main',
          '--config=configs/default.py:runlocal',
          f'--config.input.data_dir={data_dir}',
          '--config.checkpoint_every_steps=4', f'--workdir={workdir}',
          *flags]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')


def _run(command):
  """Runs to the end (or TIMEOUT); returns (returncode, stderr, seconds)."""
  start = time.monotonic()
  result = subprocess.run(command, cwd=repo_paths.REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
  return result.returncode, result.stderr, time.monotonic() - start


def _last_line(text):
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def _wait_for_checkpoint(process, workdir, step):
  """Waits until `process` has saved `step` in `workdir`; fails if it dies."""
  deadline = time.monotonic() + TIMEOUT
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', str(step))):
    assert process.poll() is None, process.stderr.read()
    assert time.monotonic() < deadline, 'no checkpoint in time'
    time.sleep(0.2)


class _LongRun:
  """A run of many steps in the background, killed on exit whatever happens."""

  def __init__(self, data_dir, workdir):
    self.workdir = workdir
    self.process = subprocess.Popen(
        _command(data_dir, workdir, '--config.num_train_steps=100000'),
        cwd=repo_paths.REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)

  def wait_for_checkpoint(self, step=8):
    _wait_for_checkpoint(self.process, self.workdir, step)

  def stop(self, signum):
    self.process.send_signal(signum)
    _, stderr = self.process.communicate(timeout=TIMEOUT)
    return self.process.returncode, stderr

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()


def _checkpoint_steps(workdir):
  return sorted(int(name) for name in os.listdir(
      os.path.join(workdir, 'checkpoints')) if name.isdigit())


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


# --- preemption, the workdir lock, resume ---------------------------------


def test_preempted_run_exits_143_is_locked_while_alive_and_resumes(
    tiny_idx_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  with _LongRun(tiny_idx_dir, workdir) as run:
    run.wait_for_checkpoint()
    # A second run on the live workdir is refused, and quickly.
    code, stderr, _ = _run(_command(tiny_idx_dir, workdir))
    assert code == 1
    assert 'WorkdirInUseError' in _last_line(stderr)
    assert f'pid {run.process.pid}' in _last_line(stderr)
    code, stderr = run.stop(signal.SIGTERM)
  assert code == 143, stderr[-2000:]
  assert 'preempted at step' in _last_line(stderr)
  preempted_at = int(_last_line(stderr).split('preempted at step ')[1]
                     .split()[0])
  assert preempted_at in _checkpoint_steps(workdir)

  # The rerun resumes from the preemption's checkpoint and finishes; its
  # shorter run is a trajectory change, allowed explicitly.
  resume = _command(tiny_idx_dir, workdir,
                    f'--config.num_train_steps={preempted_at + 8}',
                    '--allow_config_change')
  code, stderr, _ = _run(resume)
  assert code == 0, stderr[-2000:]
  assert _checkpoint_steps(workdir)[-1] == preempted_at + 8
  records = _records(workdir)
  per_record = [(r['step'], sorted({k.split('/')[0] for k in r
                                    if k != 'step'})) for r in records]
  flat = [(step, split) for step, splits in per_record for split in splits]
  assert len(flat) == len(set(flat)), per_record
  # A rerun of the finished run adds no record.
  code, _, _ = _run(resume)
  assert code == 0
  assert _records(workdir) == records


def test_sigint_saves_like_sigterm_and_a_killed_run_leaves_no_stuck_lock(
    tiny_idx_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  with _LongRun(tiny_idx_dir, workdir) as run:
    run.wait_for_checkpoint()
    code, stderr = run.stop(signal.SIGINT)
  assert code == 130, stderr[-2000:]
  assert 'SIGINT received: preempted at step' in _last_line(stderr)

  with _LongRun(tiny_idx_dir, workdir) as run:
    run.wait_for_checkpoint(step=max(_checkpoint_steps(workdir)) + 4)
    code, _ = run.stop(signal.SIGKILL)
  assert code == -signal.SIGKILL
  # The kernel dropped the dead run's lock: the next run gets past it, and
  # is stopped by the next guard, the changed config.
  code, stderr, seconds = _run(_command(tiny_idx_dir, workdir,
                                        '--config.center_loss.weight=0.1'))
  assert code == 1
  assert 'ConfigChangedError' in _last_line(stderr)
  assert 'center_loss.weight: 0.01 -> 0.1' in _last_line(stderr)
  assert seconds < 60


# --- failed writes end the process, fast ----------------------------------


def _with_file_size_limit(command, limit_bytes):
  """`command` (python -m ...) with writes past `limit_bytes` failing.

  A full disk, as the process sees it: such writes fail with EFBIG instead
  of killing the process with SIGXFSZ. Set in the child itself, not by a
  `preexec_fn` (a fork of this multithreaded JAX process could deadlock).
  """
  python, _, module, *args = command
  setup = ('import resource, runpy, signal, sys; '
           'signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
           f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, '
           f'{limit_bytes})); sys.argv = [{module!r}] + sys.argv[1:]; '
           f'runpy.run_module({module!r}, run_name="__main__")')
  return [python, '-c', setup, *args]


def test_disk_full_while_running_exits_nonzero_within_seconds(
    tiny_idx_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  code, stderr, seconds = _run(
      _with_file_size_limit(_command(tiny_idx_dir, workdir), 20_000))
  assert code == 1, stderr[-2000:]
  assert _last_line(stderr).startswith('error: '), stderr[-2000:]
  # The first write past the limit: a checkpoint's (TensorStore names the
  # file it failed writing) or a log's (the OS's "File too large").
  assert ('Failed writing' in _last_line(stderr)
          or 'File too large' in _last_line(stderr)), _last_line(stderr)
  assert seconds < 60


def test_read_only_checkpoints_fail_in_seconds(tiny_idx_dir, tmp_path):
  # Root ignores permission bits through its DAC capabilities: as root (CI),
  # the run keeps its uid (it reads the checkout and its venv, wherever they
  # are) but starts without those capabilities, so the bits bind it too.
  prefix = []
  if os.geteuid() == 0:
    assert os.path.exists(SETPRIV), (
        f'{SETPRIV} (util-linux) is needed to drop root\'s permission '
        'override for this test')
    dropped = '-dac_override,-dac_read_search,-fowner'
    prefix = [SETPRIV, f'--bounding-set={dropped}', f'--inh-caps={dropped}']
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'checkpoints').chmod(0o555)
  start = time.monotonic()
  result = subprocess.run(prefix + _command(tiny_idx_dir, str(workdir)),
                          cwd=repo_paths.REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
  seconds = time.monotonic() - start
  (workdir / 'checkpoints').chmod(0o755)
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'PermissionError: Cannot write into' in _last_line(result.stderr)
  assert seconds < 60


def test_checkpoints_that_is_a_file_fails_before_any_work(tiny_idx_dir,
                                                          tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('not a directory')
  config = config_util.runlocal_config(tiny_idx_dir)
  with pytest.raises(NotADirectoryError, match='checkpoints exists and is '
                     'not a directory'):
    training.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['checkpoints']


def test_a_crashing_evaluation_keeps_the_steps_checkpoint(
    tiny_idx_dir, tmp_path, monkeypatch):
  def crash(*args, **kwargs):
    del args, kwargs
    raise OSError('a corrupt test image')

  monkeypatch.setattr(training.trainer, '_evaluate_and_write', crash)
  config = config_util.runlocal_config(tiny_idx_dir, checkpoint_every_steps=4)
  with pytest.raises(OSError, match='corrupt test image'):
    training.train_and_evaluate(config, str(tmp_path))
  # The first evaluation is at the end of epoch 1, step 8: saved before.
  assert _checkpoint_steps(str(tmp_path)) == [4, 8]


def test_a_non_finite_test_loss_stops_before_its_record_is_written(
    tiny_idx_dir, tmp_path, monkeypatch):
  def nan_metrics(*args, **kwargs):
    del args, kwargs
    return {'metrics': {'cross_entropy': float('nan'), 'center_loss': 0.0}}

  monkeypatch.setattr(training.trainer, 'evaluate_split', nan_metrics)
  config = config_util.runlocal_config(tiny_idx_dir)
  with pytest.raises(training.trainer.NonFiniteLossError,
                     match='Non-finite test cross_entropy .* at step 8'):
    training.train_and_evaluate(config, str(tmp_path))
  assert not [r for r in _records(str(tmp_path))
              if any(key.startswith('test/') for key in r)]
  assert 8 in _checkpoint_steps(str(tmp_path))   # Saved before evaluating.


# --- bad values, before anything is created --------------------------------


@pytest.mark.parametrize('field,value,message', [
    ('center_loss.alpha', -0.5, r'alpha .*\[0, 1\].*-0.5'),
    ('center_loss.alpha', 1.5, r'alpha .*\[0, 1\].*1.5'),
    ('center_loss.weight', -0.01, r'center_loss.weight must be .*-0.01'),
    ('learning_rate', -0.01, r'learning_rate must be .* > 0.*-0.01'),
    ('num_epochs', 0.0, r'num_epochs must be > 0'),
    ('num_epochs', -1.0, r'num_epochs must be > 0.*-1'),
    ('checkpoint_every_steps', 0, r'checkpoint_every_steps must be an '
     r'integer >= 1, got 0'),
    ('log_every_steps', 0, r'log_every_steps must be an integer >= 1'),
    ('grad_clip_norm', 0.0, r'grad_clip_norm must be None .* > 0, got 0.0'),
])
def test_bad_values_are_refused_before_the_workdir_is_touched(
    tiny_idx_dir, tmp_path, field, value, message):
  config = config_util.runlocal_config(tiny_idx_dir, **{field: value})
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_empty_workdir_and_a_name_that_is_not_the_data_are_refused(
    tiny_idx_dir, tmp_path):
  config = config_util.runlocal_config(tiny_idx_dir)
  with pytest.raises(ValueError, match='empty path'):
    training.train_and_evaluate(config, '')
  config = config_util.runlocal_config(None, **{'input.name': 'cifar10'})
  with pytest.raises(ValueError, match=r"'cifar10'.*data_dir"):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_an_unknown_config_field_is_named(tiny_idx_dir, tmp_path):
  code, stderr, _ = _run(_command(tiny_idx_dir, str(tmp_path / 'run'),
                                  '--config.model.stage_channel=(4,8,8)'))
  assert code == 1
  # The whole path, and ml_collections' suggestion for a near miss.
  assert ("unknown config field 'model.stage_channel' (in "
          "--config.model.stage_channel=(4,8,8))") in stderr
  assert "did you mean 'stage_channels'?" in stderr
  assert not (tmp_path / 'run').exists()


def test_the_string_none_from_the_command_line_means_none(monkeypatch):
  # `--config.input.data_dir=None` sets a string field to 'None'.
  seen = {}
  monkeypatch.setattr(training.trainer.data, 'load_dataset',
                      lambda source, **kwargs: seen.update(kwargs))
  config = config_util.runlocal_config('None')
  training.trainer.load_dataset(config.input)
  assert seen['data_dir'] is None


def test_config_comparison_names_trajectory_fields_only():
  stored = {'learning_rate': 0.01, 'log_every_steps': 50,
            'model': {'name': 'lenet_pp'}, 'evaluation': {'pca_dim': None}}
  current = {'learning_rate': 0.1, 'log_every_steps': 5,
             'model': {'name': 'face_resnet'}, 'evaluation': {'pca_dim': 64},
             'center_loss': {'rule': 'paper'}}  # A field added since.
  assert run_config.config_changes(stored, current) == [
      "learning_rate: 0.01 -> 0.1", "model.name: 'lenet_pp' -> 'face_resnet'"]


def test_a_changed_schedule_or_length_is_refused_on_resume(tmp_path):
  config = config_util.runlocal_config(None)
  run_config.store_or_compare(str(tmp_path), config, allow_changes=False,
                              write=True)
  for field, value in (('schedule', 'cosine'), ('num_epochs', 4.0),
                       ('num_train_steps', 100), ('warmup_epochs', 0.5),
                       ('lr_boundaries', (8, 12))):
    changed = config_util.runlocal_config(None, **{field: value})
    with pytest.raises(run_config.ConfigChangedError,
                       match=rf'{field}: .* -> .*allow_config_change'):
      run_config.store_or_compare(str(tmp_path), changed,
                                  allow_changes=False, write=True)


def test_evaluation_may_change_evaluation_and_data_fields_only():
  stored = {'learning_rate': 0.01, 'batch_size': 128, 'parallel': 'jit',
            'model': {'feature_dim': 128},
            'evaluation': {'pca_dim': None},
            'input': {'pairs_dir': '/a', 'num_classes': 10,
                      'image_shape': [56, 48, 3]}}
  evaluation = {'learning_rate': 0.01, 'batch_size': 64,
                'parallel': 'shard_map', 'model': {'feature_dim': 128},
                'evaluation': {'pca_dim': 64},
                'input': {'pairs_dir': '/b', 'num_classes': 10,
                          'image_shape': [56, 48, 3]}}
  assert run_config.evaluation_changes(stored, evaluation) == []
  other = {'learning_rate': 0.1, 'model': {'feature_dim': 64},
           'input': {'num_classes': 12, 'image_shape': [112, 96, 3]}}
  assert run_config.evaluation_changes(stored, other) == [
      'input.image_shape: [56, 48, 3] -> [112, 96, 3]',
      'input.num_classes: 10 -> 12', 'learning_rate: 0.01 -> 0.1',
      'model.feature_dim: 128 -> 64']


# --- checkpoints: corrupt ones are detected, moved aside and replaced ------


def _tiny_state(value):
  return training.TrainState.create(
      apply_fn=None, params={'w': jnp.full((4, 3), value)},
      tx=optax.sgd(0.1), centers=jnp.full((5, 2), value),
      batch_stats={}, rng=jax.random.key(0))


def _saved_steps(tmp_path):
  manager = checkpointing.create_manager(str(tmp_path), max_to_keep=3)
  for step in (4, 8):
    checkpointing.save(manager, _tiny_state(float(step)), step=step,
                       input_iterator=_input_at(step))
  return manager


def _input_at(step, num_steps=100):
  """An input pipeline (grain iterator) standing at `step`."""
  split = data.Split(images=np.zeros((16, 2, 2, 1), np.uint8),
                     labels=np.zeros(16, np.int32), name='train')
  batches = data.pipeline.TrainingBatches(
      data.batching.BatchReader(split, global_batch_size=4, seed=0,
                                shuffle=True), num_steps=num_steps)
  batches.set_state({'next_step': step})
  return batches


def _tamper_with_fingerprint(manager, step, leaf):
  """Changes the stored fingerprint of the first leaf whose path has `leaf`:
  exactly what a silent change of that leaf's data looks like to the check."""
  path = os.path.join(manager.directory, str(step), 'integrity', 'metadata')
  with open(path) as f:
    stored = json.load(f)
  key = next(k for k in stored['fingerprint'] if leaf in k)
  stored['fingerprint'][key] ^= 1
  with open(path, 'w') as f:
    json.dump(stored, f)


def test_a_checkpoint_whose_data_changed_is_caught_by_its_fingerprint(
    tmp_path):
  manager = _saved_steps(tmp_path)
  _tamper_with_fingerprint(manager, 8, 'centers')
  batches = _input_at(0)
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  assert batches.next_step == 4
  np.testing.assert_array_equal(state.centers, 4.0)
  assert os.listdir(tmp_path / 'checkpoints_corrupt')[0].startswith('8-')
  # The step can be saved again when training reaches it.
  assert checkpointing.save(manager, _tiny_state(8.0), step=8,
                            input_iterator=_input_at(8))
  checkpointing.restore_latest(manager, _tiny_state(0.0),
                               input_iterator=batches)
  assert batches.next_step == 8


def test_a_run_made_shorter_than_its_checkpoint_resumes_past_its_end(
    tmp_path):
  manager = _saved_steps(tmp_path)
  batches = _input_at(0, num_steps=6)  # --allow_config_change, fewer steps.
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  np.testing.assert_array_equal(state.centers, 8.0)  # Not moved aside.
  assert batches.next_step == 8 and list(batches) == []
  assert not (tmp_path / 'checkpoints_corrupt').exists()


def test_an_input_state_of_another_process_layout_is_left_to_the_step(
    tmp_path, caplog):
  manager = _saved_steps(tmp_path)
  # What a run of 2 processes leaves: one state file per process.
  input_dir = os.path.join(manager.directory, '8', 'input')
  os.rename(os.path.join(input_dir, 'process_0-of-1.json'),
            os.path.join(input_dir, 'process_0-of-2.json'))
  batches = _input_at(0)
  state = checkpointing.restore_latest(manager, _tiny_state(0.0),
                                       input_iterator=batches)
  np.testing.assert_array_equal(state.centers, 8.0)  # The step is kept,
  assert batches.next_step == 0  # its input left for the caller to place,
  assert 'no input state for process 0 of 1' in caplog.text  # and said.


def test_checkpoints_of_another_model_are_refused_briefly_and_kept(
    tmp_path):
  manager = _saved_steps(tmp_path)
  other_model = _tiny_state(0.0).replace(centers=jnp.zeros((7, 2)))
  with pytest.raises(RuntimeError, match='another model or config') as error:
    checkpointing.restore_latest(manager, other_model)
  # One short line per step, not TensorStore's spec dumps.
  assert '\n' not in str(error.value) and len(str(error.value)) < 1000
  assert sorted(manager.all_steps()) == [4, 8]
  assert not (tmp_path / 'checkpoints_corrupt').exists()


def _inference_target(centers_shape=(5, 2)):
  # What evaluation restores into: no optimizer state, other shapes possible.
  return jax.eval_shape(lambda: training.TrainState.create(
      apply_fn=None, params={'w': jnp.zeros((4, 3))}, tx=optax.identity(),
      centers=jnp.zeros(centers_shape), batch_stats={},
      rng=jax.random.key(0)))


def test_weights_restore_without_the_optimizer_and_verified(tmp_path):
  manager = _saved_steps(tmp_path)
  weights = checkpointing.restore_latest_weights(manager, _inference_target())
  np.testing.assert_array_equal(weights.params['w'], 8.0)
  np.testing.assert_array_equal(weights.centers, 8.0)
  assert int(weights.step) == 0 and weights.opt_state == ()
  # A leaf whose data changed is caught; the previous step is used and
  # nothing is moved (evaluation only reads).
  _tamper_with_fingerprint(manager, 8, 'params')
  weights = checkpointing.restore_latest_weights(manager, _inference_target())
  np.testing.assert_array_equal(weights.params['w'], 4.0)
  assert sorted(manager.all_steps()) == [4, 8]
  # Another model's shapes: named leaf by leaf, both shapes given.
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"\['centers'\]: \(5, 2\) in the checkpoint, "
                     r"\(7, 2\) in this config's model"):
    checkpointing.restore_latest_weights(manager, _inference_target((7, 2)))


def test_fingerprint_changes_with_any_single_word():
  state = {'a': jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
           'b': jnp.ones((5,), jnp.bfloat16), 'c': jnp.array(7, jnp.int32)}
  reference = checkpointing.fingerprint(state)
  for name, flipped in (
      ('a', state['a'].at[2, 3].set(jnp.float32(-11.0))),
      ('a', jax.lax.bitcast_convert_type(
          jax.lax.bitcast_convert_type(state['a'], jnp.uint32).at[0, 0].add(
              2**31), jnp.float32)),
      ('b', state['b'].at[4].set(2.0)), ('c', jnp.array(8, jnp.int32))):
    changed = checkpointing.fingerprint({**state, name: flipped})
    assert changed[f"['{name}']"] != reference[f"['{name}']"], name


# --- the exit path ----------------------------------------------------------


def test_run_main_exit_codes():
  script = (
      'import signal, sys\n'
      'from centerloss_jax.training import lifecycle\n'
      'kind = sys.argv[1]\n'
      'def body():\n'
      '  if kind == "preempted":\n'
      '    raise lifecycle.Preempted(signal.SIGTERM, 12, "/w")\n'
      '  raise OSError(28, "No space left on device")\n'
      'lifecycle.run_main(body)\n')
  for kind, code, line in (
      ('preempted', 143, 'preempted at step 12'),
      ('failed', 1, 'error: OSError: [Errno 28] No space left on device')):
    result = subprocess.run([sys.executable, '-c', script, kind],
                            cwd=repo_paths.REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == code
    assert line in _last_line(result.stderr)


def test_a_driver_stops_at_a_preempted_run_and_publishes_nothing(
    tiny_idx_dir, tmp_path):
  root = tmp_path / 'sweep'
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.sweep',
       '--config=configs/default.py:runlocal',
       f'--config.input.data_dir={tiny_idx_dir}',
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=4',
       f'--workdir={root}', '--lambdas=0,0.1', '--alphas=0.5',
       '--alpha_sweep_lambda=0.1'],
      cwd=repo_paths.REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(process, str(root / 'lambda_0_alpha_0.5' / 'seed_0'),
                         4)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 143, stderr[-2000:]
  assert 'preempted at step' in _last_line(stderr)
  # The second run never started; no record, table, JSON or figure.
  assert sorted(os.listdir(root)) == ['lambda_0_alpha_0.5']
  assert os.listdir(root / 'lambda_0_alpha_0.5') == ['seed_0']
