"""Simulated engines: stand-ins for SAM and CLIP driven by a case's reference labels.

They implement the engine roles (:class:`~salip.engines.encoder.Encoder`,
:class:`~salip.engines.proposer.Proposer`, :class:`~salip.engines.recogniser.Recogniser`,
:class:`~salip.engines.refiner.Refiner`) from the FULL reference label map of a case (every
label, not only the targets) with controlled, seeded noise, so strategies can be compared
on real anatomy without pretrained weights:

* the encoder's "embedding" is the slice index and the body (display pixels above 0);
* the proposer proposes the 8-connected components of every reference class plus the
  unlabelled tissue cut into chunks by a 4x4 grid, then splits, merges, drops and jitters
  them (:class:`NoiseConfig`);
* the recogniser scores each proposal by its purity (the fraction of its pixels in each
  class), adds Gaussian noise and confusions between look-alike classes
  (:data:`CONFUSABLE`, and every left/right pair), and turns the scores into
  probabilities by a softmax, as contrast scoring does;
* the refiner returns, for a box, the reference component covering most of the box, cut
  to the box grown by 10% per side, with jittered boundaries.

Every random draw comes from ``numpy.random.default_rng([seed, slice index, purpose, ...])``,
so the outputs of a slice do not depend on the order or batching in which slices are asked.

Noise presets (:data:`NOISE_PRESETS`, :func:`noise_preset`):

| field | meaning | none | low | moderate | high |
|---|---|---|---|---|---|
| `split_rate` | P(a part is cut into 2-3 pieces) | 0 | 0.1 | 0.2 | 0.4 |
| `merge_rate` | P(a part is fused with an adjacent part of another class) | 0 | 0.05 | 0.1 | 0.2 |
| `merge_keep_rate` | P(a merged part is also proposed alone) | 0.75 | 0.75 | 0.75 | 0.75 |
| `drop_rate` | P(a part is missing) | 0 | 0.05 | 0.1 | 0.2 |
| `jitter_mm` | max part boundary shift, out or in (mm) | 0 | 1 | 2 | 4 |
| `score_sigma` | std of the Gaussian noise on purity scores | 0 | 0.05 | 0.15 | 0.3 |
| `confusion_rate` | P(a look-alike class takes the organ's score), per proposal | 0 | 0.05 | 0.1 | 0.2 |
| `bias_rate` | P(an organ is biased towards one look-alike), per case | 0 | 0 | 0 | 0 |
| `bias_swap` | P(a biased organ's score is swapped), per proposal | 0.5 | 0.5 | 0.5 | 0.5 |
| `logit_scale` | softmax scale, scores -> probabilities | 10 | 10 | 10 | 10 |
| `refine_jitter_mm` | max refined-mask boundary shift (mm) | 0 | 1 | 2 | 4 |
| `iou_sigma` | std of the predicted IoU's error | 0 | 0.05 | 0.1 | 0.2 |

Proposals come in a seeded random order, so equal scores are tied at random.
"""

from salip.apps.bench.simulated.anatomy import (
    ReferenceAnatomy,
    SimulatedEmbedding,
    SimulatedEncoder,
    class_name,
    totalseg_organ_map,
)
from salip.apps.bench.simulated.engines import (
    SimulatedRecogniser,
    SimulatedRefiner,
    simulated_engines,
)
from salip.apps.bench.simulated.noise import (
    CONFUSABLE,
    NOISE_PRESETS,
    NoiseConfig,
    noise_preset,
    similar_classes,
)
from salip.apps.bench.simulated.proposer import TISSUE_GRID, SimulatedProposer

__all__ = [
    "CONFUSABLE",
    "NOISE_PRESETS",
    "TISSUE_GRID",
    "NoiseConfig",
    "ReferenceAnatomy",
    "SimulatedEmbedding",
    "SimulatedEncoder",
    "SimulatedProposer",
    "SimulatedRecogniser",
    "SimulatedRefiner",
    "class_name",
    "noise_preset",
    "similar_classes",
    "simulated_engines",
    "totalseg_organ_map",
]
