"""``python -m npgpt ...``: the same command line as ``npgpt`` (see ``npgpt.apps.cli``)."""

import sys

from npgpt.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
