"""Opening a model repository (validating everything up front) and writing coe.yaml."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from coserve.errors import RepositoryError
from coserve.repository._common import import_callable, listed, repo_error
from coserve.repository.graph import check_routing
from coserve.repository.routing import Router
from coserve.repository.schema import (
    REPOSITORY_FILE,
    ExpertEntry,
    RepositoryDoc,
    parse_document,
    read_document,
)
from coserve.repository.spec import CoEModel, ExpertSpec
from coserve.repository.usage import prior_usage
from coserve.repository.weights import TensorLayout, architecture_layout, check_expert

_MAX_WEIGHT_ERRORS_SHOWN = 10

log = logging.getLogger(__name__)


def open_repository(path: str | Path, *, trust_code: bool = False) -> CoEModel:
    """The CoE model in a repository directory (or its coe.yaml).

    Checks everything before returning: the file's keys and types, factories (built on
    the meta device), every weight file's header against its architecture, routing
    references, cycles and stages, and the usage prior. Reads headers only, never
    weights. RepositoryError naming the file, the expert or architecture, and the fix.

    A repository is code: its factories are called with coe.yaml's args and its routing
    callable with every request. Without `trust_code` only coserve's own architectures and
    functions are imported, and weight files are read only inside the repository folder
    (no absolute path, `..` or symbolic link); anything else is a RepositoryError that
    says to trust the repository, raised before any of its code is imported.
    """
    file, root = _locate(Path(path))
    doc = parse_document(read_document(file), file, default_name=root.name)
    entries = {entry.name: entry for entry in doc.experts}
    _check_architecture_refs(doc, file)
    layouts = {name: architecture_layout(arch, file, trust_code)
               for name, arch in doc.architectures.items()}
    warnings = check_routing(doc.routing, entries, doc.architectures, file, trust_code)
    usage, label_probs, usage_warnings = prior_usage(doc.usage, doc.routing, entries, doc.architectures, file)
    experts = _check_weights(doc.experts, root, layouts, trust_code)
    for warning in warnings + usage_warnings:
        log.warning("%s: %s", file, warning)
    return CoEModel(
        name=doc.name,
        root=root,
        architectures=doc.architectures,
        experts=MappingProxyType(experts),
        router=_router(doc),
        usage=MappingProxyType(usage),
        label_probs=MappingProxyType(label_probs),
        warnings=tuple(warnings + usage_warnings),
    )


def write_repository(root: Path, spec_dict: dict[str, Any]) -> Path:
    """Write `spec_dict` as root/coe.yaml (creating root) and return the file's path.

    Tuples, paths, enums and read-only mappings are written as plain YAML. Weight files
    are the caller's to write (safetensors.torch.save_file); nothing is validated here:
    open_repository does that once the weights exist.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    file = root / REPOSITORY_FILE
    text = yaml.safe_dump(_plain(spec_dict), sort_keys=False, default_flow_style=None)
    file.write_text(text, encoding="utf-8")
    return file


def _locate(path: Path) -> tuple[Path, Path]:
    """(coe.yaml, repository root), both absolute."""
    path = path.expanduser().absolute()
    if path.is_file():
        return path, path.parent
    return path / REPOSITORY_FILE, path


def _check_architecture_refs(doc: RepositoryDoc, file: Path) -> None:
    for entry in doc.experts:
        if entry.architecture not in doc.architectures:
            raise repo_error(file, f"expert {entry.name!r}", f"architecture "
                             f"{entry.architecture!r} is not defined",
                             f"define it under architectures, or use one of "
                             f"{listed(doc.architectures)}")


def _check_weights(
    entries: tuple[ExpertEntry, ...], root: Path, layouts: Mapping[str, TensorLayout],
    trust_code: bool,
) -> dict[str, ExpertSpec]:
    """Every expert's spec. Problems are gathered over all files, because a bad copy or
    export usually breaks several and each round trip to fix one is slow."""
    experts: dict[str, ExpertSpec] = {}
    problems: list[str] = []
    for entry in entries:
        try:
            experts[entry.name] = check_expert(entry, root, layouts[entry.architecture], trust_code)
        except RepositoryError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise RepositoryError(problems[0])
    if problems:
        shown = problems[:_MAX_WEIGHT_ERRORS_SHOWN]
        more = len(problems) - len(shown)
        raise RepositoryError(f"{len(problems)} experts have bad weight files:\n  "
                              + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
    return experts


def _router(doc: RepositoryDoc) -> Router:
    routing = doc.routing
    route_callable = None
    if routing.callable is not None:
        route_callable = import_callable(routing.callable)  # check_routing vouched (and trusted) it
    return Router(routing.field, routing.first_map, routing.next_table,
                  [entry.name for entry in doc.experts], route_callable, routing.callable or "",
                  routing.cascade)


def _plain(value: Any) -> Any:
    """`value` with the types yaml.safe_dump refuses turned into plain ones."""
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    return value
