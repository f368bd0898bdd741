"""A run's life on a shared cluster: preemption, one run per workdir, exits.

Schedulers stop jobs with SIGTERM (Ctrl-C sends SIGINT); busy labs start two
runs on one workdir; disks fill up. What this module guarantees:

* `PreemptionSignals`: SIGTERM and SIGINT only set a flag; the training loop
  saves a checkpoint at the next step and raises `Preempted`, so a preempted
  run never looks finished.
* `WorkdirLock`: an exclusive `flock` on `<workdir>/.lock`, held for the whole
  run. A second run on a live workdir is refused; the kernel drops the lock
  when its process dies, so a crashed or killed run never leaves it stuck.
* `run_main`: the entry points' one exit path. A preempted run exits
  `128 + signal` (143 for SIGTERM, 130 for SIGINT), any other failure exits
  1, each with a one-line reason on stderr, and both through `os._exit` after
  flushing, so that threads a failed write left blocked (Orbax's, the
  TensorBoard writer's) cannot keep the process alive.
* `close_within`: a bounded-time close for those same writers.
"""

from __future__ import annotations

import fcntl
import logging as std_logging
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from absl import flags
from absl import logging

LOCK_FILE = '.lock'
EXIT_FAILURE = 1


class Preempted(Exception):
  """Training stopped early on a signal, after saving a checkpoint."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step, self.workdir = signum, step, workdir
    super().__init__(
        f'{signal.Signals(signum).name} received: preempted at step {step} '
        f'with a checkpoint in {workdir}; rerun the same command to resume.')

  @property
  def exit_code(self) -> int:
    """The shell's convention for death by a signal: 128 + its number."""
    return 128 + self.signum


class PreemptionSignals:
  """Turns SIGTERM and SIGINT into a flag, for the duration of a `with`.

  Only the main thread may install handlers; elsewhere (a test runner's
  worker thread) the signals keep their handlers and `received` stays None.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is None:
      logging.warning('%s received: stopping after this step.',
                      signal.Signals(signum).name)
    self.received = signum

  def __enter__(self) -> PreemptionSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir's lock."""


class WorkdirLock:
  """An exclusive, non-blocking `flock` on `<workdir>/.lock`.

  The lock file keeps the holder's host, pid and start time, for the
  message a second run gets; the lock itself is the kernel's, released when
  the holder's process ends however it ends.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def __enter__(self) -> WorkdirLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors='replace').strip()
      os.close(fd)
      raise WorkdirInUseError(
          f'The workdir {os.path.dirname(self.path)} is in use by another '
          f'run ({holder or "holder unknown"}); wait for it to end or pass '
          'another --workdir.') from None
    os.ftruncate(fd, 0)
    os.write(fd, (f'host {socket.gethostname()}, pid {os.getpid()}, since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode())
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def close_within(seconds: float, close: Callable[[], Any],
                 what: str) -> None:
  """Calls `close()`, giving up (with a warning) after `seconds`.

  A writer whose background thread died on a failed write (disk full, a
  read-only directory) can block forever in its close; the caller is
  already on its way out with the real error, which must not wait on it.
  """
  errors = []

  def target():
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  thread = threading.Thread(target=target, name=f'close {what}', daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    logging.warning('Could not close the %s within %g s; leaving it.', what,
                    seconds)
  elif errors:
    logging.warning('Closing the %s failed: %s: %s', what,
                    type(errors[0]).__name__, errors[0])


def _flush_and_exit(code: int) -> None:
  for handler in std_logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def run_main(main: Callable[[], Any]) -> Any:
  """Runs an entry point's body; on failure, exits at once with a reason.

  Returns `main()`'s result when it succeeds. A `Preempted` run exits
  `128 + signal`; any other exception is logged with its traceback and
  exits 1 with `error: <type>: <message>` as the last line on stderr.
  """
  try:
    return main()
  except Preempted as preempted:
    print(f'Preempted: {preempted}', file=sys.stderr)
    _flush_and_exit(preempted.exit_code)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop.
    print('Interrupted (SIGINT) before training started or after it ended.',
          file=sys.stderr)
    _flush_and_exit(128 + signal.SIGINT)
  except Exception as e:  # pylint: disable=broad-except
    logging.error('%s', traceback.format_exc())
    print(f'error: {one_line_reason(e)}', file=sys.stderr)
    _flush_and_exit(EXIT_FAILURE)


def parse_flags(argv: list[str], *,
                define_flags: Optional[Callable[[list[str]], Any]] = None
                ) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`.

  The same, except that an override of a config field the config does not
  have (`--config.lamda=0.1`, `--config.model.widths=...`) is reported as
  such, with its whole path and ml_collections' suggestion if it has one:
  ml_collections raises a bare `AttributeError: "'lamda'"` for it.

  Args:
    argv: the command line.
    define_flags: called with `argv` first, under the same error handling:
      for flags that depend on others (`evaluate` defines `--config` from
      `--workdir`'s stored config). It raises `flags.Error` to refuse.
  """
  try:
    if define_flags is not None:
      define_flags(argv)
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections' message (AttributeError for a field, KeyError for a
    # group): the quoted name, repr'd once or twice, and
    # for a near miss 'Did you mean "..."'.
    name = re.search(r'\w+', str(e))
    field, flag = _unknown_config_field(name.group() if name else str(e),
                                        argv)
    reason = (f'unknown config field {field!r} (in {flag}): the config '
              'defines no such field')
    suggestion = re.search(r'Did you mean "(\w+)"', str(e))
    if suggestion:
      reason += f'; did you mean {suggestion.group(1)!r}?'
  except flags.Error as e:
    reason = str(e)
  print(f'FATAL Flags parsing error: {reason}\nPass --helpshort or '
        '--helpfull to see help on flags.', file=sys.stderr)
  sys.exit(EXIT_FAILURE)


def _unknown_config_field(name: str, argv: list[str]) -> tuple[str, str]:
  """(dotted path, flag as given) of the unknown field or group `name`."""
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      parts = arg[len('--config.'):].split('=')[0].split('.')
      if name in parts:
        return '.'.join(parts[:parts.index(name) + 1]), arg
  return name, f'--config.{name}=...'


def one_line_reason(error: BaseException, max_chars: int = 300) -> str:
  """`<type>: <first line of the message>`, cut to `max_chars`.

  Library errors (TensorStore's, Orbax's) can run to thousands of lines of
  spec dumps; the first line says what failed.
  """
  message = str(error).strip()
  first = message.splitlines()[0] if message else ''
  if len(first) > max_chars:
    first = first[:max_chars] + ' ...'
  return f'{type(error).__name__}: {first}'

