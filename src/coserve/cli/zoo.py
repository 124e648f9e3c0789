"""`coserve zoo tiny`, `coserve zoo build pcb`, `coserve trace make`: generated
repositories and their traces."""

from __future__ import annotations

import argparse
from pathlib import Path

from coserve.cli.cache import cache_dir, default_pcb_root, ensure_pcb
from coserve.cli.options import DEFAULT_PCB_SIZE, PCB_SIZES, progress_bar

# coserve.zoo.synth.SIZES, named here so that building the parser imports no torch.
SYNTH_SIZES = ("tiny", "default")


def add_zoo_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="generate a model repository")
    zoo_sub = zoo.add_subparsers(dest="kind", required=True)
    tiny = zoo_sub.add_parser("tiny", help="a dozen small experts and a sample trace, in seconds")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_zoo_tiny)

    build = zoo_sub.add_parser("build", help="generate a workload repository")
    build_sub = build.add_subparsers(dest="workload", required=True)
    pcb = build_sub.add_parser("pcb", help="the circuit-board inspection CoE")
    pcb.add_argument("--out", type=Path, default=None, help="directory (default: the cache)")
    pcb.add_argument("--size", default=DEFAULT_PCB_SIZE, choices=PCB_SIZES)
    pcb.add_argument("--reference", action="store_true", help="the reference size (~350 experts, ~60 GB)")
    pcb.add_argument("--force", action="store_true", help="rebuild even if the directory holds one")
    pcb.add_argument("--cascade", action="store_true",
                     help="add a small classifier per detector group that answers first and "
                          "escalates unsure answers to the full classifiers (routing.cascade); "
                          "default directory: pcb-SIZE-cascade")
    pcb.set_defaults(func=cmd_zoo_pcb)

    synth = build_sub.add_parser("synth", help="a generated three-stage CoE with fan-out and "
                                 "a shifting trace (docs/synth.md)")
    synth.add_argument("--out", type=Path, default=None, help="directory (default: the cache)")
    synth.add_argument("--size", default="default", choices=SYNTH_SIZES)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--force", action="store_true", help="rebuild even if the directory holds one")
    synth.set_defaults(func=cmd_zoo_synth)


def add_trace_parser(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="make traces")
    trace_sub = trace.add_subparsers(dest="action", required=True)
    make = trace_sub.add_parser("make", help="a board inspection task from a pcb repository")
    make.add_argument("repo", type=Path)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--board", default="A", help="A (2,500 images) or B (3,500 images)")
    make.add_argument("--num", type=int, default=None, help="number of images (default: the task's)")
    make.add_argument("--interval-s", type=float, default=None, help="seconds between images (default 0.004)")
    make.add_argument("--backlog", action="store_true", help="all images arrive at once")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=cmd_trace_make)


def cmd_zoo_tiny(args: argparse.Namespace) -> int:
    from coserve.zoo.tiny import build_tiny

    root, trace = build_tiny(args.dir, seed=args.seed)
    print(f"wrote repository {root} and trace {trace}")
    return 0


def cmd_zoo_pcb(args: argparse.Namespace) -> int:
    size = "reference" if args.reference else args.size
    root = args.out or default_pcb_root(size, cascade=args.cascade)
    if (root / "coe.yaml").is_file() and not args.force:
        print(f"{root} already holds a repository (use --force to rebuild)")
        return 0
    (root / "coe.yaml").unlink(missing_ok=True)
    ensure_pcb(root, size, cascade=args.cascade)
    print(f"wrote repository {root}")
    return 0


def cmd_zoo_synth(args: argparse.Namespace) -> int:
    from coserve.zoo.synth import build_synth

    root = args.out or cache_dir() / "zoo" / f"synth-{args.size}"
    if (root / "coe.yaml").is_file() and not args.force:
        print(f"{root} already holds a repository (use --force to rebuild)")
        return 0
    (root / "coe.yaml").unlink(missing_ok=True)
    bar, update = progress_bar(f"building synth-{args.size} into {root}")
    with bar:
        root, trace = build_synth(root, size=args.size, seed=args.seed, progress=update)
    print(f"wrote repository {root} and trace {trace} (the shift point: {root / 'synth.json'})")
    return 0


def cmd_trace_make(args: argparse.Namespace) -> int:
    from coserve.trace import write_trace
    from coserve.zoo.pcb import ARRIVAL_INTERVAL_S, pcb_requests

    interval = 0.0 if args.backlog else (args.interval_s if args.interval_s is not None else ARRIVAL_INTERVAL_S)
    requests = pcb_requests(args.repo, board=args.board, num_requests=args.num,
                            interval_s=interval, seed=args.seed)
    write_trace(args.out, requests)
    num_defects = sum(r.fields["defect"] is not None for r in requests)
    print(f"wrote {args.out}: {len(requests)} images from board {args.board}, "
          f"{num_defects} with injected defects, one every {interval * 1e3:.1f} ms")
    return 0
