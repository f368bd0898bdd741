"""LeNet++, the paper's toy network (Wen et al. 2016, Sec. 3.1, Fig. 2).

Three stages of two 5x5 convolutions (stride 1, pad 2) with 32, 64 and 128
channels, each stage followed by 2x2 max-pooling, PReLU after every layer, a
fully connected layer to the (2-D, for the paper's plots) feature, and a
bias-free classifier, as in the reference Caffe MNIST example. On 28x28 inputs
the spatial sizes are 28 -> 14 -> 7 -> 3 (the reference's last 3x3/2 ceil
pool gives 3 as well).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centerloss_jax.models import heads


class PReLU(nn.Module):
  """Parametric ReLU with one learnable slope per channel (Caffe's default).

  Attributes:
    negative_slope_init: initial slope for negative inputs (0.25 in Caffe and
      in He et al. 2015).
  """
  negative_slope_init: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param('negative_slope',
                       nn.initializers.constant(self.negative_slope_init),
                       (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling, stride 2, VALID (an odd last row/column is dropped).

  A reshape and a max rather than `nn.max_pool`: same forward values, and
  its gradient avoids XLA:CPU's slow select-and-scatter (the LeNet++ train
  step is about 1.4x faster on a CPU, with identical gradients). With
  exact ties in a window the gradient is split between them instead of going
  to one, equally valid and vanishingly rare after PReLU.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# The classifier's param scope: the name Flax gives the second Dense, which
# the replicated param tree and its checkpoints use; class-sharded training
# moves this kernel out of the model (see `use_classifier`).
CLASSIFIER_SCOPE = 'Dense_1'


class LeNetPlusPlus(nn.Module):
  """LeNet++ returning `(features, logits)`.

  Attributes:
    num_classes: classifier outputs.
    feature_dim: dimension of the feature the center loss acts on (2 in the
      paper's visualisation).
    stage_channels: channels of the three conv stages (two convs each).
    feature_activation: apply PReLU to the feature, as the reference model does
      before its classifier.
    dtype: computation dtype (e.g. jnp.bfloat16 on accelerators); params and
      returned features/logits stay float32.
    use_classifier: False drops the classifier and returns
      `(features, None)`: class-sharded training holds the (D, C) kernel
      itself, split over devices, and applies it with
      `losses.class_sharded.class_sharded_logits`.
    classifier: `'linear'` (the bias-free softmax classifier) or `'cosine'`
      (`heads.CosineClassifier`, whose cosines the margin losses turn into
      logits). Either keeps its kernel at `CLASSIFIER_SCOPE`/'kernel'.

  Examples:
    A narrow LeNet++ on a batch of two 28x28 gray images:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.models import LeNetPlusPlus
    >>> model = LeNetPlusPlus(num_classes=10, stage_channels=(4, 8, 8))
    >>> images = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init(jax.random.key(0), images)
    >>> features, logits = model.apply(variables, images)
    >>> print(features.shape, logits.shape)
    (2, 2) (2, 10)
  """
  num_classes: int = 10
  feature_dim: int = 2
  stage_channels: Sequence[int] = (32, 64, 128)
  feature_activation: bool = True
  dtype: Any = jnp.float32
  use_classifier: bool = True
  classifier: str = 'linear'

  @nn.compact
  def __call__(self, images: jax.Array,
               train: bool = False) -> tuple[jax.Array, Optional[jax.Array]]:
    del train  # No dropout or batch norm: train and eval are the same.
    heads.check_classifier(self.classifier)
    x = images.astype(self.dtype)
    init = nn.initializers.xavier_uniform()  # The reference's Xavier filler.
    for channels in self.stage_channels:
      for _ in range(2):
        x = nn.Conv(channels, (5, 5), padding=2, kernel_init=init,
                    dtype=self.dtype)(x)
        x = PReLU()(x)
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    features = nn.Dense(self.feature_dim, kernel_init=init, dtype=self.dtype)(x)
    if self.feature_activation:
      features = PReLU()(features)
    if not self.use_classifier:
      return features.astype(jnp.float32), None
    head = heads.classifier_head(self.classifier, self.num_classes,
                                 name=CLASSIFIER_SCOPE, dtype=self.dtype)
    # The linear head computes in `dtype`; the cosine head in float32.
    logits = head(features)
    return features.astype(jnp.float32), logits.astype(jnp.float32)
