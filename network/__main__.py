"""`python -m network` is the `cpn` command."""

import sys

from network.cli import main

sys.exit(main())
