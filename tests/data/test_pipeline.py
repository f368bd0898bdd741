"""The grain pipeline makes exactly the batches of `epoch_batches`, in order,
with or without worker processes and threads; each process's share and the
padding cover every example once per epoch."""

import os

import numpy as np
from PIL import Image
import pytest

from centerloss_jax.data import batching
from centerloss_jax.data import image_files
from centerloss_jax.data import pipeline
from centerloss_jax.data import types


def _in_memory_split(num_examples=90, num_classes=6, shape=(6, 5, 1)):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples,) + shape, dtype=np.uint8)
  labels = (np.arange(num_examples) % num_classes).astype(np.int32)
  return types.Split(images=images, labels=labels, name='train')


def _folder_split(root, num_examples=40, shape=(8, 6, 3)):
  """PNG files decoded lazily by `ImageFiles`, as identity folders are."""
  rng = np.random.default_rng(1)
  paths = []
  for i in range(num_examples):
    path = os.path.join(root, f'id_{i % 5}', f'{i}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    paths.append(path)
  labels = (np.arange(num_examples) % 5).astype(np.int32)
  return types.Split(images=image_files.ImageFiles(paths, shape),
                     labels=labels, name='train')


def _loop_batches(split, reader_kwargs, *, num_epochs, first_step):
  """What the trainer fed before the pipeline: epoch_batches, epoch by epoch."""
  reader = batching.BatchReader(split, **reader_kwargs)
  out = []
  for epoch in range(num_epochs):
    out.extend(batching.epoch_batches(split, epoch=epoch, **reader_kwargs))
  return out[first_step:], reader


def _assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for step, (a, b) in enumerate(zip(got, expected)):
    assert set(a) == set(b) == {'image', 'label', 'weight'}
    for key in a:
      assert a[key].dtype == b[key].dtype, (step, key)
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'{step} {key}')


@pytest.mark.parametrize('reader_kwargs', [
    dict(global_batch_size=16, seed=3, shuffle=True, drop_remainder=True,
         augment_fn=batching.make_augment_fn(crop_padding=2, flip=True)),
    # This process's half of each global batch, padded last batches.
    dict(global_batch_size=16, seed=3, shuffle=True, process_index=1,
         process_count=2),
    # P x K batches for the pair losses.
    dict(global_batch_size=12, seed=5, shuffle=True, drop_remainder=True,
         images_per_identity=3),
])
@pytest.mark.parametrize('num_threads', [0, 2])
def test_pipeline_makes_the_loops_batches_across_epochs(reader_kwargs,
                                                        num_threads):
  split = _in_memory_split()
  # From the middle of the first epoch (a resumed run) into the third.
  expected, reader = _loop_batches(split, reader_kwargs, num_epochs=3,
                                   first_step=3)
  got = list(pipeline.batch_iterator(
      reader, first_step=3, num_steps=3 * reader.steps_per_epoch,
      num_threads=num_threads))
  _assert_same_batches(got, expected)


def test_worker_processes_make_the_same_batches_from_image_files(tmp_path):
  split = _folder_split(str(tmp_path))
  reader_kwargs = dict(global_batch_size=8, seed=0, shuffle=True,
                       drop_remainder=True,
                       augment_fn=batching.make_augment_fn(flip=True))
  expected, reader = _loop_batches(split, reader_kwargs, num_epochs=2,
                                   first_step=1)
  batches = pipeline.batch_iterator(
      reader, first_step=1, num_steps=2 * reader.steps_per_epoch,
      num_workers=2, num_threads=1)
  try:
    got = list(batches)
  finally:
    batches.close()
  _assert_same_batches(got, expected)


