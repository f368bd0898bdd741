"""Data: every dataset of this codebase enters through here. No JAX.

All of it runs on the host in numpy; the trainer moves batches to devices.

* `types`: `Split`, `PairsSet`, `IdentificationSet`, `Dataset`.
* `registry`: `load_dataset(source, **kwargs)` over the sources below.
* `mnist`: MNIST-format IDX files and TFDS data sources.
* `face_folders`, `image_files`, `alignment`: face datasets on disk, read
  lazily, aligned by 5 landmarks.
* `synthetic_faces`: the offline synthetic identity set.
* `batching`: deterministic, per-process, padded batches of a split.
* `pipeline`: the same batches made ahead by grain, in worker processes.
* `packed`, `packing`: face trees decoded and aligned once, read memory-mapped.
"""

from centerloss_jax.data import alignment
from centerloss_jax.data import batching
from centerloss_jax.data.batching import epoch_batches
from centerloss_jax.data import face_folders
from centerloss_jax.data import image_files
from centerloss_jax.data import mnist
from centerloss_jax.data import packed
from centerloss_jax.data import packing
from centerloss_jax.data import pipeline
from centerloss_jax.data import registry
from centerloss_jax.data.registry import load_dataset
from centerloss_jax.data.registry import SOURCES
from centerloss_jax.data import synthetic_faces
from centerloss_jax.data import types
from centerloss_jax.data.types import Dataset
from centerloss_jax.data.types import IdentificationSet
from centerloss_jax.data.types import PairsSet
from centerloss_jax.data.types import Split

__all__ = [
    'Dataset',
    'IdentificationSet',
    'PairsSet',
    'SOURCES',
    'Split',
    'alignment',
    'batching',
    'epoch_batches',
    'face_folders',
    'image_files',
    'load_dataset',
    'mnist',
    'packed',
    'packing',
    'pipeline',
    'registry',
    'synthetic_faces',
    'types',
]
