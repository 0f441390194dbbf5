"""Synthesize LR datasets from HR folders (work in progress: issue 'synthesize.py')."""

import sys

if __name__ == "__main__":
    sys.exit("synthesize.py: not yet implemented; use degflow.synthesis.Synthesizer from Python meanwhile")
