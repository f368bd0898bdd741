"""The paper's face recipe: 27-layer residual net on CASIA-WebFace, LFW test.

Softmax + center loss with the paper's face settings (Wen et al. 2016,
Sec. 4.2 and 4.3): lambda 0.003, alpha 0.5, 512-d features, 112x96 aligned
RGB faces normalised by (x - 127.5) / 128 with random horizontal flips,
batch 256, SGD lr 0.1 (momentum 0.9, weight decay 5e-4) divided by 10 at 16K
and 24K steps, stopped at 28K. The backbone is the 27-conv-layer residual
network of the public reference model (`models.FaceResNet`), in bfloat16 on
accelerators. The paper trained on 0.7M images of 17,189 identities
(CASIA-WebFace + CACD2000 + Celebrity+); this config uses CASIA-WebFace
alone (10,575 identities, ~0.49M images), the usual public reproduction.

Data preparation (nothing is downloaded by this code; no face detector is
bundled):
1. CASIA-WebFace as one folder per identity (`<train_dir>/<id>/<n>.jpg`,
   the usual export), and a 5-landmark file for it, one line per image:
   `<id>/<n>.jpg [label] x1 y1 ... x5 y5` (left eye, right eye, nose, left
   and right mouth corner; the lists shipped with SphereFace have this
   form). Each image is then aligned by a similarity transform to the
   standard 112x96 template (`centerloss_jax.data.alignment`). Without a
   landmark file images are centre-cropped and resized, which is only
   right for an export that is already aligned at 112x96.
2. LFW (`<pairs_dir>/<name>/<name>_<NNNN>.jpg`, the layout of the LFW
   site's `lfw.tgz`), its `pairs.txt` (10 folds x (300 + 300) pairs) and an
   LFW landmark file in the format above.
3. Point the config at them:

  python -m centerloss_jax.main --config=configs/casia_webface_face_resnet.py \
      --workdir=runs/casia_face_resnet \
      --config.input.train_dir=/data/casia/images \
      --config.input.landmarks=/data/casia/landmarks.txt \
      --config.input.pairs_dir=/data/lfw \
      --config.input.pairs_file=/data/lfw/pairs.txt \
      --config.input.pairs_landmarks=/data/lfw/landmarks.txt

  then, or on any checkpoint, `python -m centerloss_jax.evaluate
  --workdir=runs/casia_face_resnet`: it reads the run's config from the
  workdir (add `--config.evaluation.pca_dim=...` for the paper's PCA, or
  `--config.input.pairs_dir=...` for other pairs).
4. MegaFace-style identification (optional): `--config.input.probe_dir=`
   (probe identities, one folder each, e.g. FaceScrub) and
   `--config.input.distractor_dir=` (distractor images at any depth), each
   with an optional `..._landmarks` list.

On 8 accelerators add `--config.parallel=shard_map` (batch 256 = 32 each).

Expected result: the paper reports 99.28% LFW accuracy for softmax + center
loss (97.37% softmax only) with its larger training set; public
reproductions of the Caffe model report 98.6-98.9% (~99.3% with PCA), as
collected in the project's paper notes. No result of this config is
recorded in this repository, so none is quoted here; the `runlocal` variant
(a narrow network on a tiny folder tree written by the test) is what the
tests run.
Softmax only: `--config.center_loss.weight=0`; ArcFace:
`--config.loss.classifier=arcface`.
"""

import ml_collections

from configs import common
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CASIA-WebFace / LFW config; `arg='runlocal'` shrinks it."""
  config = default.get_config()
  config.input = ml_collections.ConfigDict()
  config.input.source = 'identity_folders'
  config.input.name = 'casia_webface'
  config.input.train_dir = ml_collections.config_dict.placeholder(str)
  config.input.landmarks = ml_collections.config_dict.placeholder(str)
  config.input.image_shape = (112, 96, 3)
  config.input.num_classes = 10_575       # Must match the identity folders.
  config.input.min_images_per_identity = 1  # Fewer: the identity is dropped.
  # One image of each identity (a seeded random one: 'random'; or the last by
  # sorted file name: 'last') is the closed-set test split (softmax accuracy
  # and feature compactness on the training identities).
  config.input.test_images_per_identity = 1
  config.input.test_split = 'random'
  config.input.split_seed = 0
  config.input.pairs_dir = ml_collections.config_dict.placeholder(str)
  config.input.pairs_file = ml_collections.config_dict.placeholder(str)
  config.input.pairs_landmarks = ml_collections.config_dict.placeholder(str)
  config.input.pairs_name = 'lfw'
  # MegaFace-style identification (e.g. FaceScrub probes in identity
  # folders, the MegaFace distractors below one folder); None: none.
  config.input.probe_dir = ml_collections.config_dict.placeholder(str)
  config.input.distractor_dir = ml_collections.config_dict.placeholder(str)
  config.input.probe_landmarks = ml_collections.config_dict.placeholder(str)
  config.input.distractor_landmarks = (
      ml_collections.config_dict.placeholder(str))
  config.input.identification_name = 'megaface'
  # A pack of train_dir (python -m centerloss_jax.pack): images read ready,
  # with no decode or alignment; None reads the folders.
  config.input.packed_dir = ml_collections.config_dict.placeholder(str)
  config.input.train_subset = ml_collections.config_dict.placeholder(int)
  config.input.test_subset = ml_collections.config_dict.placeholder(int)
  config.input.crop_padding = 0
  config.input.flip = True

  config.model = ml_collections.ConfigDict()
  config.model.name = 'face_resnet'
  config.model.feature_dim = 512
  # The reference's widths and blocks (27 conv layers); narrow them for small
  # datasets, e.g. --config.model.stage_channels='(16,32,64,128)'.
  config.model.stem_channels = (32, 64)
  config.model.stage_channels = (64, 128, 256, 512)
  config.model.stage_blocks = (1, 2, 5, 3)
  config.model.dtype = 'bfloat16'

  config.center_loss.weight = 0.003
  config.center_loss.alpha = 0.5

  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = 'piecewise'
  config.lr_boundaries = (16_000, 24_000)
  config.lr_decay_factor = 0.1
  config.batch_size = 256
  config.num_train_steps = 28_000
  config.parallel = 'jit'

  config.log_every_steps = 100
  config.eval_every_steps = 4_000
  config.checkpoint_every_steps = 2_000
  config.plot_features = False

  if common.is_runlocal(arg):
    apply_runlocal(config)
  return config


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
  """A narrow FaceResNet on small images, for tests and laptops.

  The data paths still have to be given (the tests write a tiny folder tree
  and pairs file); `num_classes` must match its identity folders.
  """
  config.input.image_shape = (56, 48, 3)
  config.input.num_classes = 8
  common.shrink_face_resnet(config)
  config.learning_rate = 0.01
  config.lr_boundaries = (4, 8)
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
