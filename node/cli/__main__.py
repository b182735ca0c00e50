"""`python -m node.cli`: the same as the `stagewise` command."""

import sys

from node.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
