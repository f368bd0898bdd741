"""The training objective's parts, built from the config with clear errors."""

import pytest

from centerloss_jax import training
from configs import default


def _loss_config(**overrides):
  config = default.get_config().loss
  with config.unlocked():
    config.update(overrides)
  return config


def test_an_unknown_center_rule_is_refused_when_the_objective_is_built():
  with pytest.raises(ValueError, match=r"rule .*got 'adam'"):
    training.Objective(center_loss_weight=0.1, center_alpha=0.5,
                       center_rule='adam')


def test_the_default_classifier_loss_is_softmax():
  assert training.ClassifierLoss.from_config(_loss_config()).kind == 'softmax'


def test_a_margin_loss_takes_its_margin_and_a_cosine_classifier():
  arc = training.ClassifierLoss.from_config(
      _loss_config(classifier='arcface', margin=0.3))
  assert arc == training.ClassifierLoss('arcface', (('margin', 0.3),))
  assert arc.model_classifier == 'cosine'


def test_an_unknown_classifier_loss_is_named():
  with pytest.raises(ValueError, match="'arcfac'"):
    training.ClassifierLoss.from_config(_loss_config(classifier='arcfac'))


def test_sphereface_refuses_a_scale():
  with pytest.raises(ValueError, match='scale does not apply to SphereFace'):
    training.ClassifierLoss.from_config(
        _loss_config(classifier='sphereface', scale=30.0))


def test_there_is_no_pair_loss_by_default():
  assert training.PairLoss.from_config(_loss_config()) is None


def test_an_unknown_pair_loss_is_named():
  with pytest.raises(ValueError, match="'quadruplet'"):
    training.PairLoss.from_config(_loss_config(pair='quadruplet'))


def test_a_negative_pair_margin_is_refused_naming_it():
  with pytest.raises(ValueError, match='-1.0'):
    training.PairLoss.from_config(_loss_config(pair='triplet',
                                               pair_margin=-1.0))
