"""Tests of data.pipeline: the grain pipeline makes exactly the batches of
`batching.epoch_batches`, in order, with or without worker processes and
threads; `TrainingBatches` places them ahead and saves and restores its
position."""

import os

import numpy as np
import pytest

from centerloss_jax.data import batching
from centerloss_jax.data import image_files
from centerloss_jax.data import pipeline
from centerloss_jax.data import types
from face_trees import write_random_pngs


def _in_memory_split(num_examples=90, num_classes=6, shape=(6, 5, 1)):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples,) + shape, dtype=np.uint8)
  labels = (np.arange(num_examples) % num_classes).astype(np.int32)
  return types.Split(images=images, labels=labels, name='train')


def _folder_split(root, num_examples=40, shape=(8, 6, 3)):
  """PNG files decoded lazily by `ImageFiles`, as identity folders are."""
  paths = write_random_pngs(
      root, [os.path.join(f'id_{i % 5}', f'{i}.png')
             for i in range(num_examples)], shape, seed=1)
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


def _closed_after(batches):
  """Every batch of a pipeline iterator, closing it (its workers) after."""
  try:
    return list(batches)
  finally:
    batches.close()


def _reader(**kwargs):
  """A reader of the 90-example in-memory split."""
  return batching.BatchReader(_in_memory_split(), **kwargs)


# ---------------------------------------------------------------------------
# batch_iterator.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('reader_kwargs', [
    dict(global_batch_size=16, seed=3, shuffle=True, drop_remainder=True,
         augment_fn=batching.make_augment_fn(crop_padding=2, flip=True)),
    # This process's half of each global batch, padded last batches.
    dict(global_batch_size=16, seed=3, shuffle=True, process_index=1,
         process_count=2),
    # P x K batches for the pair losses.
    dict(global_batch_size=12, seed=5, shuffle=True, drop_remainder=True,
         images_per_identity=3),
], ids=['augmented', 'process_share', 'identity_balanced'])
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


@pytest.mark.slow
def test_worker_processes_make_the_same_batches_from_image_files(tmp_path):
  split = _folder_split(str(tmp_path))
  reader_kwargs = dict(global_batch_size=8, seed=0, shuffle=True,
                       drop_remainder=True,
                       augment_fn=batching.make_augment_fn(flip=True))
  expected, reader = _loop_batches(split, reader_kwargs, num_epochs=2,
                                   first_step=1)
  got = _closed_after(pipeline.batch_iterator(
      reader, first_step=1, num_steps=2 * reader.steps_per_epoch,
      num_workers=2, num_threads=1))
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


def test_negative_num_workers_is_refused():
  reader = _reader(global_batch_size=8, seed=0, shuffle=True)
  with pytest.raises(ValueError, match='num_workers must be >= 0, got -1'):
    pipeline.batch_iterator(reader, first_step=0, num_steps=4,
                            num_workers=-1)


def test_first_step_at_num_steps_is_refused():
  reader = _reader(global_batch_size=8, seed=0, shuffle=True)
  with pytest.raises(ValueError, match='first_step < num_steps'):
    pipeline.batch_iterator(reader, first_step=4, num_steps=4)


# ---------------------------------------------------------------------------
# TrainingBatches: placed ahead, in order.
# ---------------------------------------------------------------------------


class RecordingPlacement:
  """TrainingBatches over 6 steps whose `place` records each batch placed."""

  def __init__(self):
    self.reader = _reader(global_batch_size=8, seed=2, shuffle=True,
                          drop_remainder=True)
    self.placed = []
    self.batches = pipeline.TrainingBatches(
        self.reader, num_steps=6, place=self._place, device_prefetch=2)

  def _place(self, batch):
    self.placed.append(batch)
    return batch['label']


def test_training_batches_place_nothing_before_the_first_is_asked_for():
  placement = RecordingPlacement()
  assert not placement.placed


def test_training_batches_place_one_batch_ahead_of_the_step():
  placement = RecordingPlacement()
  next(placement.batches)
  assert len(placement.placed) == 2


def test_training_batches_are_the_readers_placed_batches_in_order():
  placement = RecordingPlacement()
  got = list(placement.batches)
  np.testing.assert_array_equal(
      np.stack(got),
      np.stack([placement.reader(step)['label'] for step in range(6)]))


def test_training_batches_state_counts_the_batches_handed_out():
  placement = RecordingPlacement()
  list(placement.batches)
  assert placement.batches.get_state()['next_step'] == 6


# ---------------------------------------------------------------------------
# TrainingBatches: saved and restored input states.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def saved_state():
  """(reader, num_steps, state) two steps into a second epoch, with threads."""
  reader = _reader(global_batch_size=8, seed=4, shuffle=True,
                   drop_remainder=True,
                   augment_fn=batching.make_augment_fn(flip=True))
  num_steps = 2 * reader.steps_per_epoch
  first = pipeline.TrainingBatches(reader, num_steps=num_steps,
                                   num_threads=2, device_prefetch=3)
  for _ in range(reader.steps_per_epoch + 2):
    next(first)
  state = first.get_state()
  first.close()
  return reader, num_steps, state


def test_input_state_records_the_step_epoch_and_reader(saved_state):
  reader, _, state = saved_state
  assert state == {'next_step': reader.steps_per_epoch + 2, 'epoch': 1,
                   'step_in_epoch': 2,
                   'steps_per_epoch': reader.steps_per_epoch,
                   'global_batch_size': 8, 'seed': 4}


@pytest.mark.slow
def test_a_saved_input_state_resumes_at_the_exact_batch_with_other_workers(
    saved_state):
  reader, num_steps, state = saved_state
  resumed = pipeline.TrainingBatches(reader, num_steps=num_steps,
                                     num_workers=2, num_threads=1)
  resumed.set_state(state)
  _assert_same_batches(_closed_after(resumed),
                       [reader(step) for step in
                        range(state['next_step'], num_steps)])


@pytest.fixture
def four_steps():
  """TrainingBatches of 4 steps."""
  return pipeline.TrainingBatches(
      _reader(global_batch_size=8, seed=0, shuffle=True), num_steps=4)


def test_a_negative_next_step_is_refused(four_steps):
  with pytest.raises(ValueError, match='non-negative integer next_step'):
    four_steps.set_state({'next_step': -1})


def test_a_state_past_the_end_hands_out_nothing(four_steps):
  four_steps.set_state({'next_step': 6})  # A shorter run.
  assert list(four_steps) == []


def test_a_negative_device_prefetch_is_refused():
  with pytest.raises(ValueError, match='device_prefetch must be >= 0, got -2'):
    pipeline.TrainingBatches(_reader(global_batch_size=8, seed=0,
                                     shuffle=True),
                             num_steps=4, device_prefetch=-2)


def test_a_resume_with_another_batch_size_says_so(four_steps, caplog):
  four_steps.set_state({'next_step': 2, 'global_batch_size': 16, 'seed': 0})
  assert 'global_batch_size 16 -> 8' in caplog.text


def test_a_resume_with_another_batch_size_continues_by_step(four_steps):
  four_steps.set_state({'next_step': 2, 'global_batch_size': 16, 'seed': 0})
  assert four_steps.next_step == 2
