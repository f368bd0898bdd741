"""An offline synthetic identity set: many faces, many images of each.

For tests and for the offline demo of the open-set protocol (train on some
identities, verify on disjoint ones), with no download.

* `identities`: each identity is a latent face drawn from its own parameters
  (`make_identities`), laid out around the 5-point alignment template so a
  clean image looks like an aligned face crop.
* `drawing`: each identity's face painted once on a canvas (`draw_faces`).
* `draws`: each image's random numbers, a hash of (seed, identity, image).
* `warps`: the pose-like and expression warps of the canvas.
* `rendering`: `render`, an image of an identity is its face under pose,
  expression, illumination, background, occlusion and noise nuisances, all
  scaled by `difficulty` (0: every image of an identity is the same).
* `dataset`: verification pairs (`sample_pairs`) and the whole set as a
  `data.Dataset` (`load_synthetic_faces`).

Determinism. Identity `i`'s parameters come from
`np.random.default_rng((seed, 0, i))` alone, and image `j` of identity `i`
from a counter-based hash of `(seed, i, j)`, so both are the same however
many identities or images are generated, and train, test and evaluation sets
drawn from disjoint ranges of identity (or image) numbers are disjoint and
reproducible.
"""

from centerloss_jax.data.synthetic_faces import dataset
from centerloss_jax.data.synthetic_faces.dataset import DISTRACTOR_FIRST_IDENTITY
from centerloss_jax.data.synthetic_faces.dataset import load_synthetic_faces
from centerloss_jax.data.synthetic_faces.dataset import MAX_IDENTITIES_PER_PART
from centerloss_jax.data.synthetic_faces.dataset import PROBE_FIRST_IDENTITY
from centerloss_jax.data.synthetic_faces.dataset import sample_pairs
from centerloss_jax.data.synthetic_faces.dataset import SampledPairs
from centerloss_jax.data.synthetic_faces.dataset import TRAIN_FIRST_IDENTITY
from centerloss_jax.data.synthetic_faces.dataset import VERIFICATION_FIRST_IDENTITY
from centerloss_jax.data.synthetic_faces.draws import image_uniforms
from centerloss_jax.data.synthetic_faces import identities
from centerloss_jax.data.synthetic_faces.identities import FaceParams
from centerloss_jax.data.synthetic_faces.identities import make_identities
from centerloss_jax.data.synthetic_faces.rendering import DEFAULT_IMAGE_SHAPE
from centerloss_jax.data.synthetic_faces.rendering import render

__all__ = [
    'DEFAULT_IMAGE_SHAPE',
    'DISTRACTOR_FIRST_IDENTITY',
    'FaceParams',
    'MAX_IDENTITIES_PER_PART',
    'PROBE_FIRST_IDENTITY',
    'SampledPairs',
    'TRAIN_FIRST_IDENTITY',
    'VERIFICATION_FIRST_IDENTITY',
    'image_uniforms',
    'load_synthetic_faces',
    'make_identities',
    'render',
    'sample_pairs',
]
