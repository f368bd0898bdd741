"""What the notebook tests share: committed-clean checks and the parameters
cell, which a test rewrites to run a notebook at a tiny size."""

import ast

import nbformat


def cells_tagged(notebook, tag):
  """The notebook's cells carrying `tag` in their metadata."""
  return [cell for cell in notebook.cells
          if tag in cell.get('metadata', {}).get('tags', [])]


def parameter_names(source):
  """Names assigned by a cell made only of plain `NAME = value` lines."""
  names = []
  for statement in ast.parse(source).body:
    assert isinstance(statement, ast.Assign), (
        f'parameters cell must only assign constants, found '
        f'{ast.dump(statement)[:80]}')
    for target in statement.targets:
      assert isinstance(target, ast.Name), ast.dump(target)
      names.append(target.id)
  return names


def assert_committed_clean(notebook):
  """Valid nbformat, and no outputs or execution counts in code cells."""
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type != 'code':
      continue
    assert cell.outputs == [], f'code cell {index} has committed outputs'
    assert cell.execution_count is None, (
        f'code cell {index} has execution_count {cell.execution_count}')


def assert_parameters_are(notebook, names):
  """One 'parameters' cell, assigning exactly `names`."""
  cells = cells_tagged(notebook, 'parameters')
  assert len(cells) == 1, 'exactly one cell tagged "parameters"'
  assert sorted(parameter_names(cells[0].source)) == sorted(names), (
      'the notebook\'s parameters and the tiny values the test sets differ')


def set_parameters(notebook, parameters):
  """Replaces the 'parameters' cell's source by `parameters`' values."""
  (cell,) = cells_tagged(notebook, 'parameters')
  cell.source = '\n'.join(f'{name} = {value!r}'
                          for name, value in parameters.items())
