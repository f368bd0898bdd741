"""centerloss_jax: the center loss of Wen et al. (ECCV 2016) in JAX/Flax."""

import setuptools

# Lower bounds are the versions the test suite ran with (see README); upper
# bounds stop at the next minor release of the fast-moving JAX stack.
INSTALL_REQUIRES = [
    'jax>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'ml-collections>=1.1.0',
    'tensorflow-datasets>=4.9.10',
    'clu>=0.0.12',
    'matplotlib>=3.10',
    'numpy>=2.0',
    'absl-py>=2.1',
    'tensorboardX>=2.6.5',
    'grain>=0.2.18,<0.3',
]

setuptools.setup(
    name='centerloss_jax',
    version='0.1.0',
    description=('Center loss (Wen et al., ECCV 2016) for JAX and Flax: '
                 'functional loss, linen/NNX modules, data-parallel training.'),
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['centerloss_jax',
                                               'centerloss_jax.*']),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'test': ['pytest>=8', 'nbformat>=5.10', 'nbclient>=0.10',
                 'ipykernel>=6.29'],
        'gpu': ['jax[cuda12]>=0.10.2,<0.11'],
        'tpu': ['jax[tpu]>=0.10.2,<0.11'],
    },
    license='Apache-2.0',
)
