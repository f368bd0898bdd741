"""The statistics of a study over seeds, its records, and the ROC its face
runs keep."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from centerloss_jax.metrics import verification
from centerloss_jax.training import run_config
from configs import default
from experiments import seeds as seeds_lib


# --- seeds --------------------------------------------------------------------


def test_seeds_are_kept_in_the_order_given():
  assert seeds_lib.parse_seeds(['3', '0']) == [3, 0]


@pytest.mark.parametrize('values,message', [
    (['0', '-1'], "non-negative integers, got '-1'"),
    (['2', '2'], 'lists seed 2 twice'),
    (['x'], "got 'x'"),
])
def test_bad_seeds_are_refused_naming_them(values, message):
  with pytest.raises(ValueError, match=message):
    seeds_lib.parse_seeds(values)


# --- the spread over seeds and paired differences -----------------------------


def test_spread_is_the_mean_and_sample_std():
  s = seeds_lib.spread([0.75, 0.77, 0.79])
  assert (s.mean, s.n) == (pytest.approx(0.77), 3)
  assert s.std == pytest.approx(0.02)  # ddof 1: sqrt((2 * 0.02^2) / 2).
  assert s.format(scale=100) == '77.00 ± 2.00'


def test_the_spread_of_one_value_has_no_std():
  single = seeds_lib.spread([0.5])
  assert math.isnan(single.std) and single.format() == '0.50'  # No ± shown.


def test_the_spread_of_no_value_is_refused():
  with pytest.raises(ValueError, match='at least one value'):
    seeds_lib.spread([])


def test_paired_difference_pairs_by_seed():
  # Seed 2 only in one cell: left out. By seed: +0.02, +0.03, +0.01.
  run = {0: 0.80, 1: 0.74, 3: 0.71, 2: 0.99}
  baseline = {0: 0.78, 1: 0.71, 3: 0.70}
  diff = seeds_lib.paired_difference(run, baseline)
  assert diff.n == 3 and diff.same_sign == 3
  assert diff.mean == pytest.approx(0.02)
  assert diff.std == pytest.approx(0.01)
  assert diff.p_value == pytest.approx(
      stats.ttest_rel([0.80, 0.74, 0.71], [0.78, 0.71, 0.70]).pvalue)
  # The seeds differ by more (std 0.046 and 0.044) than the cells do:
  # consistent, but within the seed-to-seed spread.
  assert not diff.exceeds_spread
  assert diff.verdict() == 'within seed spread'


_BASELINE = {0: 0.70, 1: 0.71, 2: 0.72}


def test_a_difference_beyond_the_seed_spread_is_better_or_worse():
  better = seeds_lib.paired_difference({0: 0.75, 1: 0.77, 2: 0.76}, _BASELINE)
  assert better.exceeds_spread and better.verdict() == 'better'
  # For a lower-is-better metric the same difference is worse.
  assert better.verdict(higher_is_better=False) == 'worse'


def test_the_same_shift_at_every_seed_has_p_value_0():
  # No t-test warning.
  shifted = seeds_lib.paired_difference({0: 0.8, 1: 0.81, 2: 0.82},
                                        _BASELINE)
  assert shifted.p_value == 0.0 and shifted.same_sign == 3


def test_a_seed_that_went_the_other_way_leaves_it_within_the_spread():
  # Beyond the spread on average, but one seed went the other way.
  mixed = seeds_lib.paired_difference(
      {0: 0.695, 1: 0.80, 2: 0.80, 3: 0.80},
      {0: 0.70, 1: 0.70, 2: 0.70, 3: 0.70})
  assert mixed.exceeds_spread and mixed.same_sign == 3
  assert mixed.verdict() == 'within seed spread'


def test_two_seeds_are_too_few_for_a_verdict():
  # Two seeds agree by chance one time in two.
  two_seeds = seeds_lib.paired_difference({0: 0.80, 1: 0.81},
                                          {0: 0.70, 1: 0.71})
  assert two_seeds.exceeds_spread and two_seeds.same_sign == 2
  assert two_seeds.verdict() == 'too few seeds for a verdict'


def test_one_seed_does_not_measure_the_spread():
  one_seed = seeds_lib.paired_difference({0: 0.9}, {0: 0.7, 1: 0.8})
  assert one_seed.n == 1 and one_seed.verdict() == 'spread not measured'


def test_cells_without_a_common_seed_are_refused():
  with pytest.raises(ValueError, match='No common seed'):
    seeds_lib.paired_difference({0: 0.9}, {1: 0.7})


# --- tables -------------------------------------------------------------------


def _record(seed, **metrics):
  return {'seed': seed, 'metrics': metrics, 'kept': {}}


_RECORDS = {
    # Seed 3 of softmax alone: in its spread, not in the comparison.
    'softmax': {s: _record(s, accuracy=a) for s, a in
                enumerate([0.70, 0.71, 0.72, 0.50])},
    'center': {s: _record(s, accuracy=a) for s, a in
               enumerate([0.75, 0.77, 0.76])},
}
_ACCURACY = seeds_lib.Metric('accuracy', 'accuracy (%)', scale=100)


def test_the_spread_table_shows_each_cell_over_all_its_seeds():
  spread_rows = seeds_lib.spread_table(
      _RECORDS, [_ACCURACY], {'softmax': ('softmax',), 'center': ('center',)},
      ('run',)).splitlines()
  assert spread_rows[2] == '| softmax | 4 | 65.75 ± 10.53 |'
  assert spread_rows[3] == '| center | 3 | 76.00 ± 1.00 |'


def test_the_comparison_table_shows_the_paired_difference_and_verdict():
  comparison = seeds_lib.comparison_table(_RECORDS, 'softmax', [_ACCURACY])
  row = comparison.splitlines()[2].split(' | ')
  # Both columns over the seeds the difference pairs.
  assert row[:5] == ['| center', 'accuracy (%)', '71.00 ± 1.00',
                     '76.00 ± 1.00', '+5.00 ± 1.00']
  assert row[5] == '3/3' and row[7] == 'better |'


# --- records ------------------------------------------------------------------


def _write_record(records_dir, config, seed=0, metrics=None):
  path = seeds_lib.record_path(str(records_dir), 'cell', seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'config': json.loads(config.to_json()),
               'metrics': metrics or {}}, f)
  return path


def test_a_cell_not_trained_yet_has_no_record(tmp_path):
  path = seeds_lib.record_path(str(tmp_path), 'cell', 0)
  assert seeds_lib.load_record(path, default.get_config()) is None


def test_a_record_is_reused_when_only_logging_mode_or_data_place_differ(
    tmp_path):
  config = default.get_config()
  path = _write_record(tmp_path, config)
  # Logging, the parallel mode and where the data lies do not change the
  # record's metrics.
  moved = config.copy_and_resolve_references()
  moved.log_every_steps = 7
  moved.parallel = 'shard_map'
  moved.input.data_dir = '/elsewhere/fashion-mnist'
  assert seeds_lib.load_record(path, moved)['metrics'] == {}


def test_a_record_of_a_config_with_other_metrics_is_refused_naming_fields(
    tmp_path):
  config = default.get_config()
  path = _write_record(tmp_path, config)
  # Evaluating without mirrored images, or training longer, changes them.
  other = config.copy_and_resolve_references()
  other.evaluation.mirror = False
  other.num_train_steps = 1
  with pytest.raises(run_config.ConfigChangedError,
                     match=r'evaluation.mirror: True -> False; '
                           r'num_train_steps: -1 -> 1'):
    seeds_lib.load_record(path, other)


def test_a_report_from_records_alone_starts_no_run(tmp_path):
  config = default.get_config()
  _write_record(tmp_path, config, metrics={'a': 1})
  # Every record present: reported from the record, no run started (a run
  # would make its workdir).
  records = seeds_lib.run_cells({'cell': config}, [0], workdir='/nonexistent',
                                records_dir=str(tmp_path), train=False)
  assert records['cell'][0]['metrics'] == {'a': 1}
  assert not os.path.exists('/nonexistent')


def test_a_report_from_records_alone_names_each_missing_record(tmp_path):
  config = default.get_config()
  _write_record(tmp_path, config, metrics={'a': 1})
  missing = seeds_lib.record_path(str(tmp_path), 'cell', 1)
  with pytest.raises(FileNotFoundError, match=f'1 record.*{missing}'):
    seeds_lib.run_cells({'cell': config}, [0, 1], workdir='/nonexistent',
                        records_dir=str(tmp_path), train=False)
  assert not os.path.exists('/nonexistent')


# --- the ROC a face run keeps -------------------------------------------------


@pytest.fixture(scope='module')
def scored_pairs():
  """(scores, is_same, far, tar) of 1000 same and 1000 different pairs."""
  rng = np.random.default_rng(0)
  is_same = np.arange(2000) < 1000
  scores = rng.normal(size=2000) + 1.5 * is_same
  far, tar, _ = verification.roc_curve(scores, is_same)
  return scores, is_same, far, tar


_GRID = [1e-3, 1e-2, 0.1, 1.0]


def test_roc_on_a_grid_is_the_tar_at_each_far(scored_pairs):
  scores, is_same, far, tar = scored_pairs
  on_grid = verification.tar_on_far_grid(far, tar, _GRID)
  expected = verification.tar_at_far(scores, is_same, _GRID)
  np.testing.assert_allclose(on_grid, [expected[f] for f in _GRID])
  assert on_grid[-1] == 1.0


def test_roc_on_a_grid_refuses_a_curve_not_from_0(scored_pairs):
  _, _, far, tar = scored_pairs
  with pytest.raises(ValueError, match='non-decreasing from 0'):
    verification.tar_on_far_grid(far[far > 0], tar[far > 0], _GRID)


def test_roc_on_a_grid_refuses_fars_outside_0_1(scored_pairs):
  _, _, far, tar = scored_pairs
  with pytest.raises(ValueError, match=r'FARs in \[0, 1\]'):
    verification.tar_on_far_grid(far, tar, [2.0])


@pytest.fixture
def kept_rocs(tmp_path):
  """The ROC each of 3 seeds keeps (100 different pairs: FAR >= 0.01), with
  each seed's full curve."""
  is_same = np.arange(200) < 100
  kept, curves = [], []
  for seed in range(3):
    scores = np.random.default_rng(seed).normal(size=200) + is_same
    far, tar, _ = verification.roc_curve(scores, is_same)
    workdir = tmp_path / f'seed_{seed}'
    workdir.mkdir()
    np.savez(workdir / 'roc.npz', far=far, tar=tar, step=1)
    kept.append(seeds_lib.keep_roc(str(workdir)))
    curves.append((far, tar))
  return kept, curves


