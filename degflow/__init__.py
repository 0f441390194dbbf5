"""degflow: continuous real-world degradation modelling via latent flow matching (DegFlow).

The package is arranged in layers, one folder each (docs/ARCHITECTURE.md): ``core`` (math),
``infra`` (files, runtime, checkpoints), ``metrics``, ``baselines``, ``viz``, ``models``,
``data``, ``generation``, ``training``, ``jobs``, ``sr`` and ``cli`` (every command,
``python -m degflow <tool>``).
"""

from degflow import _moved

__version__ = "0.1.0"

_moved.install()
