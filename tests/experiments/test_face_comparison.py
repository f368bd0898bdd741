"""End to end: the face configs train, evaluate on unseen identities, and
`python -m centerloss_jax.evaluate` reproduces the trainer's numbers from
the workdir alone."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from centerloss_jax.data import alignment
from centerloss_jax.data import synthetic_faces
from centerloss_jax import evaluate
from centerloss_jax import training
from centerloss_jax.training import checkpointing
from centerloss_jax.training import run_config
from configs import common
from configs import synthetic_faces as synthetic_faces_config
import repo_paths

REPO_ROOT = repo_paths.REPO_ROOT


def _run_module(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO_ROOT,
                        check=True, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module')
def synthetic_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('synthetic_faces'))
  config = synthetic_faces_config.get_config('runlocal')
  return workdir, training.train_and_evaluate(config, workdir)


def test_synthetic_run_reports_open_set_metrics(synthetic_run):
  workdir, metrics = synthetic_run
  config = synthetic_faces_config.get_config('runlocal')
  # runlocal: 20 verification identities, 10 folds of 2 + 2 pairs.
  assert (metrics['synthetic_pairs/num_pairs']
          == 10 * config.input.pairs_per_fold)
  assert 0.0 <= metrics['synthetic_pairs/accuracy'] <= 1.0
  assert 0.0 <= metrics['synthetic_pairs/auc'] <= 1.0
  # 4 probe identities x 2 images: each image probes with the other as mate.
  assert metrics['synthetic_identification/num_pairs'] == 8
  assert metrics['synthetic_identification/num_distractors'] == 8
  assert (metrics['synthetic_identification/rank1']
          <= metrics['synthetic_identification/rank5']
          <= metrics['synthetic_identification/rank10'])
  assert metrics['num_examples'] == 16  # One closed-set test image each.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  last = [r for r in records if 'synthetic_pairs/accuracy' in r][-1]
  assert last['synthetic_pairs/accuracy'] == pytest.approx(
      metrics['synthetic_pairs/accuracy'])
  roc = np.load(os.path.join(workdir, 'roc.npz'))
  assert roc['far'][0] == 0 and roc['tar'][-1] == 1
  assert os.path.getsize(os.path.join(workdir, f'roc_step_{roc["step"]}.png')
                         ) > 5_000


def test_evaluate_cli_reproduces_the_trainers_metrics(synthetic_run,
                                                      tmp_path):
  workdir, metrics = synthetic_run
  # The workdir alone: evaluate reads the run's config from it.
  _run_module('centerloss_jax.evaluate', f'--workdir={workdir}',
              f'--output_dir={tmp_path}')
  with open(tmp_path / 'evaluation.json') as f:
    evaluated = json.load(f)
  open_set = {k: v for k, v in metrics.items() if '/' in k}
  cmc = evaluated.pop('synthetic_identification/cmc')
  assert set(evaluated) == set(open_set) | {'step'}
  for key, value in open_set.items():
    assert evaluated[key] == pytest.approx(value, abs=1e-6), key
  config = synthetic_faces_config.get_config('runlocal')
  assert len(cmc) == config.evaluation.max_rank
  assert cmc[0] == pytest.approx(metrics['synthetic_identification/rank1'])
  assert cmc[9] == pytest.approx(metrics['synthetic_identification/rank10'])
  assert list(cmc) == sorted(cmc)
  assert os.path.getsize(tmp_path / 'roc.png') > 5_000


def test_evaluate_without_checkpoint_says_so(tmp_path):
  config = synthetic_faces_config.get_config('runlocal')
  with pytest.raises(FileNotFoundError, match='No checkpoint under'):
    evaluate.evaluate_checkpoint(str(tmp_path), config)
  assert not (tmp_path / 'checkpoints').exists()


def _write_face_folders(root, *, num_identities, images_per_identity, seed,
                        first_identity, lfw_names=False):
  """Synthetic faces as image files, and a landmark list for them."""
  params = synthetic_faces.make_identities(
      num_identities, seed=seed, first_identity=first_identity)
  ids = np.repeat(params.identity_ids, images_per_identity)
  images = synthetic_faces.render(params, ids, image_shape=(56, 48, 3),
                                  seed=seed)
  # The synthetic faces are drawn on the template: these landmarks make
  # alignment (nearly) the identity map, exercising its whole path.
  points = alignment.scale_template((56, 48))
  lines = []
  for n, image in enumerate(images):
    identity, number = divmod(n, images_per_identity)
    name = f'person_{identity}'
    relative = (f'{name}/{name}_{number + 1:04d}.png' if lfw_names
                else f'{name}/{number}.png')
    os.makedirs(os.path.join(root, name), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, relative))
    coordinates = ' '.join(f'{v:.3f}' for v in points.reshape(-1))
    lines.append(f'{relative} {identity} {coordinates}')
  with open(os.path.join(root, 'landmarks.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _last_record_with(records, key):
  return [r for r in records if key in r][-1]


@pytest.fixture(scope='module')
def own_face_dataset_run(tmp_path_factory):
  """A researcher's own small face set, trained from the base CASIA config
  with command-line overrides only (no `:runlocal`)."""
  root = tmp_path_factory.mktemp('own_faces')
  train_dir, lfw_dir = root / 'casia', root / 'lfw'
  _write_face_folders(str(train_dir), num_identities=8, images_per_identity=3,
                      seed=0, first_identity=0)
  _write_face_folders(str(lfw_dir), num_identities=4, images_per_identity=2,
                      seed=0, first_identity=1000, lfw_names=True)
  # Two folds of one matched and one mismatched pair each, LFW's format.
  (lfw_dir / 'pairs.txt').write_text(
      '2\t1\n'
      'person_0\t1\t2\n'
      'person_0\t1\tperson_1\t1\n'
      'person_2\t1\t2\n'
      'person_2\t2\tperson_3\t1\n')
  # MegaFace layout: probe identities in folders, distractors nested anyhow.
  probe_dir, distractor_dir = root / 'facescrub', root / 'megaface'
  _write_face_folders(str(probe_dir), num_identities=3, images_per_identity=2,
                      seed=0, first_identity=2000)
  _write_face_folders(str(distractor_dir / 'nested'), num_identities=5,
                      images_per_identity=1, seed=0, first_identity=3000)
  workdir = root / 'run'
  # 8 identities x 2 training images, batch 16: one step per epoch, so
  # num_epochs (1) and num_train_steps (6) disagree; num_train_steps wins.
  _run_module(
      'centerloss_jax.main', '--config=configs/casia_webface_face_resnet.py',
      f'--workdir={workdir}',
      f'--config.input.train_dir={train_dir}',
      f'--config.input.landmarks={train_dir / "landmarks.txt"}',
      f'--config.input.pairs_dir={lfw_dir}',
      f'--config.input.pairs_file={lfw_dir / "pairs.txt"}',
      f'--config.input.pairs_landmarks={lfw_dir / "landmarks.txt"}',
      f'--config.input.probe_dir={probe_dir}',
      f'--config.input.distractor_dir={distractor_dir}',
      '--config.input.num_classes=8', '--config.input.image_shape=(56,48,3)',
      '--config.model.stem_channels=(4,8)',
      '--config.model.stage_channels=(8,8,16,16)',
      '--config.model.stage_blocks=(1,1,1,1)',
      '--config.model.feature_dim=16', '--config.model.dtype=float32',
      '--config.batch_size=16', '--config.learning_rate=0.01',
      '--config.schedule=cosine', '--config.num_train_steps=6',
      '--config.log_every_steps=3', '--config.eval_every_steps=6',
      '--config.checkpoint_every_steps=3',
      # Batches decoded and aligned by two grain worker processes.
      '--config.pipeline.num_workers=2')
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  return root, workdir, records


def test_own_face_dataset_trains_from_the_base_config(own_face_dataset_run):
  _, _, records = own_face_dataset_run
  final = records[-1]
  assert final['step'] == 6
  assert final['lfw/num_pairs'] == 4
  # 3 probe identities x 2 images, each the other's mate; 5 distractors.
  assert final['megaface/num_pairs'] == 6
  assert final['megaface/num_distractors'] == 5
  assert 0.0 <= final['megaface/rank1'] <= final['megaface/rank5'] <= 1.0
  assert 0.0 <= final['lfw/accuracy'] <= 1.0
  # One randomly chosen image of each identity is the closed-set test set.
  test = _last_record_with(records, 'test/num_examples')
  assert test['test/num_examples'] == 8
  assert np.isfinite(test['test/cross_entropy'])
  # The cosine schedule spans the 6 steps, not the 1-step "epoch": the
  # learning rate of step 3 (index 2) is 0.01 * (1 + cos(2 pi / 6)) / 2.
  rates = {r['step']: r['train/learning_rate'] for r in records
           if 'train/learning_rate' in r}
  assert rates[3] == pytest.approx(0.0075, rel=1e-5)
  assert rates[6] == pytest.approx(0.01 * (1 + np.cos(np.pi * 5 / 6)) / 2,
                                   rel=1e-5)


def test_evaluate_needs_only_the_workdir(own_face_dataset_run, tmp_path):
  _, workdir, records = own_face_dataset_run
  # No training flags; one evaluation override (a shorter CMC).
  _run_module('centerloss_jax.evaluate', f'--workdir={workdir}',
              f'--output_dir={tmp_path}', '--config.evaluation.max_rank=3')
  with open(tmp_path / 'evaluation.json') as f:
    evaluated = json.load(f)
  assert evaluated['step'] == 6
  assert len(evaluated['megaface/cmc']) == 3
  # The run's own model and settings reproduce the trainer's numbers.
  trained = _last_record_with(records, 'lfw/auc')
  compared = [key for key in trained if key.startswith('lfw/')] + [
      'megaface/rank1', 'megaface/num_pairs']
  assert len(compared) > 5
  for key in compared:
    assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_evaluate_refuses_other_model_fields_and_names_them(
    own_face_dataset_run, tmp_path):
  _, workdir, _ = own_face_dataset_run
  stored = run_config.load_stored_config(str(workdir))
  wider = common.with_overrides(stored, {'model.feature_dim': 32,
                                         'optimizer': 'adamw'})
  with pytest.raises(run_config.ConfigChangedError,
                     match=r"model\.feature_dim: 16 -> 32.*optimizer: 'sgd' "
                     r"-> 'adamw'"):
    evaluate.evaluate_checkpoint(str(workdir), wider)
  # A workdir without config.json (an older run): the checkpoint's own
  # shapes name what does not fit, not a TensorStore dump.
  old_run = tmp_path / 'old_run'
  shutil.copytree(workdir / 'checkpoints', old_run / 'checkpoints')
  with pytest.raises(FileNotFoundError, match='No config.json'):
    evaluate.evaluate_checkpoint(str(old_run))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"\(16,\) in the checkpoint, \(32,\) in this "
                     "config's model"):
    evaluate.evaluate_checkpoint(str(old_run), wider)


def test_face_comparison_writes_table_and_roc(tmp_path):
  result = _run_module(
      'experiments.face_comparison',
      '--config=configs/synthetic_faces.py:runlocal',
      '--config.num_epochs=1', '--runs=softmax+triplet,arcface',
      f'--workdir={tmp_path}')
  with open(tmp_path / 'results.md') as f:
    spread_table, comparison = f.read().split('\n\n')
  rows = [line.split(' | ') for line in spread_table.splitlines()[2:]]
  assert [row[:2] for row in rows] == [['| softmax+triplet', '1'],
                                       ['| arcface', '1']]
  # One seed: the comparison says the spread was not measured.
  assert comparison.splitlines()[2].startswith('| arcface | verification')
  assert all(line.endswith('| spread not measured |')
             for line in comparison.splitlines()[2:])
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  # Different objectives, different features: not one run reported twice.
  assert (results['softmax+triplet']['synthetic_pairs/auc']['values']
          != results['arcface']['synthetic_pairs/auc']['values']
          or results['softmax+triplet']['accuracy']['values']
          != results['arcface']['accuracy']['values'])
  with open(tmp_path / 'records' / 'arcface' / 'seed_0.json') as f:
    record = json.load(f)
  assert record['config']['loss']['classifier'] == 'arcface'
  assert len(record['kept']['roc_far']) == len(record['kept']['roc_tar']) > 5
  # P x K batches (K = 4): every anchor has positives and takes part.
  with open(tmp_path / 'softmax+triplet' / 'seed_0' / 'metrics.jsonl') as f:
    train = [r for r in map(json.loads, f) if 'train/pair_positives' in r]
  assert train and all(r['train/pair_positives'] == 1.0 for r in train)
  assert os.path.getsize(tmp_path / 'roc.png') > 5_000
  assert 'softmax+triplet' in result.stdout