def test_a_run_keeps_its_roc_where_it_is_measurable(kept_rocs):
  kept, curves = kept_rocs
  for roc, (far, tar) in zip(kept, curves):
    assert min(roc['roc_far']) >= 0.01 - 1e-12
    expected = verification.tar_on_far_grid(far, tar, roc['roc_far'])
    np.testing.assert_array_equal(roc['roc_tar'], expected)


def test_a_run_without_a_roc_keeps_none(tmp_path):
  assert seeds_lib.keep_roc(str(tmp_path)) == {}  # No roc.npz.


def test_the_seeds_rocs_make_a_band_on_one_far_grid(kept_rocs):
  kept, _ = kept_rocs
  records = {'softmax': {s: {'kept': k, 'metrics': {}}
                         for s, k in enumerate(kept)}}
  far, tars = seeds_lib.roc_bands(records)['softmax']
  assert tars.shape == (3, len(far))


def test_rocs_on_different_far_grids_are_refused(kept_rocs):
  kept, _ = kept_rocs
  records = {'softmax': {s: {'kept': k, 'metrics': {}}
                         for s, k in enumerate(kept)}}
  far, tars = seeds_lib.roc_bands(records)['softmax']
  records['softmax'][1]['kept'] = {'roc_far': far[1:].tolist(),
                                   'roc_tar': tars[1, 1:].tolist()}
  with pytest.raises(ValueError, match='different FAR grids'):
    seeds_lib.roc_bands(records)


# --- the machine a record names -----------------------------------------------


def test_a_record_tells_apart_cpus_of_one_name():
  # Two machines of one CPU name that round differently: only the family
  # and the SIMD extension say so.
  first = ('processor\t: 0\nmodel name\t: Example CPU\ncpu family\t: 23\n'
           'model\t\t: 1\nflags\t\t: fpu sse4_2 avx avx2\n\n'
           'processor\t: 1\nmodel name\t: other\n')
  later = ('model name\t: Example CPU\ncpu family\t: 26\n'
           'flags\t: avx2 avx512f\n')
  assert seeds_lib.cpu_info(first) == {
      'cpu': 'Example CPU', 'cpu_family': '23', 'cpu_model': '1',
      'cpu_simd': 'avx2'}
  assert seeds_lib.cpu_info(later)['cpu_simd'] == 'avx512f'


def test_cpu_info_of_an_empty_text_is_all_none():
  assert seeds_lib.cpu_info('') == {
      'cpu': None, 'cpu_family': None, 'cpu_model': None, 'cpu_simd': None}


def test_a_record_names_this_machines_cpu():
  record = seeds_lib.machine()
  assert record['cpu'] and record['cpu_count'] >= 1
