"""``python -m degflow <tool> [arguments]``: see :mod:`degflow.cli`."""

from degflow.cli import main

main()
