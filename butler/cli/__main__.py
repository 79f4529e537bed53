"""``python -m butler.cli`` runs the ``butler`` command."""

from ._main import main

main()
