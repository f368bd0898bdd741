"""What the notebook tests share: checks of the committed notebooks (their
outputs, written by `notebooks/execute.py`), and the parameters cell, which a
test rewrites to run a notebook at a tiny size."""

import ast

import nbclient
import nbformat

# Seconds per cell: generous for a loaded 2-core machine; a whole tiny run
# takes well under a minute.
CELL_TIMEOUT = 300


def cells_tagged(notebook, tag):
  """The notebook's cells carrying `tag` in their metadata."""
  return [cell for cell in notebook.cells
          if tag in cell.get('metadata', {}).get('tags', [])]


def parameter_values(source):
  """`{name: value}` of a cell made only of plain `NAME = constant` lines."""
  values = {}
  for statement in ast.parse(source).body:
    assert isinstance(statement, ast.Assign), (
        f'parameters cell must only assign constants, found '
        f'{ast.dump(statement)[:80]}')
    for target in statement.targets:
      assert isinstance(target, ast.Name), ast.dump(target)
      values[target.id] = ast.literal_eval(statement.value)
  return values


def committed_parameters(notebook):
  """The values of the notebook's `parameters` cell."""
  (cell,) = cells_tagged(notebook, 'parameters')
  return parameter_values(cell.source)


def png_count(cell):
  """How many image/png outputs the cell has."""
  return sum('image/png' in output.get('data', {})
             for output in cell.get('outputs', []))


def markdown_output(cell):
  """The text/markdown outputs of the cell, joined."""
  return ''.join(output.get('data', {}).get('text/markdown', '')
                 for output in cell.get('outputs', []))


def assert_no_errors(notebook):
  """No code cell has an error output."""
  for index, cell in enumerate(notebook.cells):
    for output in cell.get('outputs', []):
      assert output.output_type != 'error', f'cell {index}: {output}'


def assert_no_path_edits(notebook):
  """No code cell edits `sys.path` or changes the working directory: the
  notebooks import only installed packages."""
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type != 'code':
      continue
    for line in cell.source.splitlines():
      assert 'sys.path' not in line and 'chdir' not in line, (
          f'code cell {index} edits sys.path or the working directory: '
          f'{line!r}')


def assert_committed_with_outputs(notebook, figures):
  """The committed notebook as `notebooks/execute.py` writes it.

  Valid nbformat; every code cell executed once, in order (execution counts
  1, 2, 3, ...), without an error; the cells tagged in `figures` hold that
  many image/png outputs each; no timing metadata; no cell edits
  `sys.path`.

  Args:
    notebook: the committed notebook.
    figures: `{tag: number of figures}` for the cells that show figures.
  """
  nbformat.validate(notebook)
  code_cells = [cell for cell in notebook.cells if cell.cell_type == 'code']
  counts = [cell.execution_count for cell in code_cells]
  assert counts == list(range(1, len(code_cells) + 1)), (
      f'execution counts {counts}: execute the notebook with '
      'notebooks/execute.py')
  assert_no_errors(notebook)
  for tag, count in figures.items():
    (cell,) = cells_tagged(notebook, tag)
    assert png_count(cell) == count, (
        f'cell {tag!r} holds {png_count(cell)} figures, expected {count}')
  for index, cell in enumerate(notebook.cells):
    assert 'execution' not in cell.metadata, (
        f'cell {index} has timing metadata')
  assert_no_path_edits(notebook)


def execute(notebook, workdir):
  """Runs `notebook` in place in a fresh `python3` kernel (the interpreter
  running the tests), with `workdir` as its working directory.

  Raises:
    nbclient.exceptions.CellExecutionError: a cell failed.
  """
  nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT, kernel_name='python3',
      resources={'metadata': {'path': str(workdir)}}).execute()


def assert_parameters_are(notebook, names):
  """One 'parameters' cell, assigning exactly `names`."""
  cells = cells_tagged(notebook, 'parameters')
  assert len(cells) == 1, 'exactly one cell tagged "parameters"'
  assert sorted(parameter_values(cells[0].source)) == sorted(names), (
      'the notebook\'s parameters and the tiny values the test sets differ')


def set_parameters(notebook, parameters):
  """Replaces the 'parameters' cell's source by `parameters`' values."""
  (cell,) = cells_tagged(notebook, 'parameters')
  cell.source = '\n'.join(f'{name} = {value!r}'
                          for name, value in parameters.items())
