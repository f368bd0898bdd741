#!/usr/bin/env bash
# The light install: `pip install .` (no extras) into a fresh virtualenv brings
# the loss and its linen / NNX modules and none of the trainer's stack (flax
# itself requires orbax-checkpoint, and jax scipy: those two come with them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -c constraints.txt .

heavy=$("$venv/bin/python" -m pip list --format=freeze | cut -d= -f1 | tr 'A-Z_' 'a-z-' |
        grep -xE 'tensorflow-datasets|grain|matplotlib|clu|tensorboardx|pyarrow|ml-collections|pillow' || true)
if [ -n "$heavy" ]; then
  echo "core_install: 'pip install .' brought in: $heavy" >&2
  exit 1
fi
echo "core_install: $("$venv/bin/python" -m pip list --format=freeze | wc -l) distributions installed"

cd "$(dirname "$venv")"  # away from the checkout: the installed package is used
"$venv/bin/python" - <<'PY'
import jax
import jax.numpy as jnp
import optax
from flax import nnx
import flax.linen as nn

import centerloss_jax as cl
from centerloss_jax import linen as cl_linen
from centerloss_jax import nnx as cl_nnx

assert 'site-packages' in cl.__file__, cl.__file__
features = jax.random.normal(jax.random.key(0), (8, 2))
labels = jnp.arange(8) % 4
centers = jnp.zeros((4, 2))
loss = cl.center_loss(features, labels, centers)
new_centers = cl.update_centers(centers, features, labels, alpha=0.5)
assert jnp.isfinite(loss) and not jnp.allclose(new_centers, centers)

module = cl_linen.CenterLoss(num_classes=4)
variables = module.init(jax.random.key(1), features, labels, update=False)
closs, moved = module.apply(variables, features, labels, mutable=['centers'])
assert jnp.allclose(closs, loss)
assert not jnp.allclose(moved['centers']['centers'], centers)

class Net(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)
    self.center_loss = cl_nnx.CenterLoss(num_classes=4, feature_dim=2, rngs=rngs)

  def __call__(self, x, labels):
    return self.center_loss(self.linear(x), labels)

model = Net(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
x = jax.random.normal(jax.random.key(2), (8, 3))
grads = nnx.grad(lambda m: m(x, labels), argnums=nnx.DiffState(0, nnx.Param))(model)
optimizer.update(model, grads)
assert float(model.center_loss.center_movement[...]) > 0
print(f'core_install: centerloss_jax {cl.__version__} with jax {jax.__version__}, '
      f'flax, optax only: loss, linen and NNX modules run')
PY
