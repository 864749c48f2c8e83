"""``python -m npgpt.apps.serve MODEL [options]``: the same as ``npgpt serve``."""

import sys

from npgpt.apps.serve.server import main

sys.exit(main())
