"""Model repositories: a directory with coe.yaml (architectures, experts, routing rules,
usage prior) and the experts' safetensors files. `open_repository` validates it all up
front, reading only headers, and returns a read-only `CoEModel`. Format: docs/repository.md.
"""

from coserve.repository.load import open_repository, write_repository
from coserve.repository.routing import RouteCallable, Router
from coserve.repository.spec import ArchitectureSpec, CoEModel, ExpertSpec, Stage
from coserve.repository.usage import blend_usage, usage_from_mix, usage_from_sample

__all__ = [
    "ArchitectureSpec",
    "CoEModel",
    "ExpertSpec",
    "RouteCallable",
    "Router",
    "Stage",
    "blend_usage",
    "open_repository",
    "usage_from_mix",
    "usage_from_sample",
    "write_repository",
]
