"""``python -m dosepred``: the command-line interface without an installed entry point."""

from .cli import main

main()
