"""``python -m npgpt ...``: the same command line as ``npgpt`` (see ``npgpt.cli``)."""

import sys

from npgpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
