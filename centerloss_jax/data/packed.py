"""Packed face records: identity folders decoded and aligned once, then read
as memory-mapped uint8 arrays with no decode and no alignment.

`pack_identity_folders` (the command: `python -m centerloss_jax.pack`) reads a
training tree the way `face_folders.load_identity_folders` does (sorted
identity folders, sorted files, optional 5-landmark alignment) and writes::

  <pack_dir>/images-00000.u8 ...   raw (n, H, W, C) uint8 shards
  <pack_dir>/labels.npy            int32 (N,) labels
  <pack_dir>/manifest.json         counts, identities, shape, shards with
                                   their CRC-32, and the source fingerprint

The manifest is written last: a pack without one is incomplete and never
read. A killed or failed pack keeps its finished shards (`progress.json`,
each with a fingerprint of its own files) and a rerun reuses every shard
whose files did not change; a corrupt image stops it with the file's name
and leaves no shard half-written.

`open_pack` refuses a pack that is stale or mismatched: another image shape
or landmark list, or a source tree whose files changed since (the source
fingerprint covers every file's relative path, size and modification time),
or a shard whose size or CRC-32 differs from the manifest's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zlib
from typing import Any, Optional, Sequence

from absl import logging
import grain
import numpy as np

from centerloss_jax.data.image_files import check_image_shape
from centerloss_jax.data.image_files import ImageFiles

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
PROGRESS = 'progress.json'
LABELS = 'labels.npy'
# 4,096 images of 112x96x3 are 132 MB a shard: large reads, few files.
DEFAULT_IMAGES_PER_SHARD = 4096


class StalePackError(ValueError):
  """A pack that does not match its source tree or the requested settings."""


def source_fingerprint(paths: Sequence[str], root: str, *,
                       image_shape: Sequence[int],
                       landmarks: Optional[str]) -> str:
  """sha256 over what a pack is made from: the files and the settings.

  Each file's path relative to `root`, size and modification time (not its
  bytes: stat-ing 0.5M files takes seconds, reading them minutes), the
  image shape, and the landmark list's bytes.
  """
  return _files_digest(paths, root, _settings_digest(image_shape, landmarks))


def _settings_digest(image_shape: Sequence[int],
                     landmarks: Optional[str]) -> bytes:
  digest = hashlib.sha256(
      json.dumps(list(check_image_shape(image_shape))).encode())
  if landmarks is not None:
    with open(landmarks, 'rb') as f:
      digest.update(hashlib.sha256(f.read()).digest())
  return digest.digest()


def _files_digest(paths: Sequence[str], root: str, settings: bytes) -> str:
  digest = hashlib.sha256(settings)
  for path in paths:
    info = os.stat(path)
    digest.update(f'{os.path.relpath(path, root)}\0{info.st_size}\0'
                  f'{info.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 24):
      crc = zlib.crc32(chunk, crc)
  return crc


def _write_json(path: str, value: Any) -> None:
  temporary = f'{path}.tmp'
  with open(temporary, 'w') as f:
    json.dump(value, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def pack_images(images: ImageFiles, labels: np.ndarray,
                identities: Sequence[str], out_dir: str, *, root: str,
                source: dict,
                images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
                num_workers: int = 0) -> dict:
  """Decodes (and aligns) every image of `images` into a pack in `out_dir`.

  Args:
    images: the lazy images, in the order the pack keeps them.
    labels: (N,) their labels.
    identities: the name of each label.
    out_dir: the pack directory (created; a finished pack there with the
      same source is kept as it is).
    root: the directory the image paths are relative to in fingerprints.
    source: what the pack is made from, stored in the manifest, with its
      'landmarks' (the list `images` are aligned with, or None); the
      manifest adds the `source_fingerprint`, which decides whether a
      previous pack or progress is reused.
    images_per_shard: images per shard file.
    num_workers: grain worker processes decoding (0: this process).

  Returns:
    The manifest.

  Raises:
    ValueError: an image that cannot be decoded or aligned, naming it; the
      shard being written is removed, finished shards stay for a resume.
  """
  if images_per_shard < 1:
    raise ValueError(f'images_per_shard must be >= 1, got {images_per_shard}.')
  source = dict(source, fingerprint=source_fingerprint(
      images.paths, root, image_shape=images.shape[1:],
      landmarks=source['landmarks']))
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest.get('source', {}).get('fingerprint') == source['fingerprint']:
      logging.info('%s already holds this pack; nothing to do.', out_dir)
      return manifest
    os.remove(manifest_path)  # Stale: repacked below.
  progress_path = os.path.join(out_dir, PROGRESS)
  previous = {}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      previous = {shard['file']: shard for shard in json.load(f)['shards']}
  shape = images.shape[1:]
  num_images = len(images)
  num_shards = -(-num_images // images_per_shard)
  settings = _settings_digest(shape, source['landmarks'])
  done, decoded, start_time = [], 0, time.perf_counter()
  for index in range(num_shards):
    begin = index * images_per_shard
    end = min(begin + images_per_shard, num_images)
    name = f'images-{index:05d}.u8'
    path = os.path.join(out_dir, name)
    # A shard is reused when its own files (and the settings) are as they
    # were: an interrupted pack, or one whose tree changed elsewhere.
    key = _files_digest(images.paths[begin:end], root, settings)
    old = previous.get(name)
    if (old is not None and old['source'] == key
        and old['num_images'] == end - begin
        and _shard_is_sound(out_dir, old, int(np.prod(shape)))):
      done.append(old)
      continue
    temporary = f'{path}.tmp'
    try:
      _write_shard(images, begin, end, temporary, num_workers=num_workers)
    except BaseException:
      if os.path.exists(temporary):
        os.remove(temporary)
      raise
    os.replace(temporary, path)
    done.append({'file': name, 'num_images': end - begin,
                 'crc32': _crc32(path), 'source': key})
    _write_json(progress_path, {'shards': done + [
        s for n, s in previous.items() if n not in {d['file'] for d in done}]})
    decoded += end - begin
    rate = decoded / max(time.perf_counter() - start_time, 1e-9)
    logging.info('Packed %d/%d images (%.0f images/s), ETA %.0f s.', end,
                 num_images, rate, (num_images - end) / rate)
  np.save(os.path.join(out_dir, LABELS), np.asarray(labels, np.int32))
  manifest = {'format_version': FORMAT_VERSION, 'image_shape': list(shape),
              'num_images': num_images, 'identities': list(identities),
              'labels_file': LABELS, 'shards': done, 'source': source}
  _write_json(manifest_path, manifest)
  os.remove(progress_path)
  return manifest


def _write_shard(images: ImageFiles, begin: int, end: int, path: str, *,
                 num_workers: int) -> None:
  """Images `begin..end - 1`, decoded by grain (in order), into `path`."""
  out = np.memmap(path, dtype=np.uint8, mode='w+',
                  shape=(end - begin,) + images.shape[1:])
  decoded = grain.MapDataset.range(begin, end).map(images.read)
  decoded = decoded.to_iter_dataset(grain.ReadOptions(num_threads=1))
  if num_workers:
    decoded = decoded.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers))
  iterator = iter(decoded)
  try:
    for offset, image in enumerate(iterator):
      out[offset] = image
  finally:
    getattr(iterator, 'close', lambda: None)()
  out.flush()
  del out


def _shard_is_sound(pack_dir: str, shard: dict,
                    image_bytes: Optional[int] = None) -> bool:
  path = os.path.join(pack_dir, shard['file'])
  if not os.path.exists(path):
    return False
  if image_bytes is not None and (
      os.path.getsize(path) != shard['num_images'] * image_bytes):
    return False
  return _crc32(path) == shard['crc32']


@dataclasses.dataclass
class PackedImages:
  """A lazy uint8 `(N, H, W, C)` array over a pack's memory-mapped shards.

  Indexed like `ImageFiles` (an int or an integer array: a gather from the
  shards, with no decode; a slice or `subset`: still lazy). Picklable
  (grain workers reopen the maps).
  """
  dtype = np.dtype(np.uint8)
  ndim = 4

  pack_dir: str
  shard_files: tuple[str, ...]
  shard_sizes: tuple[int, ...]
  image_shape: tuple[int, int, int]
  indices: Optional[np.ndarray] = None  # Into the whole pack; None: all.

  def __post_init__(self):
    self._starts = np.cumsum((0,) + tuple(self.shard_sizes))
    self._maps = None

  @property
  def shape(self) -> tuple[int, int, int, int]:
    n = int(self._starts[-1]) if self.indices is None else len(self.indices)
    return (n,) + tuple(self.image_shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getstate__(self):
    # Memory maps do not travel to worker processes: reopened there.
    return dict(self.__dict__, _maps=None)

  def _shards(self) -> list[np.memmap]:
    if self._maps is None:
      self._maps = [
          np.memmap(os.path.join(self.pack_dir, name), dtype=np.uint8,
                    mode='r', shape=(size,) + tuple(self.image_shape))
          for name, size in zip(self.shard_files, self.shard_sizes)]
    return self._maps

  def subset(self, indices: np.ndarray) -> PackedImages:
    """The images at `indices` (of this array), still lazy."""
    indices = np.asarray(indices, np.int64)
    whole = indices if self.indices is None else self.indices[indices]
    return dataclasses.replace(self, indices=whole)

  def __getitem__(self, index: Any) -> Any:
    if isinstance(index, slice):
      return self.subset(np.arange(len(self))[index])
    positions = np.asarray(index, np.int64)
    n = len(self)
    if ((positions < -n) | (positions >= n)).any():
      raise IndexError(f'Image index out of range for {n} packed images.')
    positions = positions % n
    if self.indices is not None:
      positions = self.indices[positions]
    flat = positions.reshape(-1)
    shard_of = np.searchsorted(self._starts, flat, side='right') - 1
    out = np.empty((len(flat),) + tuple(self.image_shape), np.uint8)
    shards = self._shards()
    for shard in np.unique(shard_of):
      rows = shard_of == shard
      out[rows] = shards[shard][flat[rows] - self._starts[shard]]
    return out.reshape(positions.shape + tuple(self.image_shape))

  def __array__(self, dtype=None, copy=None):
    del copy
    images = self[np.arange(len(self))]
    return images if dtype is None else images.astype(dtype)


def pairs_pack_dir(pack_dir: str, pairs_name: str) -> str:
  """Where the pack command puts a verification set's pack in `pack_dir`."""
  return os.path.join(pack_dir, f'pairs_{pairs_name}')


