"""The package's layers: imports point down, never up, never in a circle.

Every import statement of every module of `centerloss_jax` is read from its
source (those inside functions too), so a new module or import that breaks
the layering fails here, naming the file, the line and the rule. The rules
are the layering table of docs/architecture.md, parsed from that page, so
the two cannot drift apart.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

import repo_paths

PACKAGE = 'centerloss_jax'
PACKAGE_DIR = os.path.join(repo_paths.REPO_ROOT, PACKAGE)
LAYOUT_PAGE = os.path.join(repo_paths.REPO_ROOT, 'docs', 'architecture.md')

# Third-party packages a layer must not import (at any depth): the data and
# metrics layers stay numpy-only, the loss core stays free of Flax and of
# everything on the training side.
FORBIDDEN_THIRD_PARTY = {
    'losses': {'flax', 'orbax', 'tensorflow_datasets', 'matplotlib', 'clu',
               'tensorboardX', 'PIL', 'ml_collections'},
    'data': {'jax', 'flax', 'optax', 'orbax', 'matplotlib', 'clu'},
    'metrics': {'jax', 'flax', 'optax', 'orbax', 'matplotlib', 'clu', 'PIL'},
}

# What `import centerloss_jax` (the loss core) must not load.
TRAINING_SIDE = ('tensorflow_datasets', 'orbax', 'matplotlib', 'tensorboardX',
                 'clu', 'PIL', 'ml_collections', 'grain')


def _layering_table() -> dict[str, set[str]]:
  """{layer: the layers it may import} from the docs' layering table."""
  with open(LAYOUT_PAGE) as f:
    text = f.read()
  section = text[text.index('## Layering'):]
  rules = {}
  for line in section.splitlines()[1:]:
    if line.startswith('#'):
      break
    match = re.match(r'\|\s*`([\w.]+)`\s*\|([^|]*)\|', line)
    if match:
      rules[match[1]] = set(re.findall(r'`([\w.]+)`', match[2]))
  assert rules, 'docs/architecture.md has no layering table under "## Layering".'
  return rules


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module of the package."""
  found = {}
  for directory, _, files in os.walk(PACKAGE_DIR):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, repo_paths.REPO_ROOT)[:-3]
        parts = relative.split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        found['.'.join(parts)] = path
  return found


MODULES = _modules()


def _layer(module: str) -> str:
  """`centerloss_jax.training.steps` -> 'training'; the root -> '__init__'."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def _imports(path: str):
  """(imported module, line, at module level) of every import in a file."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level:
      # Relative: flagged by its own test (absolute imports only here).
      names = ['.' * node.level + (node.module or '')]
    elif isinstance(node, ast.ImportFrom):
      # `from a.b import c` imports a.b, or the module a.b.c if c is one.
      names = [f'{node.module}.{alias.name}'
               if f'{node.module}.{alias.name}' in MODULES else node.module
               for alias in node.names]
    else:
      continue
    for name in names:
      yield name, node.lineno, id(node) in top_level


def _edges():
  """(importer, imported, where) for imports of the package by itself."""
  for module, path in sorted(MODULES.items()):
    for name, line, top in _imports(path):
      if name == PACKAGE or name.startswith(PACKAGE + '.'):
        yield module, name, f'{os.path.relpath(path, repo_paths.REPO_ROOT)}:{line}', top


def test_every_layer_is_in_the_readme_table():
  rules = _layering_table()
  layers = {_layer(module) for module in MODULES}
  assert layers == set(rules), (
      f'The layering table of docs/architecture.md lists {sorted(rules)}, the package has '
      f'{sorted(layers)}: add new layers to the table (and remove old ones).')


def test_imports_point_only_down():
  rules = _layering_table()
  upward = [
      f'{where}: {_layer(importer)} imports {_layer(imported)} ({imported}); '
      f'allowed: {sorted(rules[_layer(importer)]) or "none"}'
      for importer, imported, where, _ in _edges()
      if _layer(imported) != _layer(importer)
      and _layer(imported) not in rules[_layer(importer)]]
  assert not upward, 'Imports against the layering:\n' + '\n'.join(upward)


def test_no_import_of_the_package_inside_a_function():
  nested = [f'{where}: {imported}'
            for _, imported, where, top in _edges() if not top]
  assert not nested, ('Imports of the package below module level (import '
                      'at the top, or move the code):\n' + '\n'.join(nested))


def test_imports_are_absolute():
  relative = [f'{os.path.relpath(path, repo_paths.REPO_ROOT)}:{line}: {name}'
              for path in MODULES.values()
              for name, line, _ in _imports(path) if name.startswith('.')]
  assert not relative, 'Relative imports:\n' + '\n'.join(relative)


def test_no_module_imports_its_own_package():
  """A submodule importing its package's `__init__` is a cycle Python
  resolves only by luck of the import order."""
  inward = [f'{where}: {importer} imports {imported}'
            for importer, imported, where, _ in _edges()
            if importer.startswith(imported + '.')]
  assert not inward, 'Imports of an enclosing package:\n' + '\n'.join(inward)


def test_no_import_cycle():
  graph = {module: set() for module in MODULES}
  for importer, imported, _, _ in _edges():
    if imported in graph and imported != importer:
      graph[importer].add(imported)
  state, cycles = {}, []

  def visit(module, stack):
    state[module] = 'active'
    for imported in sorted(graph[module]):
      if state.get(imported) == 'active':
        cycles.append(' -> '.join(stack[stack.index(imported):] + [imported]))
      elif imported not in state:
        visit(imported, stack + [imported])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, 'Import cycles:\n' + '\n'.join(cycles)


@pytest.mark.parametrize('layer', sorted(FORBIDDEN_THIRD_PARTY))
def test_layer_keeps_to_its_dependencies(layer):
  bad = []
  for module, path in sorted(MODULES.items()):
    if _layer(module) != layer:
      continue
    for name, line, _ in _imports(path):
      if name.split('.')[0] in FORBIDDEN_THIRD_PARTY[layer]:
        bad.append(f'{os.path.relpath(path, repo_paths.REPO_ROOT)}:{line}: '
                   f'{name}')
  assert not bad, f'{layer} must not import these:\n' + '\n'.join(bad)


@pytest.mark.parametrize('statement', [
    'import centerloss_jax',
    'import centerloss_jax.linen, centerloss_jax.nnx',
])
def test_the_loss_core_imports_light(statement):
  """Users who only want the loss get jax and optax, not the trainer."""
  loaded = subprocess.run(
      [sys.executable, '-c',
       f'{statement}; import sys; print(" ".join(sorted(sys.modules)))'],
      capture_output=True, text=True, check=True, timeout=120,
      cwd=repo_paths.REPO_ROOT).stdout.split()
  top = {name.split('.')[0] for name in loaded}
  assert {'jax', 'optax'} <= top
  heavy = sorted(top & set(TRAINING_SIDE))
  assert not heavy, f'{statement} loads {heavy}'
  ours = sorted({name for name in loaded if name.startswith(PACKAGE + '.')
                 and _layer(name) not in ('losses', 'linen', 'nnx')})
  assert not ours, f'{statement} loads {ours}'
