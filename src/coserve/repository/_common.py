"""Helpers shared by the repository modules: error messages, import paths, and which code
a repository may run without being trusted."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from coserve.errors import RepositoryError

# Long lists (hundreds of component types) would bury the message that carries them.
MAX_LISTED = 12
# A repository names code by import path, and coserve calls it with arguments from coe.yaml:
# untrusted, only coserve's own architectures (factories) and functions (routing callables).
BUILTIN_FACTORIES = "coserve.architectures"
BUILTIN_CALLABLES = "coserve"
TRUST_FIX = ("pass --trust-repo-code (in Python: open_repository(path, trust_code=True)) if "
             "you trust this repository")


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


def check_trusted(path: str, package: str, trust_code: bool, file: Path, subject: str) -> None:
    """RepositoryError, before anything is imported, unless `trust_code` or `path` names an
    object that `package` (coserve's own code) defines. `subject` names the key."""
    if trust_code or is_builtin(path, package):
        return
    raise repo_error(file, subject, f"{path!r} is code from outside {package}, and a repository's "
                     "code runs with your permissions", TRUST_FIX)


def is_builtin(path: str, package: str) -> bool:
    """Whether `path` names an object defined in `package`: its module is in the package,
    no step of the attribute path is a module or a dunder (`pkg.mod:os.system` and
    `pkg.mod:f.__globals__` reach other code), and the object's `__module__` is the
    package's. A module of the package that does not import is left for the import
    check to report (importing coserve's own code is safe)."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not _in_package(module_name, package):
        return False
    names = attr_path.split(".")
    if any(not name or name.startswith("__") for name in names):
        return False
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception:  # reported by import_callable, with the reason
        return True
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return True  # a missing attribute: import_callable says so
        if isinstance(obj, ModuleType):
            return False
    return _in_package(getattr(obj, "__module__", None) or "", package)


def _in_package(module_name: str, package: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")