def open_pack(pack_dir: str, *, image_shape: Sequence[int],
              fingerprint: Optional[str] = None
              ) -> tuple[PackedImages, np.ndarray, tuple[str, ...]]:
  """The images, labels and identity names of a finished pack.

  Args:
    pack_dir: the pack directory.
    image_shape: the (H, W, C) the run expects.
    fingerprint: the source tree's current `source_fingerprint`, or None to
      skip the staleness check (the tree is not on this machine).

  Raises:
    FileNotFoundError: no manifest (no pack, or an unfinished one).
    StalePackError: another image shape, a changed source, or a shard whose
      size or CRC-32 differs from the manifest, each named.
  """
  manifest_path = os.path.join(pack_dir, MANIFEST)
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(
        f'No {MANIFEST} in {pack_dir}: not a pack, or packing did not finish '
        '(rerun python -m centerloss_jax.pack to resume it).')
  with open(manifest_path) as f:
    manifest = json.load(f)
  image_shape = check_image_shape(image_shape)
  if tuple(manifest['image_shape']) != image_shape:
    raise StalePackError(
        f'{pack_dir} holds images of shape {tuple(manifest["image_shape"])}, '
        f'this run expects {image_shape}: repack with its image_shape.')
  if fingerprint is not None and fingerprint != manifest['source'][
      'fingerprint']:
    source = manifest['source']
    raise StalePackError(
        f'{pack_dir} was packed from another state of '
        f'{source.get("train_dir") or source.get("pairs_dir")} (files added, '
        'removed or modified since, another landmark list, pairs file or '
        'min_images_per_identity): repack it with python -m '
        'centerloss_jax.pack.')
  image_bytes = int(np.prod(image_shape))
  for shard in manifest['shards']:
    if not _shard_is_sound(pack_dir, shard, image_bytes):
      raise StalePackError(
          f'Shard {shard["file"]} of {pack_dir} is missing or differs from '
          'its size or CRC-32 in the manifest: repack it.')
  labels = np.load(os.path.join(pack_dir, manifest['labels_file']))
  images = PackedImages(
      pack_dir, tuple(s['file'] for s in manifest['shards']),
      tuple(s['num_images'] for s in manifest['shards']), image_shape)
  return images, labels.astype(np.int32), tuple(manifest['identities'])
