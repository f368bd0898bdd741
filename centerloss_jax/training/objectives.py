"""What a train step optimises: the paper's Eq. 5 and the losses it is
compared with, as small frozen values built once from the config.

`Objective` is `lambda * center loss` (Eq. 2, centers moved by Eq. 4 at
rate `alpha`) plus a `ClassifierLoss` (softmax, or a margin softmax:
SphereFace, CosFace, ArcFace) plus an optional `PairLoss` (contrastive or
batch-hard triplet on the global batch). `steps.train_step` takes one
(`steps.eval_step` its `classifier_loss`) and nothing else of the config.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import ml_collections

from centerloss_jax.losses import center
from centerloss_jax.losses import contrastive
from centerloss_jax.losses import margin as margin_lib
from centerloss_jax.losses import triplet
from centerloss_jax.training.parallel import psum

CLASSIFIER_LOSSES = ('softmax', 'sphereface', 'cosface', 'arcface')


PAIR_LOSSES = ('none', 'contrastive', 'triplet')


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
  """How the model's class scores become the classification loss.

  Attributes:
    kind: 'softmax': the model's linear logits, as they are (the paper's
      L_S); 'sphereface', 'cosface' or 'arcface': the model's cosine
      classifier's outputs, given a margin at the label by
      `losses.margin.margin_logits`.
    hparams: that function's keyword arguments as sorted (name, value)
      pairs (a tuple keeps the dataclass frozen and comparable), e.g.
      (('margin', 0.5), ('scale', 64.0)).
  """
  kind: str = 'softmax'
  hparams: tuple[tuple[str, float], ...] = ()

  @classmethod
  def from_config(cls, loss_config: ml_collections.ConfigDict
                  ) -> ClassifierLoss:
    """From `config.loss` (`classifier`, `margin`, `scale`, ...)."""
    kind = loss_config.classifier
    if kind not in CLASSIFIER_LOSSES:
      raise ValueError(f'Unknown loss.classifier {kind!r}; expected one of '
                       f'{CLASSIFIER_LOSSES}.')
    hparams = {}
    if kind != 'softmax':
      if loss_config.margin is not None:
        hparams['margin'] = loss_config.margin
      if kind == 'sphereface':
        hparams['blend'] = loss_config.sphereface_blend
        if loss_config.scale is not None:
          raise ValueError('loss.scale does not apply to SphereFace (its '
                           f'logits scale with the feature norm), got '
                           f'{loss_config.scale}; leave it None.')
      elif loss_config.scale is not None:
        hparams['scale'] = loss_config.scale
    return cls(kind, tuple(sorted(hparams.items())))

  @property
  def model_classifier(self) -> str:
    """The model head it needs: 'linear' (softmax) or 'cosine' (margins)."""
    return 'linear' if self.kind == 'softmax' else 'cosine'

  def training_logits(self, outputs: jax.Array, features: jax.Array,
                      labels: jax.Array) -> jax.Array:
    """Logits whose softmax cross-entropy is this loss."""
    if self.kind == 'softmax':
      return outputs
    return margin_lib.margin_logits(self.kind, outputs, labels, features,
                                    **dict(self.hparams))


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """A metric-learning term on the global batch, added to Eq. 5.

  Each replica's examples are the anchors; the all-gathered global batch
  holds the candidates, so pairs span replicas exactly as on one device.
  The replica's sum is divided by the global number of pairs (or anchors)
  and the gradients are `psum`-ed, which gives the gradient of the global
  mean (the candidates' share reaches their replicas through the transpose
  of the all-gather).

  Attributes:
    kind: 'contrastive' (all pairs, Hadsell et al. 2006, the paper's
      comparison) or 'triplet' (batch-hard, Hermans et al. 2017).
    weight: its weight in the objective.
    margin: the loss's margin (feature-distance units).
    normalize: L2-normalise the features first.
  """
  kind: str
  weight: float
  margin: float
  normalize: bool = False

  @classmethod
  def from_config(cls, loss_config: ml_collections.ConfigDict
                  ) -> Optional[PairLoss]:
    """From `config.loss.pair*`; None for `pair='none'`."""
    kind = loss_config.pair
    if kind not in PAIR_LOSSES:
      raise ValueError(f'Unknown loss.pair {kind!r}; expected one of '
                       f'{PAIR_LOSSES}.')
    if kind == 'none':
      return None
    if loss_config.pair_weight <= 0 or loss_config.pair_margin <= 0:
      raise ValueError(
          f'loss.pair_weight and loss.pair_margin must be positive for '
          f'pair={kind!r}, got {loss_config.pair_weight} and '
          f'{loss_config.pair_margin}.')
    return cls(kind, float(loss_config.pair_weight),
               float(loss_config.pair_margin), bool(loss_config.pair_normalize))

  def sums(self, features: jax.Array, labels: jax.Array, weights: jax.Array,
           axis_name: Optional[str]
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This replica's loss sum; the global pair (or anchor) count; and this
    replica's positives: same-identity pairs (contrastive) or anchors that
    have one (triplet), which random batches of many identities make rare."""
    if axis_name is None:
      candidates, offset = (features, labels, weights), None
    else:
      candidates = jax.lax.all_gather((features, labels, weights), axis_name,
                                      axis=0, tiled=True)
      offset = jax.lax.axis_index(axis_name) * features.shape[0]
    if self.kind == 'contrastive':
      out = contrastive.contrastive_loss_sums(
          features, labels, weights, *candidates, margin=self.margin,
          anchor_offset=offset, normalize=self.normalize)
      count, positives = out['num_pairs'], out['num_positive_pairs']
    else:
      out = triplet.batch_hard_triplet_loss_sums(
          features, labels, weights, *candidates, margin=self.margin,
          anchor_offset=offset, normalize=self.normalize)
      count = positives = out['num_anchors']
    return out['loss'], psum(count, axis_name), positives



@dataclasses.dataclass(frozen=True)
class Objective:
  """The whole objective of a train step.

  Attributes:
    center_loss_weight: lambda of Eq. 5 (0: softmax only; the centers still
      move, so the center-loss metric stays meaningful).
    center_alpha: alpha of Eq. 4, the centers' rate.
    center_rule: `'paper'` (Eq. 4) or `'ema'` (see `update_centers`).
    center_normalize: the cosine center loss, features and centers on the
      unit sphere.
    classifier_loss: the classification term.
    pair_loss: an optional contrastive or triplet term.
  """
  center_loss_weight: float
  center_alpha: float
  center_rule: str = 'paper'
  center_normalize: bool = False
  classifier_loss: ClassifierLoss = ClassifierLoss()
  pair_loss: Optional[PairLoss] = None

  def __post_init__(self):
    center.check_update_options(self.center_alpha, self.center_rule)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Objective:
    """From `config.center_loss` (`weight`, `alpha`, `rule`, `normalize`)
    and `config.loss`."""
    return cls(center_loss_weight=config.center_loss.weight,
               center_alpha=config.center_loss.alpha,
               center_rule=config.center_loss.rule,
               center_normalize=config.center_loss.normalize,
               classifier_loss=ClassifierLoss.from_config(config.loss),
               pair_loss=PairLoss.from_config(config.loss))
