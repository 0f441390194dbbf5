"""``python train.py stage=rae|lfm ...``: train a DegFlow stage (:mod:`degflow.cli.train`)."""

from degflow.cli.train import cli

if __name__ == "__main__":
    cli()
