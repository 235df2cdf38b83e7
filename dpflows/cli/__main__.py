"""`python -m dpflows.cli`: the same command as `dpflows`."""

import sys

from dpflows.cli import main

sys.exit(main())
