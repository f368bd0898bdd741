"""The toy classification problem of the Flax module tests (linen and NNX).

Five well-separated Gaussian clusters in 8-D, nets with a 16-unit hidden
layer and 3-D features. No param of these nets has the centers' shape
(NUM_CLASSES, FEATURE_DIM) = (5, 3), so a leaf of that shape in an
optimizer state or a gradient can only be centers (see
`assert_holds_no_centers`).

`dyadic_batch` and `dyadic_init` make values in multiples of 1/8 and 1/4:
their sums and products are exact in float32, so two programs that add them
in another order (a device count, a fusion) give the same bits.
"""

import jax
import numpy as np

NUM_CLASSES = 5
FEATURE_DIM = 3
INPUT_DIM = 8
HIDDEN_DIM = 16
CENTERS_SHAPE = (NUM_CLASSES, FEATURE_DIM)
CENTER_LOSS_WEIGHT = 0.1  # lambda of Eq. 5.
ALPHA = 0.5
STEPS = 30
BATCH = 40


def cluster_batches(steps=STEPS, batch=BATCH, seed=0):
  """Inputs (steps, batch, INPUT_DIM) around 5 well-separated class means,
  and their labels (steps, batch)."""
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.normal(size=(NUM_CLASSES, INPUT_DIM))
  labels = rng.integers(0, NUM_CLASSES, (steps, batch)).astype(np.int32)
  inputs = means[labels] + 0.3 * rng.normal(size=(steps, batch, INPUT_DIM))
  return inputs.astype(np.float32), labels


def dyadic_batch(seed, batch, dim=FEATURE_DIM):
  """(batch, dim) values in multiples of 1/8 in [-2, 2), random labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  values = rng.integers(-16, 16, (batch, dim)).astype(np.float32) / 8
  return values, labels


def dyadic_init(key, shape, dtype=np.float32):
  """A Flax initializer of multiples of 1/4 in [-1, 1]."""
  return jax.random.randint(key, shape, -4, 5).astype(dtype) / 4


def leaf_shapes(tree):
  """The shapes of the leaves of `tree`."""
  return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]


def assert_holds_no_centers(tree, what):
  """No leaf of `tree` (params, gradients, an optimizer state) has the
  centers' shape: nothing in `what` is, or tracks, the centers."""
  assert CENTERS_SHAPE not in leaf_shapes(tree), (
      f'{what} holds a (num_classes, dim) leaf: the centers leak into it.')


def assert_halves(center_losses):
  """The center loss of the last training step is below half the first's."""
  first, last = center_losses[0], center_losses[-1]
  assert last < 0.5 * first, (
      f'Center loss did not fall by half in {len(center_losses)} steps: '
      f'first {first:.4f}, last {last:.4f}.')
