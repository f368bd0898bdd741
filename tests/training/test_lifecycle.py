"""A run's life on a shared cluster: preemption, the workdir lock, exit codes.

`python -m centerloss_jax.main` on the tiny runlocal config (a checkpoint
every 4 steps), as a cluster scheduler and a busy lab meet it: what an
operator sees is the exit code, the last line of stderr, how long it took
and what is left in the workdir.

One workdir lives through a whole sequence, made once by the `interrupted`
fixture, on whose observations most tests here assert:

1. a long run is stopped with SIGTERM once it has saved step 8, after a
   second run on its live workdir (paused meanwhile) was refused;
2. the rerun is stopped with SIGINT after its next checkpoint;
3. the next rerun, with two input worker processes, is killed (SIGKILL)
   after its next checkpoint;
4. a rerun with another center-loss weight gets past the dead run's lock
   and is refused by the config check;
5. a rerun made shorter, 48 steps (a trajectory change, allowed
   explicitly), finishes;
6. a rerun of the finished run.

Each part runs another input pipeline (no threads; one thread; two worker
processes), and the end is compared with an uninterrupted 48-step run: the
input state is the step. The long parts ask for 100,000 steps; the
learning rate is the same at every step either way (runlocal's first decay
is at step 5,000), so their 48 steps are the uninterrupted run's.

Every process runs under a hard timeout (`TIMEOUT`) and is killed when its
part ends, whatever happens.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

import config_util
import multiprocess_util
import repo_paths
from centerloss_jax import evaluate
from centerloss_jax import training

pytestmark = pytest.mark.slow

TIMEOUT = 120  # Seconds any one process may take, hang or not.
NUM_STEPS = 48  # The finished run's length: 6 epochs of 8 steps.
LONG = '--config.num_train_steps=100000'
KEEP_CHECKPOINTS = config_util.runlocal_config(None).keep_checkpoints


def _command(data_dir, workdir, *flags):
  return [sys.executable, '-m', 'centerloss_jax.main',
          '--config=configs/default.py:runlocal',
          f'--config.input.data_dir={data_dir}',
          '--config.checkpoint_every_steps=4', f'--workdir={workdir}',
          *flags]


def _env():
  # One CPU device, as a user's run on a laptop.
  return multiprocess_util.env_without_device_count(JAX_PLATFORMS='cpu')


def _run(command):
  """Runs to the end (or TIMEOUT); returns (returncode, stderr, seconds)."""
  start = time.monotonic()
  result = subprocess.run(command, cwd=repo_paths.REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
  return result.returncode, result.stderr, time.monotonic() - start


def _start(command):
  return multiprocess_util.Child(command, timeout=TIMEOUT, env=_env(),
                                 cwd=repo_paths.REPO_ROOT)


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _latest_checkpoint(workdir):
  return max(_checkpoint_steps(workdir) or [0])


def _input_states(workdir, steps):
  """{step: the input pipeline's state saved with it}."""
  states = {}
  for step in steps:
    with open(os.path.join(workdir, 'checkpoints', str(step), 'input',
                           'process_0-of-1.json')) as f:
      states[step] = json.load(f)
  return states


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _stop_after_checkpoint(run, workdir, min_step, signum, while_alive=None):
  """Once `run` has saved a step >= min_step: `while_alive()` (if given),
  then `signum`. Returns (exit code, stderr, the run's processes still alive
  15 s after it ended: its input workers watch their parent)."""
  run.wait_until(lambda: _latest_checkpoint(workdir) >= min_step,
                 f'checkpoint >= {min_step}')
  if while_alive is not None:
    while_alive()
  children = psutil.Process(run.pid).children(recursive=True)
  code = run.stop(signum)
  _, alive = psutil.wait_procs(children, timeout=15)
  return code, run.stderr(), alive


def _preempted_at(stderr):
  last = multiprocess_util.last_line(stderr)
  return int(last.split('preempted at step ')[1].split()[0])


@pytest.fixture(scope='module')
def interrupted(tiny_idx_dir, tmp_path_factory):
  """The module docstring's sequence, and an uninterrupted run beside it."""
  root = tmp_path_factory.mktemp('lifecycle')
  workdir, reference_dir = str(root / 'run'), str(root / 'reference')
  seen = {'workdir': workdir, 'reference': reference_dir}
  finish = (f'--config.num_train_steps={NUM_STEPS}', '--allow_config_change')
  with contextlib.ExitStack() as processes:
    first = processes.enter_context(_start(_command(
        tiny_idx_dir, workdir, LONG, '--config.pipeline.num_threads=0')))

    def second_run():
      # Started once the first run has compiled its steps (into the
      # session's compilation cache): the uninterrupted run.
      seen['reference_run'] = processes.enter_context(_start(_command(
          tiny_idx_dir, reference_dir,
          f'--config.num_train_steps={NUM_STEPS}')))
      # The live run is paused meanwhile (a stopped process holds its lock
      # like a running one), so that it does not run far ahead.
      first.process.send_signal(signal.SIGSTOP)
      try:
        seen['second_run'] = _run(_command(tiny_idx_dir, workdir))
      finally:
        first.process.send_signal(signal.SIGCONT)

    seen['sigterm'] = _stop_after_checkpoint(
        first, workdir, 8, signal.SIGTERM, while_alive=second_run)
    seen['sigterm_pid'] = first.pid
    seen['steps_after_sigterm'] = _checkpoint_steps(workdir)
    preempted_at = _preempted_at(seen['sigterm'][1])
    with _start(_command(tiny_idx_dir, workdir, LONG)) as run:
      seen['sigint'] = _stop_after_checkpoint(run, workdir, preempted_at + 4,
                                              signal.SIGINT)
    seen['steps_after_sigint'] = _checkpoint_steps(workdir)
    seen['input_states'] = _input_states(workdir, seen['steps_after_sigint'])
    with _start(_command(tiny_idx_dir, workdir, LONG,
                         '--config.pipeline.num_workers=2')) as run:
      seen['sigkill'] = _stop_after_checkpoint(
          run, workdir, _latest_checkpoint(workdir) + 4, signal.SIGKILL)
    seen['killed_at'] = _latest_checkpoint(workdir)
    # The steps the killed run keeps (not a save SIGKILL cut short, which
    # has no step name yet, nor an older step whose removal it cut short).
    seen['input_states'].update(_input_states(
        workdir, _checkpoint_steps(workdir)[-KEEP_CHECKPOINTS:]))
    seen['changed_config'] = _run(_command(
        tiny_idx_dir, workdir, '--config.center_loss.weight=0.1'))
    seen['finish'] = _run(_command(tiny_idx_dir, workdir, *finish))
    seen['steps_after_finish'] = _checkpoint_steps(workdir)
    seen['records'] = _records(workdir)
    seen['rerun'] = _run(_command(tiny_idx_dir, workdir, *finish))
    seen['records_after_rerun'] = _records(workdir)
    reference = seen.pop('reference_run')
    assert reference.wait() == 0, reference.stderr()[-2000:]
  return seen


def test_a_second_run_on_a_live_workdir_is_refused(interrupted):
  code, stderr, _ = interrupted['second_run']
  assert code == 1
  last = multiprocess_util.last_line(stderr)
  assert 'WorkdirInUseError' in last
  assert f'pid {interrupted["sigterm_pid"]}' in last


def test_sigterm_exits_143_after_saving_its_step(interrupted):
  code, stderr, _ = interrupted['sigterm']
  assert code == 143, stderr[-2000:]
  assert 'preempted at step' in multiprocess_util.last_line(stderr)
  preempted_at = _preempted_at(stderr)
  assert preempted_at in interrupted['steps_after_sigterm']
  assert preempted_at < NUM_STEPS


def test_sigint_exits_130_after_saving_like_sigterm(interrupted):
  code, stderr, _ = interrupted['sigint']
  assert code == 130, stderr[-2000:]
  assert ('SIGINT received: preempted at step'
          in multiprocess_util.last_line(stderr))
  assert _preempted_at(stderr) in interrupted['steps_after_sigint']


def test_sigkill_ends_the_run_where_it_is(interrupted):
  code, _, _ = interrupted['sigkill']
  assert code == -signal.SIGKILL
  assert (_preempted_at(interrupted['sigterm'][1]) < interrupted['killed_at']
          < NUM_STEPS)


@pytest.mark.parametrize('stop', ['sigterm', 'sigint', 'sigkill'])
def test_no_input_worker_outlives_its_run(interrupted, stop):
  _, _, alive = interrupted[stop]
  assert not alive, f'processes left running after {stop}: {alive}'


def test_a_killed_run_leaves_no_stuck_lock(interrupted):
  # The kernel dropped the dead run's lock: the next run gets past it, and
  # is stopped by the next guard, the changed config.
  code, stderr, seconds = interrupted['changed_config']
  assert code == 1
  last = multiprocess_util.last_line(stderr)
  assert 'ConfigChangedError' in last
  assert 'center_loss.weight: 0.01 -> 0.1' in last
  assert seconds < 60


def test_each_checkpoint_holds_the_input_state_of_its_step(interrupted):
  # Those of the parts stopped by SIGTERM, SIGINT and SIGKILL.
  assert interrupted['killed_at'] in interrupted['input_states']
  for step, state in interrupted['input_states'].items():
    assert state['next_step'] == step


def test_a_rerun_resumes_from_the_last_checkpoints_input_state(interrupted):
  code, stderr, _ = interrupted['finish']
  assert code == 0, stderr[-2000:]
  assert f"input at {{'next_step': {interrupted['killed_at']}," in stderr


def test_an_allowed_shorter_run_finishes_at_its_new_end(interrupted):
  assert interrupted['finish'][0] == 0
  assert interrupted['steps_after_finish'][-1] == NUM_STEPS


def test_an_interrupted_run_ends_with_the_uninterrupted_result(
    interrupted, tiny_idx_dir):
  config = config_util.runlocal_config(tiny_idx_dir)
  dataset = training.trainer.load_dataset(config.input)
  expected = evaluate.restore_checkpoint(config, interrupted['reference'],
                                         dataset)
  resumed = evaluate.restore_checkpoint(config, interrupted['workdir'],
                                        dataset)
  assert int(expected.step) == int(resumed.step) == NUM_STEPS
  np.testing.assert_allclose(resumed.centers, expected.centers, rtol=1e-6,
                             atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-6, atol=1e-7), resumed.params, expected.params)


