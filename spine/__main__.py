"""`python -m spine` runs the CLI."""

import sys

from spine.cli import main

sys.exit(main())
