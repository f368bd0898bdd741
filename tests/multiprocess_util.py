"""Starts the processes of a test (a CLI run, a multi-process JAX run) and
waits, bounded.

Every process runs under a hard deadline and is killed when its `with`
block ends, whatever happened, so a hung collective or a run that never
stops cannot hang the test suite.
"""

import os
import socket
import subprocess
import tempfile
import threading
import time


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def env_without_device_count(**overrides) -> dict:
  """This process's environment for a child that sets its own device count:
  XLA_FLAGS without the fake device count (conftest.py's 8), every other XLA
  flag of the session kept; then `overrides`."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(
      flag for flag in env.get('XLA_FLAGS', '').split()
      if not flag.startswith(DEVICE_COUNT_FLAG))
  env.update(overrides)
  return env


def last_line(text: str) -> str:
  """The last non-blank line of a process's output ('' if none): where the
  entry points put their one-line reason."""
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ''


class Child:
  """One command running in the background, `timeout` seconds at most.

  A timer kills it at its deadline, whether or not anyone waits for it then;
  leaving the `with` block kills it if it is still running. Its output goes
  to temporary files, not pipes: a pipe nobody reads while the process runs
  could fill and block it.
  """

  def __init__(self, command, *, timeout, env=None, cwd=None,
               merge_output=False):
    self.deadline = time.monotonic() + timeout
    self._stdout = tempfile.TemporaryFile('w+')
    self._stderr = self._stdout if merge_output else tempfile.TemporaryFile(
        'w+')
    self.process = subprocess.Popen(command, env=env, cwd=cwd,
                                    stdout=self._stdout, stderr=self._stderr,
                                    text=True)
    self.expired = False
    self._timer = threading.Timer(timeout, self._expire)
    self._timer.daemon = True
    self._timer.start()

  def _expire(self) -> None:
    if self.process.poll() is None:
      self.expired = True
      self.kill()

  @property
  def pid(self) -> int:
    return self.process.pid

  def seconds_left(self) -> float:
    return max(0.0, self.deadline - time.monotonic())

  def wait(self) -> int:
    """The exit code; fails the test if the deadline ended the process."""
    code = self.process.wait()  # The timer ends it at the deadline.
    assert not self.expired, (
        f'{self.process.args[:4]}... killed at its deadline:\n'
        f'{self.stderr()[-2000:]}')
    return code

  def wait_until(self, condition, what: str) -> None:
    """Polls `condition()` while the process runs; fails if it ends first
    or the deadline passes."""
    while not condition():
      assert self.process.poll() is None, (
          f'ended (exit {self.process.returncode}) before {what}:\n'
          f'{self.stderr()[-2000:]}')
      assert time.monotonic() < self.deadline, f'no {what} in time'
      time.sleep(0.2)

  def stop(self, signum) -> int:
    """Sends `signum`; the exit code once the process has ended."""
    self.process.send_signal(signum)
    return self.wait()

  def stdout(self) -> str:
    self._stdout.seek(0)
    return self._stdout.read()

  def stderr(self) -> str:
    self._stderr.seek(0)
    return self._stderr.read()

  def kill(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._timer.cancel()
    self.kill()
    self._stdout.close()
    self._stderr.close()


class Processes:
  """Commands started together (the processes of one JAX run), each
  killed on leaving the `with` block if still running."""

  def __init__(self, commands, *, pythonpath, timeout=240):
    # Each worker sets its own device count.
    env = env_without_device_count()
    env['PYTHONPATH'] = os.pathsep.join(
        list(pythonpath) + [env.get('PYTHONPATH', '')])
    self.children = [Child(command, timeout=timeout, env=env,
                           merge_output=True) for command in commands]

  def wait(self) -> None:
    """Asserts that each process exits 0 before the deadline."""
    for i, child in enumerate(self.children):
      code = child.wait()
      assert code == 0, f'process {i} failed:\n{child.stdout()[-3000:]}'

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    for child in self.children:
      child.__exit__(*exc_info)


def run_processes(commands, *, pythonpath, timeout=240):
  """Runs the commands concurrently; asserts each exits 0 within `timeout`.

  Processes still running after the timeout are killed, so a hung collective
  cannot hang the test suite. The fake device count is dropped from
  XLA_FLAGS: each worker sets its own.
  """
  with Processes(commands, pythonpath=pythonpath, timeout=timeout) as started:
    started.wait()
