"""The paper's toy experiment (Sec. 3.1, Fig. 2-3): LeNet++ on MNIST.

As configs/fashion_mnist_lenetpp.py (the reference Caffe MNIST solver, 10K
steps, lambda 0.01, alpha 0.5, 2-D features) but on TFDS `mnist`, which TFDS
downloads and prepares on first use (needs internet once):

  tfds build mnist --file_format=array_record   # once, with internet

Launch:
  python -m centerloss_jax.main --config=configs/mnist_lenetpp.py \
      --workdir=runs/mnist_lenetpp
The paper's Fig. 3 lambda sweep: add `--config.center_loss.weight=<lambda>`
for lambda in {0, 1e-4, 1e-3, 1e-2, 1e-1}.

Expected: the paper reports no MNIST accuracy for LeNet++, and no result of
this config is recorded in this repository; its runlocal variant is tested
on TFDS mock data.
"""

import ml_collections

from configs import fashion_mnist_lenetpp


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """LeNet++ on TFDS mnist; `arg='runlocal'` shrinks it."""
  config = fashion_mnist_lenetpp.get_config(arg)
  config.input.source = 'tfds'
  config.input.name = 'mnist'
  return config
