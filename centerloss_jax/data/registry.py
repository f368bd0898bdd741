"""Every data source by name, each a loader with an explicit signature.

`load_dataset(source, **kwargs)` is where an experiment's `input` config
becomes keyword arguments: a key that the source's loader does not take is
an error naming it and the accepted ones (never a silently ignored field),
and a None value means the loader's default. A new source is one loader
returning a `Dataset` and one entry in `SOURCES`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from centerloss_jax.data.face_folders import load_identity_folders
from centerloss_jax.data.mnist import load_idx_dataset
from centerloss_jax.data.mnist import load_tfds_dataset
from centerloss_jax.data.synthetic_faces import load_synthetic_faces
from centerloss_jax.data.types import Dataset

SOURCES: dict[str, Callable[..., Dataset]] = {
    'idx': load_idx_dataset,
    'tfds': load_tfds_dataset,
    'synthetic_faces': load_synthetic_faces,
    'identity_folders': load_identity_folders,
}


def accepted_arguments(source: str) -> tuple[str, ...]:
  """The keyword arguments of `source`'s loader, sorted."""
  _check_source(source)
  return tuple(sorted(inspect.signature(SOURCES[source]).parameters))


def unknown_arguments(source: str, names) -> list[str]:
  """The `names` that `source`'s loader does not take, sorted."""
  return sorted(set(names) - set(accepted_arguments(source)))


def load_dataset(source: str, **kwargs: Any) -> Dataset:
  """Loads the dataset of `source` ('idx', 'tfds', 'identity_folders',
  'synthetic_faces') with its loader's keyword arguments.

  Args:
    source: a key of `SOURCES`.
    **kwargs: the loader's arguments; None stands for the loader's default
      (the config placeholders of an unset field).

  Returns:
    The loaded `Dataset`.

  Raises:
    ValueError: an unknown source, a keyword its loader does not take
      (naming it and the accepted ones), a required one missing or None;
      the loader's own errors.

  Examples:
    Three synthetic identities, drawn offline, two training images each:

    >>> from centerloss_jax.data import load_dataset
    >>> dataset = load_dataset('synthetic_faces', num_train_identities=3,
    ...                        images_per_identity=2, image_shape=(28, 24, 3))
    >>> print(dataset.train.images.shape, dataset.train.labels)
    (6, 28, 24, 3) [0 0 1 1 2 2]
    >>> print(dataset.num_classes, dataset.test.num_examples)
    3 3

    A keyword the loader does not take is an error:

    >>> load_dataset('synthetic_faces', num_identities=3)
    Traceback (most recent call last):
      ...
    ValueError: input source 'synthetic_faces' does not take
    'num_identities'; it accepts difficulty, image_shape, ...
  """
  unknown = unknown_arguments(source, kwargs)
  if unknown:
    raise ValueError(
        f'input source {source!r} does not take {", ".join(map(repr, unknown))}'
        f'; it accepts {", ".join(accepted_arguments(source))}.')
  given = {k: v for k, v in kwargs.items() if v is not None}
  missing = [name for name, parameter in
             inspect.signature(SOURCES[source]).parameters.items()
             if parameter.default is inspect.Parameter.empty
             and name not in given]
  if missing:
    raise ValueError(
        f'input source {source!r} needs {", ".join(map(repr, missing))} '
        '(unset or None).')
  return SOURCES[source](**given)


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(
        f'Unknown input source {source!r}; expected one of {tuple(SOURCES)}.')
