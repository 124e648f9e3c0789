"""Helpers shared by the repository modules: error messages and import paths."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coserve.errors import RepositoryError

# Long lists (hundreds of component types) would bury the message that carries them.
MAX_LISTED = 12


def repo_error(file: Path | str, subject: str, problem: str, fix: str) -> RepositoryError:
    """The one message shape for an invalid repository: where, what, and how to fix it."""
    return RepositoryError(f"{file}: {subject}: {problem}; fix: {fix}")


def listed(items: Iterable[object], limit: int = MAX_LISTED) -> str:
    """Comma-separated items, truncated with a count of the rest."""
    names = [str(item) for item in items]
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def import_object(path: str) -> Any:
    """The object at a "package.module:attr.sub" import path.

    ImportError (with the reason) for a malformed path, a module that does not import
    (whatever the module itself raised), or a missing attribute.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ImportError(f"{path!r} is not of the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # user code: a SyntaxError or RuntimeError means the same to us
        raise ImportError(
            f"module {module_name!r} does not import ({type(exc).__name__}: {exc})"
        ) from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def import_callable(path: str) -> Any:
    """import_object, plus the check that the object can be called."""
    obj = import_object(path)
    if not callable(obj):
        raise ImportError(f"{path!r} is a {type(obj).__name__}, not a callable")
    return obj
