"""Sphinx configuration of the centerloss_jax documentation.

Build (offline, warnings are errors):

  pip install -c constraints.txt -e '.[docs]'
  sphinx-build -W -b html docs docs/_build/html

The results pages are made at build time from the committed run records in
`experiments/results/` by the study drivers themselves (`--report_only`:
they refuse to train), so no number there is pasted by hand. The notebooks
are rendered with their committed outputs, never executed here.
"""

import os
import pathlib
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # `experiments` and `configs` for the reports.

import centerloss_jax  # noqa: E402  (after the path: autodoc imports it too)

project = 'centerloss_jax'
author = 'The centerloss_jax authors'
copyright = 'The centerloss_jax authors'  # pylint: disable=redefined-builtin
release = centerloss_jax.__version__
version = release

extensions = [
    'myst_nb',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
]

# `_generated` holds the study reports, included by the results pages.
exclude_patterns = ['_build', '_generated', '**.ipynb_checkpoints']
templates_path = ['_templates']
# `name` in a docstring is code, as in Markdown.
default_role = 'code'

# Markdown and notebooks (myst-nb); notebooks keep their committed outputs.
# .rst first: autosummary writes its generated pages with the first suffix.
source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb', '.ipynb': 'myst-nb'}
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence']
myst_heading_anchors = 3
nb_execution_mode = 'off'

# API reference from the docstrings (Google style).
autosummary_generate = True
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # 'Attributes:' as fields: a dataclass field once.
# 'Returns:' as written: the docstrings describe what is returned in prose,
# which napoleon would otherwise split at its first colon into a type.
napoleon_custom_sections = ['Returns', 'Yields']
# A name re-exported by its package (`centerloss_jax.data.Split` is
# `centerloss_jax.data.types.Split`) makes a plain reference ambiguous.
suppress_warnings = ['ref.python']

html_theme = 'sphinx_book_theme'
html_title = 'centerloss_jax'
html_theme_options = {
    'show_toc_level': 2,
    'use_download_button': False,
}

# The results pages: each study's driver reports from its committed records.
STUDIES = {
    'fashion_mnist_one_epoch': [
        'experiments.sweep', '--config=configs/default.py', '--seeds=0,1,2'],
    'fashion_mnist_full_length': [
        'experiments.sweep', '--config=configs/fashion_mnist_lenetpp.py',
        '--lambdas=0,0.01', '--alphas=', '--seeds=0,1'],
    'synthetic_faces': [
        'experiments.face_comparison', '--config=configs/synthetic_faces.py',
        '--seeds=0,1,2',
        '--runs=softmax,softmax+center,softmax+center-lambda-3e-4'],
}


def generate_results(_app):
  """Runs each study's driver on its records into `_generated/<study>/`."""
  for study, (module, *flags) in STUDIES.items():
    out = DOCS / '_generated' / study
    command = [sys.executable, '-m', module, *flags, '--report_only',
               f'--workdir={out}',
               f'--records_dir={ROOT / "experiments" / "results" / study}']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')


def setup(app):
  app.connect('builder-inited', generate_results)
