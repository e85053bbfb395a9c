"""Train and evaluate ELASTIC (or any RecBole model) with RecBole's pipeline. See README.md."""

import sys

from recbole_elastic.cli import main

if __name__ == "__main__":
    sys.exit(main())
