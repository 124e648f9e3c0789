"""The `coserve` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from coserve.cli.cluster import add_cluster_parser
from coserve.cli.inspect import add_inspect_parser
from coserve.cli.parser import CommandParser
from coserve.cli.plan import add_plan_parser, add_simulate_parser
from coserve.cli.profile import add_profile_parser
from coserve.cli.repo import add_repo_parser
from coserve.cli.run import add_bench_parser, add_demo_parser, add_run_parser
from coserve.cli.serve import add_serve_parser
from coserve.cli.zoo import add_trace_parser, add_zoo_parser
from coserve.errors import CoserveError

# One function per command group adds its subcommands; the order is `coserve --help`'s.
_COMMAND_GROUPS = (
    add_zoo_parser,
    add_repo_parser,
    add_run_parser,
    add_trace_parser,
    add_bench_parser,
    add_demo_parser,
    add_inspect_parser,
    add_serve_parser,
    add_profile_parser,
    add_simulate_parser,
    add_plan_parser,
    add_cluster_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description=__doc__, allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine decisions")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for add in _COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a CoserveError prints one `error:` line and exits 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CoserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
