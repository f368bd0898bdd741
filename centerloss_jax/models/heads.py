"""Classifier heads shared by the models: the softmax layer and cosines.

A model's `classifier` attribute picks its head:

* `'linear'`: a bias-free `nn.Dense(num_classes)` on the feature, the
  softmax classifier of the paper (its logits are `W^T x`).
* `'cosine'`: `CosineClassifier`, the cosine between the L2-normalised feature
  and each L2-normalised class weight. The margin losses (SphereFace, CosFace,
  ArcFace) turn these cosines into logits; they read the feature norm from the
  model's `features` output when they need it.

Either head stores a `(feature_dim, num_classes)` param named `'kernel'` under
the model's classifier scope, so class-sharded training can pop it out of the
params the same way for both.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from centerloss_jax import losses

CLASSIFIERS = ('linear', 'cosine')


def check_classifier(classifier: str) -> None:
  """Raises ValueError unless `classifier` names a known head.

  Args:
    classifier: the model's `classifier` attribute.

  Raises:
    ValueError: if it is not one of `CLASSIFIERS`.
  """
  if classifier not in CLASSIFIERS:
    raise ValueError(
        f'Unknown classifier {classifier!r}; expected one of {CLASSIFIERS}.')


class CosineClassifier(nn.Module):
  """Cosines between the features and the class weight vectors.

  `losses.margin.cosine_scores` of the features and the kernel: float32
  whatever the input dtype, clipped to [-1, 1].

  Attributes:
    num_classes: number of classes (kernel columns).
    epsilon: norms below this are treated as `epsilon` (a zero feature gives
      cosines of 0, not NaN).
    kernel_init: initializer of the `(feature_dim, num_classes)` kernel.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from centerloss_jax.models import CosineClassifier
    >>> head = CosineClassifier(num_classes=3)
    >>> features = jnp.array([[3., 4.], [0., 0.]])
    >>> variables = head.init(jax.random.key(0), features)
    >>> print(variables['params']['kernel'].shape)
    (2, 3)
    >>> cosines = head.apply(variables, features)
    >>> print(cosines.shape, bool(jnp.all(jnp.abs(cosines) <= 1)))
    (2, 3) True
    >>> print(bool(jnp.all(cosines[1] == 0)))  # A zero feature scores 0.
    True
  """
  num_classes: int
  epsilon: float = losses.EPSILON
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    """Returns the `(batch, num_classes)` float32 cosines, in [-1, 1].

    Args:
      features: `(batch, feature_dim)` features.
    """
    kernel = self.param('kernel', self.kernel_init,
                        (features.shape[-1], self.num_classes), jnp.float32)
    return losses.margin.cosine_scores(features, kernel,
                                       epsilon=self.epsilon)


def classifier_head(classifier: str, num_classes: int, *, name: str,
                    dtype: Any = jnp.float32) -> nn.Module:
  """Builds the head a model's `classifier` attribute names.

  Call it inside a compact `__call__`. Apply the `'linear'` head to the
  features in the computation dtype and the `'cosine'` head to the float32
  features (it computes in float32 anyway).

  Args:
    classifier: `'linear'` (bias-free Dense, Xavier init as in the reference
      Caffe models) or `'cosine'` (`CosineClassifier`).
    num_classes: number of classes.
    name: the module name, i.e. the classifier's param scope.
    dtype: computation dtype of the linear head.

  Returns:
    The head module.

  Raises:
    ValueError: for an unknown `classifier`.
  """
  check_classifier(classifier)
  if classifier == 'linear':
    return nn.Dense(num_classes, use_bias=False,
                    kernel_init=nn.initializers.xavier_uniform(),
                    dtype=dtype, name=name)
  return CosineClassifier(num_classes, name=name)
