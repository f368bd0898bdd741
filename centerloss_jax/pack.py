"""Packs a face config's training folders once: decoded, aligned, ready.

  python -m centerloss_jax.pack --config=configs/casia_webface_face_resnet.py \
      --config.input.train_dir=/data/casia/images \
      --config.input.landmarks=/data/casia/landmarks.txt \
      --out_dir=/data/casia_packed --num_workers=8

then train with the same flags plus `--config.input.packed_dir=/data/casia_packed`:
the training images are read from the pack's memory-mapped uint8 shards,
with no decode and no alignment (`centerloss_jax.data.packed`). The pack is
made from the config's `input.train_dir`, `landmarks`, `image_shape` and
`min_images_per_identity`; a run whose tree or settings differ from the
pack's is refused (repack). Interrupted, the same command resumes after the
last finished shard. With `input.pairs_dir` and `input.pairs_file` set, the
verification set's images (LFW) are packed too, into
`<out_dir>/pairs_<pairs_name>`, where the trainer finds them (aligned with
`input.pairs_landmarks`); the identification sets stay in their folders.

Exit codes as `centerloss_jax.main`: 0 done, 1 on failure with the reason
(e.g. the corrupt image's path) on the last line of stderr.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from centerloss_jax.data import packed
from centerloss_jax.data import packing
from centerloss_jax.training import lifecycle

FLAGS = flags.FLAGS
flags.DEFINE_string('out_dir', None, 'The pack directory to write.')
flags.DEFINE_integer('num_workers', 0, 'Worker processes decoding and '
                     'aligning (0: this process).')
flags.DEFINE_integer('images_per_shard', 4096, 'Images per shard file.')
config_flags.DEFINE_config_file('config', None, 'The face experiment config '
                                'whose input.train_dir to pack.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'out_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  lifecycle.run_main(_pack)


def _pack() -> None:
  config = FLAGS.config.input
  if config.source != 'identity_folders':
    raise ValueError(f'input.source={config.source!r}: only '
                     "'identity_folders' training trees are packed.")
  manifest = packing.pack_identity_folders(
      train_dir=config.train_dir, out_dir=FLAGS.out_dir,
      image_shape=config.image_shape, landmarks=config.landmarks,
      min_images_per_identity=config.min_images_per_identity,
      images_per_shard=FLAGS.images_per_shard,
      num_workers=FLAGS.num_workers)
  print(f'Packed {manifest["num_images"]} images of '
        f'{len(manifest["identities"])} identities into {FLAGS.out_dir}')
  if config.pairs_dir is not None and config.pairs_file is not None:
    pairs_dir = packed.pairs_pack_dir(FLAGS.out_dir, config.pairs_name)
    manifest = packing.pack_pairs_set(
        pairs_dir=config.pairs_dir, pairs_file=config.pairs_file,
        out_dir=pairs_dir, image_shape=config.image_shape,
        landmarks=config.pairs_landmarks,
        images_per_shard=FLAGS.images_per_shard,
        num_workers=FLAGS.num_workers)
    print(f'Packed the {manifest["num_images"]} {config.pairs_name} pair '
          f'images into {pairs_dir}')
  print(f'Train with --config.input.packed_dir={FLAGS.out_dir}')


if __name__ == '__main__':
  app.run(main, flags_parser=lifecycle.parse_flags)
