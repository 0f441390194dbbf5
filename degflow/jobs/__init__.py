"""Batch jobs over folders and runs: the LR dataset job (``synthesize.py``), evaluation against
real LR, sweep reports, shard merging, conversion of the authors' weights. Jobs do not import
each other; each is called by its command in :mod:`degflow.cli`."""