def test_the_resumed_runs_keep_one_record_per_step_and_split(interrupted):
  records = interrupted['records']
  per_record = [(r['step'], sorted({k.split('/')[0] for k in r
                                    if k != 'step'})) for r in records]
  flat = [(step, split) for step, splits in per_record for split in splits]
  assert len(flat) == len(set(flat)), per_record


def test_a_rerun_of_a_finished_run_adds_no_record(interrupted):
  assert interrupted['rerun'][0] == 0
  assert interrupted['records_after_rerun'] == interrupted['records']


# --- failed writes end the process, fast --------------------------------------


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


def test_disk_full_while_running_exits_1_within_seconds(tiny_idx_dir,
                                                        tmp_path):
  workdir = str(tmp_path / 'run')
  code, stderr, seconds = _run(
      _with_file_size_limit(_command(tiny_idx_dir, workdir), 20_000))
  assert code == 1, stderr[-2000:]
  last = multiprocess_util.last_line(stderr)
  assert last.startswith('error: '), stderr[-2000:]
  # The first write past the limit: a checkpoint's (TensorStore names the
  # file it failed writing) or a log's (the OS's "File too large").
  assert 'Failed writing' in last or 'File too large' in last, last
  assert seconds < 60


SETPRIV = '/usr/bin/setpriv'


