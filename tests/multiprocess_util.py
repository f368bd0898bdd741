"""Starts the processes of a multi-process JAX test and waits, bounded."""

import os
import socket
import subprocess


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(commands, *, pythonpath, timeout=240):
  """Runs the commands concurrently; asserts each exits 0 within `timeout`.

  Processes still running after the timeout are killed, so a hung collective
  cannot hang the test suite. XLA_FLAGS is dropped from the environment: each
  worker sets its own device count.
  """
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = os.pathsep.join(
      list(pythonpath) + [env.get('PYTHONPATH', '')])
  processes = [
      subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
      for command in commands]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
