"""Metrics of features, in numpy: compactness and the open-set protocols.

* `compactness`: intra-class spread, inter-class separation.
* `verification`: the LFW protocol (10-fold accuracy, PCA, ROC, TAR@FAR).
* `identification`: the MegaFace protocol (blocked rank-1 and CMC).
* `open_set`: both on a dataset's unseen identities.
"""

from centerloss_jax.metrics import compactness
from centerloss_jax.metrics.compactness import compactness_metrics
from centerloss_jax.metrics import identification
from centerloss_jax.metrics import open_set
from centerloss_jax.metrics.open_set import open_set_metrics
from centerloss_jax.metrics import verification

__all__ = ['compactness', 'compactness_metrics', 'identification',
           'open_set', 'open_set_metrics', 'verification']
