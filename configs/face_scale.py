"""Face-recognition scale: 131,072 identities, class-sharded, on a TPU pod.

The layout of the paper's face experiments at partial-FC scale: 512-d
features, 131,072 (2^17) classes, the (C, D) centers and the (D, C)
classifier kernel split along the classes over a 'classes' mesh axis of 8
devices (`class_shards`; mesh (devices / 8, 8) of ('batch', 'classes')),
bfloat16 compute, global batch 4096 under `jax.shard_map`, one process per
host started by `jax.distributed.initialize()`.

Launch on a Cloud TPU pod slice (every worker runs the same command; each
reads its share of every global batch, only process 0 writes metrics):

  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
      --command="cd centerloss_jax && python -m centerloss_jax.main \
          --config=configs/face_scale.py --workdir=gs://$BUCKET/face_scale"

The global batch must divide by the batch replicas (devices / 8) and the
classes by `class_shards`; change either with `--config.batch_size=...`,
`--config.class_shards=...`.

Honest status: NOT run at scale here. What is tested (on 8 fake CPU
devices) is the `runlocal` variant end to end and the class-sharded step's
equality with replicated training. It is a smoke test of the sharded machinery at
full size (memory, compile, communication), not a face experiment: it
trains LeNet++ with a 512-d feature on the Fashion-MNIST IDX files (labels
0-9 are valid among 131,072 classes), so its accuracy and feature metrics
mean nothing and no expected result or runtime is quoted. For a face run at
this scale, combine it with the face input and backbone of
configs/casia_webface_face_resnet.py (`input.source='identity_folders'`,
`model.name='face_resnet'`, an MS1M-size identity-folder export); the
class-sharded step supports softmax (+ center loss) only, not the margin or
pair losses.

`--config=configs/face_scale.py:runlocal`: a seconds-long CPU run of the same
code path (64 classes over 4 shards, 8-d features, batch 32, no
jax.distributed); run it on 8 devices, e.g. with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

import ml_collections

from configs import common
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The TPU-pod face-scale config; `arg='runlocal'` shrinks it for a CPU."""
  config = default.get_config()
  config.input.source = 'idx'
  # Not a known dataset name: class names are then '0'..'C-1', so any
  # num_classes is accepted (Fashion-MNIST's 10 names would not be).
  config.input.name = 'face_scale_smoke'
  config.input.num_classes = 131_072

  config.model.feature_dim = 512
  config.model.dtype = 'bfloat16'
  config.class_shards = 8
  config.parallel = 'shard_map'
  config.distributed.initialize = True

  # Face-recognition practice: SGD + momentum, cosine decay after warm-up;
  # lambda as the paper's face runs (0.003), alpha 0.5.
  config.center_loss.weight = 0.003
  config.center_loss.alpha = 0.5
  config.learning_rate = 0.1
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.num_epochs = 20.0
  config.batch_size = 4096
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  config.plot_features = False           # 512-d features: nothing to plot.

  if common.is_runlocal(arg):
    common.shrink_lenet_pp(config)
    config.input.num_classes = 64
    config.class_shards = 4
    config.model.feature_dim = 8
    config.model.stage_channels = (2, 2, 2)
    config.model.dtype = 'float32'       # bf16 is slow and loose on CPUs.
    config.batch_size = 32
    config.num_epochs = 1.0
    config.warmup_epochs = 0.0
    config.learning_rate = 0.01
    config.eval_every_steps = -1
    config.distributed.initialize = False
  return config
