"""The 27-conv-layer residual face network of the public center-loss model.

The Caffe model released with the paper (`face_example/face_train_test.
prototxt`, "Face-ResNet") on 112x96x3 inputs, checked against that file:

  conv1a 32, conv1b 64           3x3 stride 1, no padding  112x96 -> 108x92
  pool1b                         2x2 max, stride 2                -> 54x46
  1 residual block at 64         two 3x3 pad-1 convs + identity
  conv2 128, pool2               3x3 no padding, 2x2/2     -> 52x44 -> 26x22
  2 residual blocks at 128
  conv3 256, pool3                                         -> 24x20 -> 12x10
  5 residual blocks at 256
  conv4 512, pool4                                         -> 10x8  -> 5x4
  3 residual blocks at 512
  fc5 512                        fully connected on the 5x4x512 map

That is 5 + 2 * (1 + 2 + 5 + 3) = 27 convolutions, PReLU (per channel, slope
0.25) after each of them, no activation after fc5: the reference feature, the
one the center loss and the LFW evaluation use, is the raw fc5 output.

Also from the reference: Xavier init of the five plain convs and fc5 (zero
biases); the residual convs are drawn from N(0, 0.01^2) and their biases are
zero with learning-rate multiplier 0, i.e. frozen at zero, so here they have
no bias at all.

Choices of ours: the classifier is bias-free (the reference's fc6 has a bias;
every model here shares the bias-free softmax layer of LeNet++, and the
margin losses need one), and pooling floors odd sizes where Caffe would ceil
them, which makes no difference at 112x96 (every pooled size is even) but
changes the fc5 input size at some other input sizes.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centerloss_jax.models import heads
from centerloss_jax.models.lenet_pp import max_pool_2x2
from centerloss_jax.models.lenet_pp import PReLU

# The classifier's param scope (see `heads`); class-sharded training pops
# `params[CLASSIFIER_SCOPE]['kernel']`.
CLASSIFIER_SCOPE = 'classifier'


class ResidualBlock(nn.Module):
  """Two 3x3 SAME convs with PReLU, added to the input (identity shortcut).

  As in the reference, the sum is not followed by an activation, and the
  convs have no bias and N(0, 0.01^2) weights.

  Attributes:
    dtype: computation dtype.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    init = nn.initializers.normal(stddev=0.01)
    y = x
    for _ in range(2):
      y = nn.Conv(channels, (3, 3), padding='SAME', use_bias=False,
                  kernel_init=init, dtype=self.dtype)(y)
      y = PReLU()(y)
    return x + y


