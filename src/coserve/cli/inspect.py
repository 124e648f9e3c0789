"""`coserve inspect DIR` (durable batch inspection into SQLite) and `coserve inspect
export` (its rows as CSV). The work is in coserve.inspect."""

from __future__ import annotations

import argparse
from pathlib import Path

from coserve.cli.options import (
    add_engine_options,
    add_policy_option,
    add_trust_option,
    engine_config,
)
from coserve.cli.parser import CommandParser

EXPORT_WORD = "export"  # `coserve inspect export ...`; a lot folder named so is ./export


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="inspect every image in a directory into SQLite (resumable)",
                       usage="%(prog)s DIR --repo REPO --db DB [options]\n"
                             f"       %(prog)s {EXPORT_WORD} --db DB --csv OUT.csv",
                       description="Run every image of DIR through the CoE; one row per image in "
                                   f"--db. Killed and restarted, it resumes. `coserve inspect "
                                   f"{EXPORT_WORD} --db DB --csv OUT.csv` writes the rows to CSV "
                                   f"(a lot folder named {EXPORT_WORD} is given as ./{EXPORT_WORD}).")
    assert isinstance(p, CommandParser), "build_parser makes every subcommand a CommandParser"
    p.add_argument("dir", type=Path, help="the lot: PNG/JPEG/.safetensors files named "
                                          "'<component_type>__*' or listed in DIR/manifest.csv "
                                          "(filename,component_type,...)")
    p.add_argument("--repo", type=Path, required=True, help="the model repository")
    p.add_argument("--db", type=Path, required=True, help="SQLite results file; run again to resume")
    add_policy_option(p)
    p.add_argument("--max-inflight", type=int, default=None, help="images submitted but not answered: bounds memory (default 128)")
    p.add_argument("--export-csv", type=Path, default=None, help="after the run, write every row to this CSV")
    p.add_argument("--retry-failed", action="store_true",
                   help="inspect every failed row again (without it, only those that failed "
                        "for a reason other than the image: quarantine, timeout, out of memory, "
                        "shutdown)")
    p.add_argument("--accept-repo-change", action="store_true",
                   help="resume although the repository differs from the last run's (its "
                        "coe.yaml or weight files changed): the rows of both stay in --db")
    add_engine_options(p, backlog=False)
    add_trust_option(p)
    p.set_defaults(func=cmd_inspect)

    hint = f"to inspect a lot folder named {EXPORT_WORD}, give it as ./{EXPORT_WORD}"
    export = p.add_word(EXPORT_WORD, hint=hint, epilog=f"{hint.capitalize()}.",
                        description="Write every row of an inspection database to CSV.")
    export.add_argument("--db", type=Path, required=True, help="the SQLite results file")
    export.add_argument("--csv", type=Path, required=True, help="the CSV to write")
    export.set_defaults(func=cmd_export)


def cmd_inspect(args: argparse.Namespace) -> int:
    from coserve.inspect.command import inspect_command

    return inspect_command(args.dir, args.repo, args.db, engine_config(args, args.policy),
                           max_inflight=args.max_inflight, export_to=args.export_csv,
                           trust_code=args.trust_repo_code, retry_failed=args.retry_failed,
                           accept_repo_change=args.accept_repo_change)


def cmd_export(args: argparse.Namespace) -> int:
    from coserve.inspect.store import export_csv

    num_rows = export_csv(args.db, args.csv)
    print(f"wrote {num_rows} rows to {args.csv}")
    return 0
