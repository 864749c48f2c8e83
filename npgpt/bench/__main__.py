"""Command line entry point: ``python -m npgpt.bench WORKLOAD [--json]``."""

import argparse
import importlib
import json
import sys

from npgpt.bench import WORKLOADS


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m npgpt.bench", description=__doc__)
    sub = parser.add_subparsers(dest="workload", required=True)
    modules = {}
    for name in WORKLOADS:
        module = importlib.import_module(f"npgpt.bench.{name}")
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
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
