"""centerloss_jax: the center loss of Wen et al. (ECCV 2016) in JAX/Flax.

`pip install centerloss_jax` installs the loss and its Flax modules (jax, flax,
optax, numpy). The extras add the rest of the codebase:

  train        the trainer, data pipelines, checkpoints and plots
  experiments  the seed studies' statistics (with `train`)
  test         the test suite (with `train` and `experiments`)
  docs         the Sphinx site (with `train` and `experiments`)
  gpu, tpu     jaxlib for the accelerator

The exact versions the test suite runs with are pinned in `constraints.txt`,
which `setup.sh` installs with.
"""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent


def read_version():
  """`__version__` from the package's `__init__.py`, its one source."""
  init = (HERE / 'centerloss_jax' / '__init__.py').read_text()
  return re.search(r"^__version__ = '([^']+)'", init, re.MULTILINE).group(1)


# The loss, centerloss_jax.linen, centerloss_jax.nnx and the models.
CORE = [
    'jax>=0.10.2',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'numpy>=2.0',
]
TRAIN = [
    'orbax-checkpoint>=0.12.8',
    'grain>=0.2.18',
    'ml-collections>=1.1.0',
    'absl-py>=2.1',
    'clu>=0.0.12',
    'tensorboardX>=2.6.5',
    'matplotlib>=3.10',
    'Pillow>=10',
    'tensorflow-datasets>=4.9.10',
]
EXPERIMENTS = TRAIN + ['scipy>=1.13']
TEST = EXPERIMENTS + [
    'pytest>=8',
    'nbformat>=5.10',
    'nbclient>=0.10',
    'ipykernel>=6.29',
]
DOCS = EXPERIMENTS + [
    'sphinx>=8',
    'myst-nb>=1.2',
    'sphinx-book-theme>=1.1',
    'ipykernel>=6.29',
]

setuptools.setup(
    name='centerloss_jax',
    version=read_version(),
    description=('Center loss (Wen et al., ECCV 2016) for JAX and Flax: '
                 'functional loss, linen/NNX modules, data-parallel training.'),
    long_description=(
        'The center loss of Wen et al., "A Discriminative Feature Learning '
        'Approach for Deep Face Recognition" (ECCV 2016), for JAX and Flax: '
        'a functional loss whose class centers move by the paper\'s own rule '
        '(Eq. 4) outside the optimizer, linen and NNX modules that keep the '
        'centers in non-differentiable state, and (with the `train` extra) a '
        'data-parallel trainer for GPU and TPU with class-sharded centers, '
        'face-verification protocols and fault-tolerant checkpoints.'),
    long_description_content_type='text/plain',
    packages=setuptools.find_packages(include=['centerloss_jax',
                                               'centerloss_jax.*']),
    python_requires='>=3.10',
    install_requires=CORE,
    extras_require={
        'train': TRAIN,
        'experiments': EXPERIMENTS,
        'test': TEST,
        'docs': DOCS,
        'gpu': ['jax[cuda12]>=0.10.2'],
        'tpu': ['jax[tpu]>=0.10.2'],
    },
    license='Apache-2.0',
    license_files=['LICENSE'],
)
