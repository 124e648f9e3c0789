"""The parser class of every `coserve` subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that hands its arguments to another parser when the first of
    them is one of its words: `coserve inspect export --db D --csv C` beside
    `coserve inspect DIR ...`. argparse subcommands would restrict DIR to a fixed set of
    words; here anything but a word is DIR, and a directory named like a word is given
    with a path (./export).

    Options are never abbreviated: `bench --json` must not quietly mean `--json-out`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.words: dict[str, argparse.ArgumentParser] = {}

    def add_word(self, word: str, *, hint: str = "", **kwargs: Any) -> argparse.ArgumentParser:
        """A parser for `<this command> <word> ...`; `hint` ends its error lines (say, how
        to mean the other usage)."""
        parser = _WordParser(prog=f"{self.prog} {word}", hint=hint, allow_abbrev=False, **kwargs)
        self.words[word] = parser
        return parser

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if args and args[0] in self.words:
            return self.words[args[0]].parse_known_args(list(args[1:]), namespace)
        return super().parse_known_args(args, namespace)


class _WordParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, hint: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hint = hint

    def error(self, message: str) -> NoReturn:
        super().error(f"{message} ({self.hint})" if self.hint else message)
