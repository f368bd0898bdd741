"""The training runtime, in layers that import downward only:

* `parallel`: jit / pmap / shard_map execution of one per-replica step,
  host <-> device placement, multi-host start-up.
* `state`: `TrainState` and its factories (model, schedule, optimizer).
* `objectives`: `Objective` = Eq. 5's terms (`ClassifierLoss`,
  `PairLoss`, lambda, alpha).
* `steps`: the one train/eval step scaffold, with `ReplicatedClasses`.
* `class_sharded_steps`: `ShardedClasses`, the classes split over devices.
* `features`: open-set feature extraction and evaluation.
* `checkpointing`: Orbax save and safe resume.
* `lifecycle`: preemption signals, the workdir lock, the entry points' exit.
* `run_config`: the config checked, stored with the run, compared on resume.
* `trainer`: `train_and_evaluate(config, workdir)`, the loop.
"""

from centerloss_jax.training import checkpointing
from centerloss_jax.training import class_sharded_steps
from centerloss_jax.training import features
from centerloss_jax.training import lifecycle
from centerloss_jax.training import objectives
from centerloss_jax.training.objectives import ClassifierLoss
from centerloss_jax.training.objectives import Objective
from centerloss_jax.training.objectives import PairLoss
from centerloss_jax.training import parallel
from centerloss_jax.training.parallel import DataParallel
from centerloss_jax.training import run_config
from centerloss_jax.training import state
from centerloss_jax.training.state import create_train_state
from centerloss_jax.training.state import TrainState
from centerloss_jax.training import steps
from centerloss_jax.training.steps import eval_step
from centerloss_jax.training.steps import train_step
from centerloss_jax.training import trainer
from centerloss_jax.training.trainer import train_and_evaluate

__all__ = [
    'ClassifierLoss',
    'DataParallel',
    'Objective',
    'PairLoss',
    'TrainState',
    'checkpointing',
    'class_sharded_steps',
    'create_train_state',
    'eval_step',
    'features',
    'objectives',
    'parallel',
    'state',
    'steps',
    'train_and_evaluate',
    'train_step',
    'trainer',
]
