"""The generation core, below training and below the dataset job.

- :mod:`degflow.generation.synthesizer`: :class:`Synthesizer` (load a stage-2 checkpoint, scale
  to time, encode, one ODE solve, decode; the ``ae_interp`` oracle) and :class:`SynthesisResult`.
- :mod:`degflow.generation.tiling`: tile spans, blending windows and the blending loop.
- :mod:`degflow.generation.stochastic`: the stochastic option (:class:`StochasticOption`: a fitted
  noise model added at true LR size, with a strength; per-image seeds).
- :mod:`degflow.generation.condition`: what the velocity is conditioned on (none, the HR
  latent, the HR latent and pixels), built the same way for training and generation.
- :mod:`degflow.generation.degrade`: :class:`Degrader`, the same core called per batch of HR
  crops inside an SR training loop (``degrade(hr, scale)``, one scale per batch or per sample).

Training validation, the Python API and ``synthesize.py`` (through
:func:`degflow.jobs.lr_dataset.write_lr_dataset`) all call this one core.
"""

from degflow.generation.condition import CONDITIONS, condition_kind, velocity_condition
from degflow.generation.degrade import Degraded, Degrader
from degflow.generation.stochastic import StochasticOption
from degflow.generation.synthesizer import DEFAULT_SOLVER, SynthesisResult, Synthesizer

__all__ = ["CONDITIONS", "DEFAULT_SOLVER", "Degraded", "Degrader", "StochasticOption", "SynthesisResult", "Synthesizer",
           "condition_kind",
           "velocity_condition"]
