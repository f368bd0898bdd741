"""Helpers the experiment configs share: variants and shrunk models.

A config file's `get_config(arg)` builds its full-size experiment; the
`runlocal` variant shrinks it to seconds on a CPU, for laptops and tests.
"""

from typing import Any, Mapping

import ml_collections


def is_runlocal(arg: str | None) -> bool:
  """Whether `get_config(arg)` asks for the `runlocal` variant.

  Raises:
    ValueError: any other non-empty variant, naming it.
  """
  if arg and arg != 'runlocal':
    raise ValueError(f"Unknown config variant {arg!r}; expected 'runlocal'.")
  return arg == 'runlocal'


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-path `overrides` applied.

  Example: `with_overrides(config, {'loss.pair': 'contrastive'})`.
  """
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for path, value in overrides.items():
      *parents, leaf = path.split('.')
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return config


def shrink_lenet_pp(config: ml_collections.ConfigDict) -> None:
  """Shrinks a LeNet++ config to seconds on a CPU: for tests and laptops."""
  config.input.train_subset = 256
  config.input.test_subset = 100
  config.model.stage_channels = (4, 8, 8)
  config.batch_size = 32
  config.num_epochs = 2.0
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4


def shrink_face_resnet(config: ml_collections.ConfigDict) -> None:
  """The tiny FaceResNet and batch of every face config's `runlocal`."""
  config.model.stem_channels = (4, 8)
  config.model.stage_channels = (8, 8, 16, 16)
  config.model.stage_blocks = (1, 1, 1, 1)
  config.model.feature_dim = 16
  config.model.dtype = 'float32'         # bf16 is slow and loose on CPUs.
  config.batch_size = 16
