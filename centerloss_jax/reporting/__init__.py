"""Reporting: metric writers, figures, and whole-or-nothing file writes.

* `writers`: TensorBoard, `metrics.jsonl` and console, behind one writer.
* `plots`: the 2-D feature scatter and ROC curves.
* `files`: `atomic_write`, the one way results reach the disk.
"""

from centerloss_jax.reporting import files
from centerloss_jax.reporting.files import atomic_write
from centerloss_jax.reporting import plots
from centerloss_jax.reporting import writers

__all__ = ['atomic_write', 'files', 'plots', 'writers']
