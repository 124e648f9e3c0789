"""`coserve repo quantize REPO --to fp16|bf16|int8`: precision tiers at rest, written
beside the fp32 weights and recorded in coe.yaml (coserve.repository.quantize)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coserve.cli.options import add_trust_option
from coserve.types import VARIANT_PRECISIONS


def add_repo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repo", help="maintain a model repository: `repo quantize`",
                       description="Model repository maintenance.")
    words = p.add_subparsers(dest="repo_command", required=True)
    q = words.add_parser("quantize", allow_abbrev=False,
                         help="write each expert's lower-precision variant beside its weights",
                         description="Write every expert's fp16, bf16 or int8 (per output "
                                     "channel, fp32 scales) variant beside its fp32 weights "
                                     "and record it in coe.yaml (`variants:`); experts that "
                                     "already have it are kept. Load one with --precision.")
    q.add_argument("repo", type=Path)
    q.add_argument("--to", dest="precision", required=True, choices=VARIANT_PRECISIONS,
                   help="the stored precision to write")
    add_trust_option(q)
    q.set_defaults(func=cmd_repo_quantize)


def cmd_repo_quantize(args: argparse.Namespace) -> int:
    from coserve.repository.quantize import quantize_repository

    report = quantize_repository(args.repo, args.precision, trust_code=args.trust_repo_code)
    print(f"{args.precision}: wrote {report.num_written} variant(s), kept {report.num_kept}; "
          f"{report.variant_bytes / 1e6:.1f} MB at rest vs {report.fp32_bytes / 1e6:.1f} MB "
          f"fp32 ({report.ratio:.1%}, {1 - report.ratio:.1%} fewer bytes per load)")
    return 0
