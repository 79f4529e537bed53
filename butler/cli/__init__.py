"""The ``butler`` command line: create, inspect, verify and clean repositories.

Importing this package is cheap (click and the stdlib): each command imports the butler
internals it needs (SQLAlchemy, formatters...) when it runs, so ``butler --help`` and shell
completion start fast.
"""

from ._main import cli, main

__all__ = ["cli", "main"]
