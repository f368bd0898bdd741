"""The face CNN of the paper (Wen et al. 2016, Sec. 4.1, Fig. 4).

From the paper's text: 3x3 filters with stride 1 in the convolution and the
local convolution layers, each followed by PReLU; 128 feature maps in the
convolution layers and 256 in the local convolution layers, whose weights are
shared within regions of 4x4, 2x2 and 1x1 output positions respectively;
3x3 max-pooling with stride 2; the outputs of the 4th pooling layer and of the
3rd local convolution layer are concatenated as the input of the fully
connected layer, whose 512-d output is the face feature. Input 112x96x3.

Choices of ours, where the paper does not say:

* One convolution per stage by default (`convs_per_stage`): the text counts
  four pooling layers but not the convolutions between them.
* SAME padding everywhere, so the four pools take 112x96 -> 56x48 -> 28x24 ->
  14x12 -> 7x6 and the local layers keep 7x6. The local regions then tile
  7x6 as 2x2 regions of 4x4 (partial at the edges), 4x3 of 2x2 (partial in
  the last row) and 7x6 of 1x1 (fully local).
* No activation after the fully connected layer (as in the reference
  residual model, the feature is the layer's raw output), and Caffe's Xavier
  (fan-in) scaling for the local kernels, Flax's Xavier for the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centerloss_jax.models import heads
from centerloss_jax.models.lenet_pp import PReLU

# The classifier's param scope (see `heads`); class-sharded training pops
# `params[CLASSIFIER_SCOPE]['kernel']`.
CLASSIFIER_SCOPE = 'classifier'

# The paper concatenates the output of the 4th pooling layer with the last
# local convolution layer's.
NUM_POOLS = 4


def _max_pool_3_stride_2_along(x: jax.Array, axis: int) -> jax.Array:
  """1-D max over windows of 3, stride 2, SAME padding, along `axis`."""
  size = x.shape[axis]
  out = -(-size // 2)
  # SAME: pad (out - 1) * 2 + 3 - size, the smaller half before, as in
  # `lax.padtype_to_pads`; the padded length is then 2 * out + 1.
  total = (out - 1) * 2 + 3 - size
  pads = [(0, 0)] * x.ndim
  pads[axis] = (total // 2, total - total // 2)
  x = jnp.pad(x, pads, constant_values=-jnp.inf)
  # Window i covers padded positions 2i, 2i + 1 and 2i + 2: the max of a
  # 2-to-1 reshape and the even positions shifted by one.
  pairs = jax.lax.slice_in_dim(x, 0, 2 * out, axis=axis)
  pairs = pairs.reshape(x.shape[:axis] + (out, 2) + x.shape[axis + 1:])
  pairs = pairs.max(axis=axis + 1)
  thirds = jax.lax.slice_in_dim(x, 2, 2 * out + 1, stride=2, axis=axis)
  return jnp.maximum(pairs, thirds)


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """3x3 max-pooling, stride 2, SAME padding, of NHWC `x` (112 -> 56).

  Equal to `nn.max_pool(x, (3, 3), (2, 2), 'SAME')` in value (and in
  gradient unless a window holds exact ties), computed separably from
  reshapes, slices and maxima: the gradient then avoids XLA:CPU's slow
  select-and-scatter, as `lenet_pp.max_pool_2x2` does.

  Args:
    x: `(batch, height, width, channels)` floating-point array.

  Returns:
    `(batch, ceil(height / 2), ceil(width / 2), channels)`.
  """
  return _max_pool_3_stride_2_along(_max_pool_3_stride_2_along(x, 1), 2)


class LocallySharedConv(nn.Module):
  """A stride-1 SAME convolution whose weights are shared only within regions.

  Output position (i, j) uses the kernel and bias of region
  (i // region_size, j // region_size); regions at the bottom and right edges
  may be partial. `region_size=1` is a fully local (unshared) convolution,
  `nn.ConvLocal`; a region at least as large as the map is an ordinary
  `nn.Conv`.

  Implemented as patch extraction (`lax.conv_general_dilated_patches`) and one
  einsum with the region axes as batch axes: positions are padded up to whole
  regions and reshaped to (region, position in region) so that no per-position
  copy of the kernel is ever gathered (at 7x6 with 256 channels that copy
  would be 25M floats per layer).

  Attributes:
    features: output channels.
    kernel_size: `(kh, kw)` of the window.
    region_size: side of the square regions sharing one kernel.
    use_bias: add a per-region, per-channel bias.
    dtype: computation dtype; params are float32.
    kernel_init: initializer of the `(regions_h, regions_w, cin * kh * kw,
      features)` kernel. The default is Caffe's Xavier filler (uniform,
      variance 1 / fan_in with fan_in = cin * kh * kw), the region axes being
      batch axes.
    bias_init: initializer of the `(regions_h, regions_w, features)` bias.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  region_size: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'uniform', batch_axis=(0, 1))
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution.

    Args:
      x: `(batch, height, width, cin)` input.

    Returns:
      `(batch, height, width, features)` in `dtype`.

    Raises:
      ValueError: for a `region_size` below 1 or a kernel that is not 2-D.
    """
    if self.region_size < 1:
      raise ValueError(
          f'region_size must be a positive integer, got {self.region_size}.')
    if len(self.kernel_size) != 2:
      raise ValueError(
          f'kernel_size must be (kh, kw), got {self.kernel_size}.')
    batch, height, width, in_features = x.shape
    # Patch channels come out ordered (cin, kh, kw), as `nn.ConvLocal` lays
    # out its kernel. HIGHEST precision: the patch "convolution" with one-hot
    # filters must not round float32 inputs on TPU/GPU.
    patches = jax.lax.conv_general_dilated_patches(
        x.astype(self.dtype), tuple(self.kernel_size), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)
    # A region larger than the map is the whole map: no padding to it.
    region_h = min(self.region_size, height)
    region_w = min(self.region_size, width)
    regions_h = math.ceil(height / region_h)
    regions_w = math.ceil(width / region_w)
    patch_size = in_features * math.prod(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init,
                        (regions_h, regions_w, patch_size, self.features),
                        jnp.float32)
    patches = jnp.pad(patches, ((0, 0), (0, regions_h * region_h - height),
                                (0, regions_w * region_w - width), (0, 0)))
    patches = patches.reshape(batch, regions_h, region_h, regions_w, region_w,
                              patch_size)
    y = jnp.einsum('nahbwk,abkf->nahbwf', patches,
                   kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', self.bias_init,
                        (regions_h, regions_w, self.features), jnp.float32)
      y = y + bias.astype(self.dtype)[None, :, None, :, None, :]
    y = y.reshape(batch, regions_h * region_h, regions_w * region_w,
                  self.features)
    return y[:, :height, :width, :]


class FaceCNN(nn.Module):
  """The paper's face CNN returning `(features, logits)`.

  Attributes:
    num_classes: classifier outputs (training identities).
    feature_dim: dimension of the face feature (the fully connected layer),
      512 in the paper.
    conv_channels: feature maps of the convolution layers (128 in the paper).
    local_channels: feature maps of the local convolution layers (256).
    convs_per_stage: 3x3 convolutions before each of the four pools.
    region_sizes: weight-sharing region side of each local convolution layer
      ((4, 2, 1) in the paper).
    dtype: computation dtype (e.g. jnp.bfloat16 on accelerators); params and
      returned features/logits stay float32.
    use_classifier: False drops the classifier and returns
      `(features, None)` (class-sharded training applies the kernel itself).
    classifier: `'linear'` (bias-free softmax classifier) or `'cosine'`
      (`heads.CosineClassifier`, for the margin losses).

  Examples:
    The paper's network's shapes, traced without computing anything
    (`jax.eval_shape`); `init` and `apply` take the same arguments:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.models import FaceCNN
    >>> model = FaceCNN(num_classes=10572)
    >>> images = jnp.zeros((1, 112, 96, 3))
    >>> (features, logits), variables = jax.eval_shape(
    ...     model.init_with_output, jax.random.key(0), images)
    >>> print(features.shape, logits.shape)
    (1, 512) (1, 10572)
  """
  num_classes: int = 10572
  feature_dim: int = 512
  conv_channels: int = 128
  local_channels: int = 256
  convs_per_stage: int = 1
  region_sizes: Sequence[int] = (4, 2, 1)
  dtype: Any = jnp.float32
  use_classifier: bool = True
  classifier: str = 'linear'

  @nn.compact
  def __call__(self, images: jax.Array,
               train: bool = False) -> tuple[jax.Array, Optional[jax.Array]]:
    """Computes the face features and the classifier outputs.

    Args:
      images: `(batch, height, width, channels)` images, normalised; any size
        (each pool halves it, rounding up).
      train: unused (no dropout or batch norm); kept for the shared contract.

    Returns:
      `(features, logits)`, float32, of shapes `(batch, feature_dim)` and
      `(batch, num_classes)`; logits are cosines for `classifier='cosine'`
      and None when `use_classifier` is False.

    Raises:
      ValueError: for an unknown `classifier` or `convs_per_stage` below 1.
    """
    del train  # No dropout or batch norm: train and eval are the same.
    heads.check_classifier(self.classifier)
    if self.convs_per_stage < 1:
      raise ValueError(
          f'convs_per_stage must be at least 1, got {self.convs_per_stage}.')
    init = nn.initializers.xavier_uniform()
    x = images.astype(self.dtype)
    for _ in range(NUM_POOLS):
      for _ in range(self.convs_per_stage):
        x = nn.Conv(self.conv_channels, (3, 3), padding='SAME',
                    kernel_init=init, dtype=self.dtype)(x)
        x = PReLU()(x)
      x = max_pool_3x3_stride_2(x)
    pool4 = x
    for index, region_size in enumerate(self.region_sizes):
      x = LocallySharedConv(self.local_channels, (3, 3), region_size,
                            dtype=self.dtype, name=f'local_conv{index + 1}')(x)
      x = PReLU()(x)
    batch = images.shape[0]
    x = jnp.concatenate([pool4.reshape(batch, -1), x.reshape(batch, -1)],
                        axis=-1)
    features = nn.Dense(self.feature_dim, kernel_init=init, dtype=self.dtype,
                        name='fc')(x)
    if not self.use_classifier:
      return features.astype(jnp.float32), None
    head = heads.classifier_head(self.classifier, self.num_classes,
                                 name=CLASSIFIER_SCOPE, dtype=self.dtype)
    logits = head(features)
    return features.astype(jnp.float32), logits.astype(jnp.float32)
