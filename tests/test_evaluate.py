"""`python -m centerloss_jax.evaluate` reproduces the trainer's open-set
numbers from the workdir alone, and refuses what does not fit the run.

Two face runs are evaluated, each made once for this module, and what they
wrote is checked first: the synthetic faces' runlocal config trained here
(`synthetic_run`), and a researcher's own small face folders trained with
`python -m centerloss_jax.main` from the base CASIA config with command-line
overrides only (`own_face_run`; started first, it trains beside the
synthetic run).
"""

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
import multiprocess_util
import repo_paths

REPO_ROOT = repo_paths.REPO_ROOT
TIMEOUT = 300  # Seconds any one process may take, hang or not.


def _run_module(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO_ROOT,
                        check=True, capture_output=True, text=True,
                        timeout=TIMEOUT)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _last_record_with(records, key):
  return [r for r in records if key in r][-1]


def test_evaluate_without_checkpoint_says_so(tmp_path):
  config = synthetic_faces_config.get_config('runlocal')
  with pytest.raises(FileNotFoundError, match='No checkpoint under'):
    evaluate.evaluate_checkpoint(str(tmp_path), config)
  assert not (tmp_path / 'checkpoints').exists()


# --- a researcher's own face folders, trained by the CLI ----------------------


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


@pytest.fixture(scope='module')
def own_face_run_started(tmp_path_factory):
  """The own face folders written, and their training run started in the
  background: (its process, its workdir)."""
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
  command = [
      sys.executable, '-m', 'centerloss_jax.main',
      '--config=configs/casia_webface_face_resnet.py',
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
      '--config.pipeline.num_workers=2']
  with multiprocess_util.Child(command, timeout=TIMEOUT,
                               cwd=REPO_ROOT) as run:
    yield run, workdir


@pytest.fixture(scope='module')
def own_face_run(own_face_run_started):
  """(workdir, metrics.jsonl's records) of the finished own-folders run."""
  run, workdir = own_face_run_started
  assert run.wait() == 0, run.stderr()[-3000:]
  return workdir, _records(workdir)


# --- the synthetic faces, trained here ----------------------------------------


@pytest.fixture(scope='module')
def synthetic_run(own_face_run_started, tmp_path_factory):
  """(workdir, final metrics) of synthetic_faces:runlocal."""
  del own_face_run_started  # Started first, to train beside this run.
  workdir = str(tmp_path_factory.mktemp('synthetic_faces'))
  config = synthetic_faces_config.get_config('runlocal')
  return workdir, training.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_a_face_run_verifies_the_pairs_of_every_fold(synthetic_run):
  _, metrics = synthetic_run
  config = synthetic_faces_config.get_config('runlocal')
  # runlocal: 20 verification identities, 10 folds of 2 + 2 pairs.
  assert (metrics['synthetic_pairs/num_pairs']
          == 10 * config.input.pairs_per_fold)
  assert 0.0 <= metrics['synthetic_pairs/accuracy'] <= 1.0
  assert 0.0 <= metrics['synthetic_pairs/auc'] <= 1.0


@pytest.mark.slow
def test_a_face_run_identifies_each_probe_image_among_the_distractors(
    synthetic_run):
  # 4 probe identities x 2 images: each image probes with the other as mate.
  _, metrics = synthetic_run
  assert metrics['synthetic_identification/num_pairs'] == 8
  assert metrics['synthetic_identification/num_distractors'] == 8
  assert (metrics['synthetic_identification/rank1']
          <= metrics['synthetic_identification/rank5']
          <= metrics['synthetic_identification/rank10'])


@pytest.mark.slow
def test_a_face_run_tests_one_closed_set_image_per_identity(synthetic_run):
  _, metrics = synthetic_run
  assert metrics['num_examples'] == 16


@pytest.mark.slow
def test_a_face_run_records_its_final_open_set_metrics(synthetic_run):
  workdir, metrics = synthetic_run
  last = _last_record_with(_records(workdir), 'synthetic_pairs/accuracy')
  assert last['synthetic_pairs/accuracy'] == pytest.approx(
      metrics['synthetic_pairs/accuracy'])


@pytest.mark.slow
def test_a_face_run_keeps_and_plots_its_roc(synthetic_run):
  workdir, _ = synthetic_run
  roc = np.load(os.path.join(workdir, 'roc.npz'))
  assert roc['far'][0] == 0 and roc['tar'][-1] == 1
  assert os.path.getsize(os.path.join(workdir, f'roc_step_{roc["step"]}.png')
                         ) > 5_000


