"""Helpers of the model tests: keys, random inputs, conv kernel shapes and
the tiny face-model widths."""

import jax
import numpy as np


def key(seed):
  # 'rbg' keys: initialising a network with the default threefry keys spends
  # most of its time compiling the random bit generator (~5x slower here).
  return jax.random.key(seed, impl='rbg')


def normal(shape, seed=0):
  """float32 standard normal numbers (numpy: nothing for XLA to compile)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def conv_kernels(params):
  """Shapes of the nn.Conv kernels (4-D 'kernel' params of a Conv_* scope)."""
  return [leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if path[-1].key == 'kernel' and len(leaf.shape) == 4
          and path[-2].key.startswith('Conv_')]


# Tiny widths: the face architectures (depth, pools, heads) at a fraction of
# the cost. FaceResNet needs at least 48x48 inputs.
TINY_RESNET = dict(stem_channels=(4, 8), stage_channels=(8, 8, 16, 16),
                   feature_dim=8)
# 8 conv channels, not fewer: a PReLU slope before a max-pool only gets a
# gradient through windows whose maximum is negative, which a handful of
# channels on a tiny map may not have (the gradient test then fails).
TINY_CNN = dict(conv_channels=8, local_channels=6, feature_dim=8)
