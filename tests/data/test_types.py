"""Tests of data.types: the label range check every source applies."""

import numpy as np
import pytest

from centerloss_jax.data import types

LABELS = np.array([0, 3, 9, 12, -1, 10], np.int32)


def test_validate_labels_error_locates_the_first_bad_label():
  with pytest.raises(ValueError) as error:
    types.validate_labels(LABELS, 10, 'test')
  message = str(error.value)
  assert 'label 12 at index 3' in message
  assert "'test'" in message
  assert '[0, 10)' in message


def test_validate_labels_accepts_labels_in_range():
  types.validate_labels(LABELS[:3], 10, 'test')
