"""The generation core, below training and below the dataset job.

- :mod:`degflow.generation.synthesizer`: :class:`Synthesizer` (load a stage-2 checkpoint, scale
  to time, encode, one ODE solve, decode; the ``ae_interp`` oracle) and :class:`SynthesisResult`.
- :mod:`degflow.generation.tiling`: tile spans, blending windows and the blending loop.

Training validation, the Python API and ``synthesize.py`` (through
:func:`degflow.lr_dataset.write_lr_dataset`) all call this one core.
"""

from degflow.generation.synthesizer import DEFAULT_SOLVER, SynthesisResult, Synthesizer

__all__ = ["DEFAULT_SOLVER", "SynthesisResult", "Synthesizer"]
