"""Command line entry point: ``python -m npgpt.bench WORKLOAD [--json]``."""

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Optional

from npgpt.bench import WORKLOADS


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m npgpt.bench", description=__doc__)
    sub = parser.add_subparsers(dest="workload", required=True)
    # Import only the workload that was asked for: each pulls in its own
    # dependencies (and may not exist yet while the package grows).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name in WORKLOADS:
        p = sub.add_parser(name)
        p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
        if name == chosen:
            module = importlib.import_module(f"npgpt.bench.{name.replace('-', '_')}")   # nanogpt-char: nanogpt_char.py
            modules[name] = module
            p.description = module.__doc__
            module.add_arguments(p)
    args = parser.parse_args(argv)
    result = modules[args.workload].run(args)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
