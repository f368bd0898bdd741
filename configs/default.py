"""Default experiment: LeNet++ with 2-D features on Fashion-MNIST, offline.

Softmax + center loss (lambda 0.01, alpha 0.5), the reference Caffe MNIST
recipe on Fashion-MNIST read from the Debian package `dataset-fashion-mnist`
(IDX files under /usr/share/datasets/fashion-mnist), shortened to one epoch
(468 steps).

Launch:
  python -m centerloss_jax.main --config=configs/default.py --workdir=/tmp/cl

Expected result (seed 0, JAX 0.10.2; the committed records in
experiments/results/fashion_mnist_one_epoch): test accuracy 77.36%,
intra-class spread 2.686, spread / separation 0.202; the 2-D feature plot is
`<workdir>/features_step_468.png`. A rerun on the same machine repeats these
bit for bit; XLA:CPU results depend on the CPU's vector extensions, so
another CPU may give slightly different ones (each record names its CPU).
With `--config.center_loss.weight=0` (softmax only): 74.30%, spread /
separation 0.274. Over seeds 0, 1, 2 (`--config.seed`): 77.15 ± 1.61% with
center loss, 74.55 ± 0.51% without (docs/results.md).
Runtime: about 5 minutes on 2 CPU cores.

Softmax only: add `--config.center_loss.weight=0`.
A few-second run of a narrow LeNet++ on a data subset, for laptops and tests:
`--config=configs/default.py:runlocal`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default experiment's config; `arg='runlocal'` shrinks it."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.input = ml_collections.ConfigDict()
  config.input.source = 'idx'            # 'idx' (files in data_dir) or 'tfds'.
  config.input.name = 'fashion_mnist'    # TFDS name; also picks class names.
  # None: the Debian package's path (idx) or TFDS's default (tfds).
  config.input.data_dir = ml_collections.config_dict.placeholder(str)
  config.input.num_classes = 10
  # First N examples of a split, or None for all.
  config.input.train_subset = ml_collections.config_dict.placeholder(int)
  config.input.test_subset = ml_collections.config_dict.placeholder(int)
  config.input.crop_padding = 0          # Random-crop augmentation (pixels).
  config.input.flip = False              # Random horizontal flips.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'lenet_pp'
  config.model.feature_dim = 2
  config.model.stage_channels = (32, 64, 128)
  config.model.feature_activation = True  # PReLU on the feature (reference).
  config.model.dtype = 'float32'

  # The paper's Eq. 5 weight lambda and Eq. 4 rate alpha.
  config.center_loss = ml_collections.ConfigDict()
  config.center_loss.weight = 0.01
  config.center_loss.alpha = 0.5
  # Variants: 'ema' moves each center by alpha toward its class's batch mean
  # (Eq. 4 without n_j / (1 + n_j)); normalize=True is the cosine center
  # loss, features and centers on the unit sphere (for margin softmax).
  config.center_loss.rule = 'paper'
  config.center_loss.normalize = False

  # The classification loss, and the losses the paper compares the center
  # loss with (each combinable with it): 'softmax' (a linear classifier, the
  # paper's), or a margin softmax on a cosine classifier: 'sphereface',
  # 'cosface', 'arcface'.
  config.loss = ml_collections.ConfigDict()
  config.loss.classifier = 'softmax'
  # Margin-softmax settings; None: the kind's usual value (SphereFace m=4;
  # CosFace m=0.35, s=64; ArcFace m=0.5, s=64).
  config.loss.margin = ml_collections.config_dict.placeholder(float)
  config.loss.scale = ml_collections.config_dict.placeholder(float)
  config.loss.sphereface_blend = 5.0     # SphereFace's annealing lambda.
  # A metric-learning term on the global batch: 'none', 'contrastive'
  # (DeepID2-style, the paper's comparison) or 'triplet' (batch-hard).
  config.loss.pair = 'none'
  config.loss.pair_weight = 1.0
  config.loss.pair_margin = 1.0
  config.loss.pair_normalize = False     # L2-normalise features first.

  # The reference solver: SGD lr 0.01, momentum 0.9, weight decay 5e-4,
  # lr x0.8 at fixed steps.
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = 'piecewise'
  config.lr_boundaries = (5000, 8000, 10000)
  config.lr_decay_factor = 0.8
  config.warmup_epochs = 0.0
  # Clip the gradients to this global L2 norm before the optimizer (the norm
  # of all of them, a class-sharded classifier's shards included; logged as
  # grad_norm); None: no clipping, as the reference solver.
  config.grad_clip_norm = ml_collections.config_dict.placeholder(float)

  config.batch_size = 128                # Global batch, across all devices.
  # K > 0: batches of batch_size / K identities with K images each (P x K),
  # which the pair losses (loss.pair) need; 0: random batches.
  config.batch_images_per_identity = 0
  # One epoch, 468 steps: about 5 minutes on 2 CPU cores.
  config.num_epochs = 1.0
  config.num_train_steps = -1            # > 0 overrides num_epochs.
  config.parallel = 'jit'                # 'jit', 'pmap' or 'shard_map'.
  # > 1: split the centers and the classifier kernel along the classes over
  # a 'classes' mesh axis of this size (mesh (devices // n, n), shard_map only;
  # must divide num_classes). For 100K+ identities; 1: replicated.
  config.class_shards = 1

  # Multi-host: `initialize=True` starts jax.distributed; with no coordinator
  # address it detects the cluster (TPU pods, SLURM, ...). Each process reads
  # its share of every global batch.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False
  config.distributed.coordinator_address = (
      ml_collections.config_dict.placeholder(str))
  config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
  config.distributed.process_id = ml_collections.config_dict.placeholder(int)

  # Open-set evaluation, for datasets with verification pairs or an
  # identification set (faces; see centerloss_jax/evaluate.py).
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.mirror = True        # Concatenate image + mirror features.
  # PCA dimension fitted on the 9 training folds; None: no PCA.
  config.evaluation.pca_dim = ml_collections.config_dict.placeholder(int)
  config.evaluation.max_rank = 10        # CMC length of identification.
  config.evaluation.distractor_block_size = 65_536

  # The input pipeline (grain, centerloss_jax/data/pipeline.py); none of it
  # changes the batches. Worker processes making batches (0: this process),
  # threads making them ahead in each process (0: none), batches buffered
  # ahead, and batches moved to the devices ahead of the step.
  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.num_workers = 0
  config.pipeline.num_threads = 1
  config.pipeline.prefetch = 2
  config.pipeline.device_prefetch = 2

  config.log_every_steps = 50
  # Steps between evaluations (the closed-set test split and, for face
  # datasets, the open-set protocols, which cost far more: face configs give
  # steps); -1: at the end of every epoch.
  config.eval_every_steps = -1
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 3
  config.plot_features = True            # Scatter plot when features are 2-D.

  if common.is_runlocal(arg):
    common.shrink_lenet_pp(config)
  return config