def test_process_shares_cover_each_example_once_per_epoch():
  split = _in_memory_split(num_examples=45)
  seen = []
  for process_index in range(2):
    reader = batching.BatchReader(
        split, global_batch_size=8, seed=1, shuffle=True,
        process_index=process_index, process_count=2)
    for step in range(reader.steps_per_epoch, 2 * reader.steps_per_epoch):
      batch = reader(step)  # The second epoch.
      real = batch['weight'] > 0
      # Each image identifies its example (random pixels, all distinct).
      flat = batch['image'][real].reshape(real.sum(), -1)
      seen.extend(map(bytes, (flat * 128 + 127.5).round().astype(np.uint8)))
  expected = [bytes(image.reshape(-1)) for image in split.images]
  assert sorted(seen) == sorted(expected)


def test_bad_pipeline_settings_are_named():
  reader = batching.BatchReader(_in_memory_split(), global_batch_size=8,
                                seed=0, shuffle=True)
  with pytest.raises(ValueError, match='num_workers must be >= 0, got -1'):
    pipeline.batch_iterator(reader, first_step=0, num_steps=4,
                            num_workers=-1)
  with pytest.raises(ValueError, match='first_step < num_steps'):
    pipeline.batch_iterator(reader, first_step=4, num_steps=4)


def test_training_batches_place_ahead_in_order():
  reader = batching.BatchReader(_in_memory_split(), global_batch_size=8,
                                seed=2, shuffle=True, drop_remainder=True)
  placed = []

  def place(batch):
    placed.append(batch)
    return batch['label']

  batches = pipeline.TrainingBatches(reader, num_steps=6, place=place,
                                     device_prefetch=2)
  assert not placed, 'nothing starts before the first batch is asked for'
  first = next(batches)
  assert len(placed) == 2  # One transfer ahead of the step.
  got = [first] + list(batches)
  np.testing.assert_array_equal(
      np.stack(got), np.stack([reader(step)['label'] for step in range(6)]))
  assert batches.get_state()['next_step'] == 6


def test_a_saved_input_state_resumes_at_the_exact_batch_with_other_workers():
  split = _in_memory_split()
  reader = batching.BatchReader(split, global_batch_size=8, seed=4,
                                shuffle=True, drop_remainder=True,
                                augment_fn=batching.make_augment_fn(flip=True))
  num_steps = 2 * reader.steps_per_epoch
  first = pipeline.TrainingBatches(reader, num_steps=num_steps,
                                   num_threads=2, device_prefetch=3)
  for _ in range(reader.steps_per_epoch + 2):  # Into the second epoch.
    next(first)
  state = first.get_state()
  first.close()
  assert state == {'next_step': reader.steps_per_epoch + 2, 'epoch': 1,
                   'step_in_epoch': 2,
                   'steps_per_epoch': reader.steps_per_epoch,
                   'global_batch_size': 8, 'seed': 4}
  resumed = pipeline.TrainingBatches(reader, num_steps=num_steps,
                                     num_workers=2, num_threads=1)
  resumed.set_state(state)
  try:
    got = list(resumed)
  finally:
    resumed.close()
  _assert_same_batches(got, [reader(step) for step in
                             range(state['next_step'], num_steps)])


def test_bad_or_changed_input_states_are_named(caplog):
  reader = batching.BatchReader(_in_memory_split(), global_batch_size=8,
                                seed=0, shuffle=True)
  batches = pipeline.TrainingBatches(reader, num_steps=4)
  with pytest.raises(ValueError, match='non-negative integer next_step'):
    batches.set_state({'next_step': -1})
  batches.set_state({'next_step': 6})  # Past the end (a shorter run): empty.
  assert list(batches) == []
  with pytest.raises(ValueError, match='device_prefetch must be >= 0, got -2'):
    pipeline.TrainingBatches(reader, num_steps=4, device_prefetch=-2)
  # A resume with another batch size continues by step, and says so.
  batches.set_state({'next_step': 2, 'global_batch_size': 16, 'seed': 0})
  assert 'global_batch_size 16 -> 8' in caplog.text
  assert batches.next_step == 2
