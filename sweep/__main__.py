"""`python -m sweep` is the `memsweep` command."""

import sys

from sweep.cli import main

sys.exit(main())