@pytest.fixture(scope='module')
def synthetic_evaluation(synthetic_run, tmp_path_factory):
  """(evaluation.json's metrics, its output dir) of the evaluate CLI on the
  synthetic run's workdir alone (it reads the run's config from it)."""
  workdir, _ = synthetic_run
  output_dir = tmp_path_factory.mktemp('synthetic_evaluation')
  _run_module('centerloss_jax.evaluate', f'--workdir={workdir}',
              f'--output_dir={output_dir}')
  with open(output_dir / 'evaluation.json') as f:
    return json.load(f), output_dir


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_trainers_open_set_metrics(
    synthetic_evaluation, synthetic_run):
  _, metrics = synthetic_run
  evaluated = dict(synthetic_evaluation[0])
  open_set = {k: v for k, v in metrics.items() if '/' in k}
  evaluated.pop('synthetic_identification/cmc')
  assert set(evaluated) == set(open_set) | {'step'}
  for key, value in open_set.items():
    assert evaluated[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_evaluate_cli_gives_the_cmc_of_the_trainers_ranks(
    synthetic_evaluation, synthetic_run):
  _, metrics = synthetic_run
  cmc = synthetic_evaluation[0]['synthetic_identification/cmc']
  config = synthetic_faces_config.get_config('runlocal')
  assert len(cmc) == config.evaluation.max_rank
  assert cmc[0] == pytest.approx(metrics['synthetic_identification/rank1'])
  assert cmc[9] == pytest.approx(metrics['synthetic_identification/rank10'])
  assert list(cmc) == sorted(cmc)


@pytest.mark.slow
def test_evaluate_cli_plots_the_roc(synthetic_evaluation):
  _, output_dir = synthetic_evaluation
  assert os.path.getsize(output_dir / 'roc.png') > 5_000


# --- the own face folders' run and its evaluation -----------------------------


@pytest.mark.slow
def test_own_face_folders_train_to_num_train_steps(own_face_run):
  _, records = own_face_run
  assert records[-1]['step'] == 6


@pytest.mark.slow
def test_own_face_folders_verify_lfw_format_pairs(own_face_run):
  _, records = own_face_run
  final = records[-1]
  assert final['lfw/num_pairs'] == 4
  assert 0.0 <= final['lfw/accuracy'] <= 1.0


@pytest.mark.slow
def test_own_face_folders_identify_megaface_format_probes(own_face_run):
  # 3 probe identities x 2 images, each the other's mate; 5 distractors.
  _, records = own_face_run
  final = records[-1]
  assert final['megaface/num_pairs'] == 6
  assert final['megaface/num_distractors'] == 5
  assert 0.0 <= final['megaface/rank1'] <= final['megaface/rank5'] <= 1.0


@pytest.mark.slow
def test_own_face_folders_test_one_image_of_each_identity(own_face_run):
  # One randomly chosen image of each identity is the closed-set test set.
  _, records = own_face_run
  test = _last_record_with(records, 'test/num_examples')
  assert test['test/num_examples'] == 8
  assert np.isfinite(test['test/cross_entropy'])


@pytest.mark.slow
def test_the_cosine_schedule_spans_num_train_steps_not_the_epoch(
    own_face_run):
  # The learning rate of step 3 (index 2) is 0.01 * (1 + cos(2 pi / 6)) / 2,
  # not that of the 1-step "epoch".
  _, records = own_face_run
  rates = {r['step']: r['train/learning_rate'] for r in records
           if 'train/learning_rate' in r}
  assert rates[3] == pytest.approx(0.0075, rel=1e-5)
  assert rates[6] == pytest.approx(0.01 * (1 + np.cos(np.pi * 5 / 6)) / 2,
                                   rel=1e-5)


@pytest.fixture(scope='module')
def own_face_evaluation(own_face_run, tmp_path_factory):
  """evaluation.json of the evaluate CLI with no training flag and one
  evaluation override (a shorter CMC)."""
  workdir, _ = own_face_run
  output_dir = tmp_path_factory.mktemp('own_face_evaluation')
  _run_module('centerloss_jax.evaluate', f'--workdir={workdir}',
              f'--output_dir={output_dir}', '--config.evaluation.max_rank=3')
  with open(output_dir / 'evaluation.json') as f:
    return json.load(f)


@pytest.mark.slow
def test_evaluate_takes_an_evaluation_override(own_face_evaluation):
  assert own_face_evaluation['step'] == 6
  assert len(own_face_evaluation['megaface/cmc']) == 3


@pytest.mark.slow
def test_evaluate_needs_only_the_workdir_to_reproduce_the_trainer(
    own_face_evaluation, own_face_run):
  # The run's own model and settings reproduce the trainer's numbers.
  _, records = own_face_run
  trained = _last_record_with(records, 'lfw/auc')
  compared = [key for key in trained if key.startswith('lfw/')] + [
      'megaface/rank1', 'megaface/num_pairs']
  assert len(compared) > 5
  for key in compared:
    assert own_face_evaluation[key] == pytest.approx(trained[key],
                                                     abs=1e-6), key


def _wider(workdir):
  """The run's stored config with another feature size and optimizer."""
  return common.with_overrides(run_config.load_stored_config(str(workdir)),
                               {'model.feature_dim': 32,
                                'optimizer': 'adamw'})


@pytest.mark.slow
def test_evaluate_refuses_other_model_fields_and_names_them(own_face_run):
  workdir, _ = own_face_run
  with pytest.raises(run_config.ConfigChangedError,
                     match=r"model\.feature_dim: 16 -> 32.*optimizer: 'sgd' "
                     r"-> 'adamw'"):
    evaluate.evaluate_checkpoint(str(workdir), _wider(workdir))


@pytest.fixture
def old_run(own_face_run, tmp_path):
  """A workdir without config.json (an older run): the checkpoints only."""
  workdir, _ = own_face_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'checkpoints')
  return tmp_path


@pytest.mark.slow
def test_evaluate_of_a_run_without_its_config_asks_for_one(old_run):
  with pytest.raises(FileNotFoundError, match='No config.json'):
    evaluate.evaluate_checkpoint(str(old_run))


@pytest.mark.slow
def test_evaluate_of_a_run_without_its_config_names_misfit_shapes(
    old_run, own_face_run):
  # The checkpoint's own shapes name what does not fit, not a TensorStore
  # dump.
  workdir, _ = own_face_run
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"\(16,\) in the checkpoint, \(32,\) in this "
                     "config's model"):
    evaluate.evaluate_checkpoint(str(old_run), _wider(workdir))
