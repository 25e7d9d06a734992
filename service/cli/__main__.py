"""`python -m service.cli` = the `esnac` console script."""

import sys

from service.cli import main

sys.exit(main())
