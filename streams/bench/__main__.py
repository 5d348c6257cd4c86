"""``python -m streams.bench``: the benchmark (``funnel bench``)."""

import sys

from streams.bench import main

sys.exit(main())
