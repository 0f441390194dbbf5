"""``python synthesize.py ckpt=... input=... out=...``: LR datasets at any scale (:mod:`degflow.cli.synthesize`)."""

from degflow.cli.synthesize import cli

if __name__ == "__main__":
    cli()
