"""Downstream super-resolution: SR networks, SR training pairs and sets, training and scoring.

Used by ``experiments/sr_compare.py`` (issue #16): do SR networks trained on degflow-generated
pairs beat those trained on bicubic, procedural or real discrete-scale pairs?
"""
