"""Face recognition at partial-FC scale: class-sharded, multi-host, on a pod.

The paper's face recipe (`configs/casia_webface_face_resnet.py`: the
27-layer FaceResNet, 512-d features, softmax + center loss at lambda 0.003,
alpha 0.5) on a data set of MS1M size, laid out for a TPU pod: the (C, D)
centers and the (D, C) classifier kernel split along the classes over a
'classes' mesh axis of 8 devices (`class_shards`; mesh (devices / 8, 8) of
('batch', 'classes')), bfloat16 compute, global batch 4096 under
`jax.shard_map`, one process per host started by
`jax.distributed.initialize()`. The state is created already split, each
process saves and restores its own shards, and the communication per step
does not depend on the number of classes (see docs/benchmarks.md).

Data: one folder per identity (an MS1M-style export, `<train_dir>/<id>/*.jpg`,
aligned or with a landmark list), packed once into memory-mapped records.
`input.num_classes` is the classifier's size: at least the identities found,
and a multiple of `class_shards`; the classes past the identities have no
images (131,072 = 2^17 covers MS1MV2's 85,742 identities). Pack, then train;
every worker of the slice runs the same command, each reads its share of
every global batch, and only process 0 writes metrics:

  python -m centerloss_jax.pack --config=configs/face_scale.py \
      --config.input.train_dir=/data/ms1m/images \
      --out_dir=/data/ms1m_packed --num_workers=32
  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
      --command="cd centerloss_jax && python -m centerloss_jax.main \
          --config=configs/face_scale.py --workdir=gs://$BUCKET/face_scale \
          --config.input.train_dir=/data/ms1m/images \
          --config.input.packed_dir=/data/ms1m_packed \
          --config.input.pairs_dir=/data/lfw \
          --config.input.pairs_file=/data/lfw/pairs.txt"

(the pack and the LFW folders on a disk every worker mounts). Margin heads
run class-sharded too: `--config.loss.classifier=arcface` (or `cosface`,
`sphereface`), with or without the center loss; `--config.grad_clip_norm=`
clips by the norm of all the shards together. The global batch must divide
by the batch replicas (devices / 8) and the classes by `class_shards`.

No result at scale is recorded in this repository. What is tested, on 8
fake CPU devices, is the `runlocal` variant end to end (in one
process and in two), the class-sharded steps' equality with replicated
training (softmax, SphereFace, CosFace, ArcFace, clipping), and the peak
memory of the CLI at 4M classes (`benchmarks/state_memory_benchmark.py`).

`--config=configs/face_scale.py:runlocal`: a seconds-long CPU run of the
same code path on the synthetic identities (`configs/synthetic_faces.py`'s
runlocal set: 16 identities, open-set verification and identification on
unseen ones), 64 classes over 4 shards (48 of them padding), no
jax.distributed; run it on 8 devices, e.g. with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

import ml_collections

from configs import casia_webface_face_resnet
from configs import common
from configs import synthetic_faces


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The TPU-pod face-scale config; `arg='runlocal'` shrinks it for a CPU."""
  if common.is_runlocal(arg):
    return _runlocal_config()
  config = casia_webface_face_resnet.get_config()
  config.input.name = 'face_scale'
  config.input.num_classes = 131_072
  _shard_classes(config, class_shards=8)
  config.distributed.initialize = True

  # Face-recognition practice at this batch: SGD + momentum, cosine decay
  # after a one-epoch warm-up; the paper's lambda and alpha.
  config.learning_rate = 0.1
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.num_epochs = 20.0
  config.num_train_steps = -1
  config.batch_size = 4096
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config


def _runlocal_config() -> ml_collections.ConfigDict:
  """Seconds on 8 CPU devices: the synthetic identities, 4 class shards."""
  config = synthetic_faces.get_config('runlocal')
  config.input.num_classes = 64          # 16 identities + 48 padding.
  _shard_classes(config, class_shards=4)
  return config


def _shard_classes(config: ml_collections.ConfigDict, *,
                   class_shards: int) -> None:
  """The class-sharded layout: a ('batch', 'classes') mesh under shard_map."""
  config.class_shards = class_shards
  config.parallel = 'shard_map'