def test_read_only_checkpoints_exit_1_in_seconds(tiny_idx_dir, tmp_path):
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
  try:
    code, stderr, seconds = _run(prefix + _command(tiny_idx_dir,
                                                   str(workdir)))
  finally:
    (workdir / 'checkpoints').chmod(0o755)
  assert code == 1, stderr[-2000:]
  assert ('PermissionError: Cannot write into'
          in multiprocess_util.last_line(stderr))
  assert seconds < 60


# --- the command line and the exit path ---------------------------------------


def test_an_unknown_config_field_is_named_with_a_suggestion(tiny_idx_dir,
                                                            tmp_path):
  code, stderr, _ = _run(_command(tiny_idx_dir, str(tmp_path / 'run'),
                                  '--config.model.stage_channel=(4,8,8)'))
  assert code == 1
  # The whole path, and ml_collections' suggestion for a near miss.
  assert ("unknown config field 'model.stage_channel' (in "
          "--config.model.stage_channel=(4,8,8))") in stderr
  assert "did you mean 'stage_channels'?" in stderr
  assert not (tmp_path / 'run').exists()


_RUN_MAIN = (
    'import signal, sys\n'
    'from centerloss_jax.training import lifecycle\n'
    'kind = sys.argv[1]\n'
    'def body():\n'
    '  if kind == "preempted":\n'
    '    raise lifecycle.Preempted(signal.SIGTERM, 12, "/w")\n'
    '  raise OSError(28, "No space left on device")\n'
    'lifecycle.run_main(body)\n')


@pytest.mark.parametrize('kind,code,line', [
    ('preempted', 143, 'preempted at step 12'),
    ('failed', 1, 'error: OSError: [Errno 28] No space left on device'),
])
def test_run_main_exits_with_the_code_and_line_of_its_outcome(kind, code,
                                                              line):
  result = subprocess.run([sys.executable, '-c', _RUN_MAIN, kind],
                          cwd=repo_paths.REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == code
  assert line in multiprocess_util.last_line(result.stderr)
