"""Models. Each returns `(features, logits)` from `__call__(images, train)`."""

from centerloss_jax.models.lenet_pp import LeNetPlusPlus
from centerloss_jax.models.lenet_pp import PReLU

__all__ = ['LeNetPlusPlus', 'PReLU', 'create_model']


def create_model(name: str, **kwargs):
  """Builds a model by its config name, e.g. `create_model('lenet_pp', ...)`."""
  models = {'lenet_pp': LeNetPlusPlus}
  if name not in models:
    raise ValueError(
        f'Unknown model {name!r}; expected one of {sorted(models)}.')
  return models[name](**kwargs)
