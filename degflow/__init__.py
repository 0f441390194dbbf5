"""degflow: continuous real-world degradation modelling via latent flow matching (DegFlow)."""

__version__ = "0.1.0"