class FaceResNet(nn.Module):
  """The reference residual face network returning `(features, logits)`.

  Needs inputs of at least 48x48 (four unpadded convs and 2x2 pools); the
  reference input is 112x96.

  Attributes:
    num_classes: classifier outputs (training identities).
    feature_dim: dimension of the face feature (fc5), 512 in the reference.
    stem_channels: channels of conv1a and conv1b.
    stage_channels: channels of the four residual stages; each stage after
      the first is preceded by an unpadded conv to its width and a pool.
    stage_blocks: residual blocks per stage.
    dtype: computation dtype (e.g. jnp.bfloat16 on accelerators); params and
      returned features/logits stay float32.
    use_classifier: False drops the classifier and returns
      `(features, None)` (class-sharded training applies the kernel itself).
    classifier: `'linear'` (bias-free softmax classifier) or `'cosine'`
      (`heads.CosineClassifier`, for the margin losses).

  Examples:
    The reference network's shapes, traced without computing anything
    (`jax.eval_shape`); `init` and `apply` take the same arguments:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.models import FaceResNet
    >>> model = FaceResNet(num_classes=10572)
    >>> images = jnp.zeros((1, 112, 96, 3))
    >>> (features, logits), variables = jax.eval_shape(
    ...     model.init_with_output, jax.random.key(0), images)
    >>> print(features.shape, logits.shape)
    (1, 512) (1, 10572)
    >>> print(variables['params']['fc5']['kernel'].shape)  # 5 x 4 x 512 in.
    (10240, 512)
  """
  num_classes: int = 10572
  feature_dim: int = 512
  stem_channels: Sequence[int] = (32, 64)
  stage_channels: Sequence[int] = (64, 128, 256, 512)
  stage_blocks: Sequence[int] = (1, 2, 5, 3)
  dtype: Any = jnp.float32
  use_classifier: bool = True
  classifier: str = 'linear'

  @nn.compact
  def __call__(self, images: jax.Array,
               train: bool = False) -> tuple[jax.Array, Optional[jax.Array]]:
    """Computes the face features and the classifier outputs.

    Args:
      images: `(batch, height, width, channels)` images, normalised.
      train: unused (no dropout or batch norm); kept for the shared contract.

    Returns:
      `(features, logits)`, float32, of shapes `(batch, feature_dim)` and
      `(batch, num_classes)`; logits are cosines for `classifier='cosine'`
      and None when `use_classifier` is False.

    Raises:
      ValueError: for an unknown `classifier`, mismatched stage lengths, or
        images too small for the network.
    """
    del train  # No dropout or batch norm: train and eval are the same.
    heads.check_classifier(self.classifier)
    self._check_widths()
    _check_image_size(images.shape[1:3], len(self.stage_channels))
    init = nn.initializers.xavier_uniform()  # The reference's Xavier filler.

    def plain_conv(x, channels):
      x = nn.Conv(channels, (3, 3), padding='VALID', kernel_init=init,
                  dtype=self.dtype)(x)
      return PReLU()(x)

    x = images.astype(self.dtype)
    for channels in self.stem_channels:
      x = plain_conv(x, channels)
    for stage, (channels, blocks) in enumerate(
        zip(self.stage_channels, self.stage_blocks)):
      if stage > 0:
        x = plain_conv(x, channels)
      x = max_pool_2x2(x)
      for _ in range(blocks):
        x = ResidualBlock(dtype=self.dtype)(x)
    x = x.reshape((x.shape[0], -1))
    features = nn.Dense(self.feature_dim, kernel_init=init, dtype=self.dtype,
                        name='fc5')(x)
    if not self.use_classifier:
      return features.astype(jnp.float32), None
    head = heads.classifier_head(self.classifier, self.num_classes,
                                 name=CLASSIFIER_SCOPE, dtype=self.dtype)
    logits = head(features)
    return features.astype(jnp.float32), logits.astype(jnp.float32)

  def _check_widths(self) -> None:
    """Raises ValueError for inconsistent width/block settings."""
    if len(self.stem_channels) != 2:
      raise ValueError(
          f'stem_channels must hold 2 widths (conv1a, conv1b), got '
          f'{tuple(self.stem_channels)}.')
    if len(self.stage_channels) != len(self.stage_blocks):
      raise ValueError(
          f'stage_channels {tuple(self.stage_channels)} and stage_blocks '
          f'{tuple(self.stage_blocks)} must have the same length.')
    if self.stage_channels[0] != self.stem_channels[-1]:
      # The first stage follows conv1b directly, through an identity shortcut.
      raise ValueError(
          f'stage_channels[0] = {self.stage_channels[0]} must equal conv1b\'s '
          f'width stem_channels[1] = {self.stem_channels[-1]}.')


def fc5_input_size(height: int, width: int,
                   num_stages: int = 4) -> tuple[int, int]:
  """Spatial size of the last stage's map, the input of fc5.

  Args:
    height: image height.
    width: image width.
    num_stages: residual stages (each preceded by a pool).

  Returns:
    `(height, width)` of the map fc5 flattens; (5, 4) at 112x96. A size
    below 1 means the image is too small.
  """
  sizes = []
  for size in (height, width):
    size -= 4  # conv1a and conv1b, 3x3 unpadded.
    for stage in range(num_stages):
      if stage > 0:
        size -= 2  # The unpadded conv before the stage.
      size //= 2
    sizes.append(size)
  return sizes[0], sizes[1]


def _check_image_size(image_size: Sequence[int], num_stages: int) -> None:
  """Raises ValueError for images too small to reach fc5 with a 1x1 map."""
  if min(fc5_input_size(*image_size, num_stages)) < 1:
    raise ValueError(
        f'Images of size {tuple(image_size)} are too small for FaceResNet '
        f'with {num_stages} stages: fc5 would see a map of size '
        f'{fc5_input_size(*image_size, num_stages)}; 4 stages need at least '
        '48x48 (the reference input is 112x96).')

