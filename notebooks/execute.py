"""Executes the notebooks at their full size and writes them back with outputs.

Run from anywhere, with the interpreter that has `centerloss_jax` installed
(the notebooks' kernel is the `python3` kernel of this environment):

  .venv/bin/python notebooks/execute.py                     # every notebook
  .venv/bin/python notebooks/execute.py center_loss_tour    # only this one

Each named notebook (the file name in this folder, with or without
`.ipynb`) runs top to bottom in a fresh kernel with the values of its own
`parameters` cell, with a new temporary folder as its working directory
(removed afterwards), so a run leaves nothing in the repository but the
notebook itself. It is written back in place only if every cell ran without
an error; the execution counts are then 1, 2, 3, ... in cell order. Timing
metadata is not recorded and the kernel's version details are dropped, so
that re-executing a notebook changes only what its outputs show.

The tests (tests/notebooks/) run the notebooks at a tiny size and check the
committed outputs that this script writes.
"""

import argparse
import os
import sys
import tempfile
import time

import nbclient
import nbformat

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))


def notebook_names() -> list[str]:
  """The notebooks of this folder, without the `.ipynb` extension."""
  return sorted(name[:-len('.ipynb')] for name in os.listdir(NOTEBOOK_DIR)
                if name.endswith('.ipynb'))


def execute(path: str, *, timeout: int) -> None:
  """Runs the notebook at `path` in a fresh kernel and writes it back."""
  notebook = nbformat.read(path, as_version=4)
  with tempfile.TemporaryDirectory(prefix='notebook_run_') as workdir:
    nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name='python3',
        record_timing=False,
        resources={'metadata': {'path': workdir}}).execute()
  # The kernel's details (its Python version, ...) vary between machines.
  notebook.metadata['language_info'] = {'name': 'python'}
  nbformat.validate(notebook)
  temporary = path + '.tmp'
  nbformat.write(notebook, temporary)
  os.replace(temporary, path)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      'names', nargs='*', metavar='NAME',
      help=f'notebooks to run (default: all of {", ".join(notebook_names())})')
  parser.add_argument('--timeout', type=int, default=3600,
                      help='seconds allowed for one cell (default %(default)s)')
  args = parser.parse_args()
  names = [name.removesuffix('.ipynb') for name in args.names]
  unknown = sorted(set(names) - set(notebook_names()))
  if unknown:
    parser.error(f'no notebook {", ".join(unknown)} in {NOTEBOOK_DIR}')
  for name in names or notebook_names():
    path = os.path.join(NOTEBOOK_DIR, name + '.ipynb')
    print(f'{name}: executing ...', flush=True)
    start = time.perf_counter()
    execute(path, timeout=args.timeout)
    size = os.path.getsize(path) / 1e6
    print(f'{name}: done in {time.perf_counter() - start:.0f} s, '
          f'{size:.2f} MB written to {path}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
