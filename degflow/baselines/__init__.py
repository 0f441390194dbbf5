"""Degradations degflow is compared with: the procedural Real-ESRGAN pipeline and the
least-squares linear kernel fitted on real pairs, with their image operations; and the noise
model (fitted on real vs predicted LR) that adds a stochastic part to a deterministic one."""
