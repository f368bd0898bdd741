"""Models. Each returns `(features, logits)` from `__call__(images, train)`."""

from centerloss_jax.models import face_cnn
from centerloss_jax.models.face_cnn import FaceCNN
from centerloss_jax.models.face_cnn import LocallySharedConv
from centerloss_jax.models import face_resnet
from centerloss_jax.models.face_resnet import FaceResNet
from centerloss_jax.models import heads
from centerloss_jax.models.heads import CosineClassifier
from centerloss_jax.models import lenet_pp
from centerloss_jax.models.lenet_pp import LeNetPlusPlus
from centerloss_jax.models.lenet_pp import PReLU

__all__ = ['CosineClassifier', 'FaceCNN', 'FaceResNet', 'LeNetPlusPlus',
           'LocallySharedConv', 'PReLU', 'classifier_scope', 'create_model']

# Config name -> (model class, param scope of its classifier head).
_MODELS = {
    'face_cnn': (FaceCNN, face_cnn.CLASSIFIER_SCOPE),
    'face_resnet': (FaceResNet, face_resnet.CLASSIFIER_SCOPE),
    'lenet_pp': (LeNetPlusPlus, lenet_pp.CLASSIFIER_SCOPE),
}


def _check_name(name: str) -> None:
  if name not in _MODELS:
    raise ValueError(
        f'Unknown model {name!r}; expected one of {sorted(_MODELS)}.')


def create_model(name: str, **kwargs):
  """Builds a model by its config name, e.g. `create_model('lenet_pp', ...)`.

  Args:
    name: one of 'face_cnn', 'face_resnet', 'lenet_pp'.
    **kwargs: the model's attributes.

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: for an unknown `name`.

  Examples:
    >>> from centerloss_jax import models
    >>> model = models.create_model('lenet_pp', num_classes=10)
    >>> print(type(model).__name__, model.feature_dim)
    LeNetPlusPlus 2
  """
  _check_name(name)
  return _MODELS[name][0](**kwargs)


def classifier_scope(name: str) -> str:
  """The top-level param scope of model `name`'s classifier head.

  Its `'kernel'` is the `(feature_dim, num_classes)` matrix that class-sharded
  training pops out of the params.

  Args:
    name: a model config name, as for `create_model`.

  Returns:
    The scope, e.g. 'Dense_1' for 'lenet_pp'.

  Raises:
    ValueError: for an unknown `name`.
  """
  _check_name(name)
  return _MODELS[name][1]
