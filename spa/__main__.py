"""`python -m spa`: the `spa` command."""
import sys

from spa.cli import main

sys.exit(main())
