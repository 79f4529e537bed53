"""``python -m benchmarks``: run the butler benchmarks (see ``--help``)."""

from benchmarks.run import main

raise SystemExit(main())
