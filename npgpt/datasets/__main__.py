"""``python -m npgpt.datasets ...``: fetch, list and check the pinned data sets (see ``npgpt.datasets``)."""

import sys

from npgpt.datasets import main

if __name__ == "__main__":
    sys.exit(main())
