"""The deployment's replica: holds up to N experts in Ray's multiplexing cache, loads a
missing one honestly from storage, runs batches of one expert, and reports every load to
a ledger actor. Plus the picklable messages between the driver, the replicas and the
ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from coserve.bench.ray_peer.config import RayPeerConfig
from coserve.loader.safetensors_view import parse_safetensors
from coserve.loader.storage import Storage, StorageProfile, storage_profile
from coserve.repository import CoEModel
from coserve.repository.spec import ArchitectureSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertFile:
    architecture: str
    weights_path: str
    file_bytes: int


@dataclass(frozen=True)
class Architecture:
    """A picklable ArchitectureSpec (the spec holds read-only mapping proxies)."""

    name: str
    factory: str
    args: dict[str, Any]
    input_shape: tuple[int, ...]
    labels: tuple[str, ...]

    def spec(self) -> ArchitectureSpec:
        return ArchitectureSpec(self.name, self.factory, self.args, self.input_shape, self.labels)


@dataclass(frozen=True)
class ReplicaSetup:
    experts: dict[str, ExpertFile]
    architectures: dict[str, Architecture]
    storage: StorageProfile
    num_threads: int
    preload: tuple[str, ...]  # loaded in this order before the window
    build_device: str  # "meta" or "cpu", see RayPeerConfig


@dataclass(frozen=True)
class LoadRecord:
    """One model load inside a replica."""

    replica: str
    expert: str
    file_bytes: int
    read_s: float  # storage read + parse, as coserve's loader times it
    build_s: float  # module construction + load_state_dict


@dataclass(frozen=True)
class TaskReply:
    label_index: int
    detail: dict[str, Any]
    replica: str
    batch_id: int
    batch_size: int
    exec_s: float


class LoadLedger:
    """A Ray actor every replica reports its loads to, in the order they finish."""

    def __init__(self) -> None:
        self._records: list[LoadRecord] = []

    def record(self, loads: tuple[LoadRecord, ...]) -> None:
        self._records.extend(loads)

    def count(self) -> int:
        return len(self._records)

    def since(self, start: int) -> list[LoadRecord]:
        return self._records[start:]


def replica_setup(model: CoEModel, config: RayPeerConfig, num_models: int) -> ReplicaSetup:
    """What every replica is built from: the experts' files, the architectures, its share
    of the storage profile, and the top-`num_models` experts by usage to preload."""
    experts = {
        e.name: ExpertFile(e.architecture, str(e.weights_path), e.file_bytes)
        for e in model.experts.values()
    }
    architectures = {
        a.name: Architecture(a.name, a.factory, dict(a.args), tuple(a.input_shape), tuple(a.labels))
        for a in model.architectures.values()
    }
    by_usage = sorted(model.experts, key=lambda e: (-model.usage.get(e, 0.0), e))
    profile = storage_profile(config.storage)
    if profile.read_bytes_per_s is not None and config.num_replicas > 1:
        # Replicas are separate processes, so they cannot share coserve's serial-device
        # pacer; an even split gives them one device's bandwidth together.
        profile = StorageProfile(f"{profile.name}/{config.num_replicas}",
                                 profile.read_bytes_per_s / config.num_replicas)
    return ReplicaSetup(
        experts, architectures, profile,
        num_threads=config.threads_per_replica,
        # least likely first, so the most likely is the most recently used
        preload=tuple(reversed(by_usage[:num_models])),
        build_device=config.build_device,
    )


class ExpertReplicaBase:
    """Everything of the deployment except the two Ray decorators, which need N and the
    batch size at class-definition time (see `deployment_class`)."""

    async def __init__(self, setup: ReplicaSetup, ledger: Any) -> None:
        from ray import serve

        self._setup = setup
        self._ledger = ledger
        self._replica = serve.get_replica_context().replica_tag
        self._storage = Storage(setup.storage)
        self._architectures = {n: a.spec() for n, a in setup.architectures.items()}
        self._num_batches = 0
        self._unreported: list[LoadRecord] = []  # loads not yet in the ledger
        torch.set_num_threads(setup.num_threads)
        # One compute lane (like one coserve executor) and one load lane per replica.
        self._compute = ThreadPoolExecutor(1, "ray-peer-compute",
                                           initializer=torch.set_num_threads,
                                           initargs=(setup.num_threads,))
        self._loads = ThreadPoolExecutor(1, "ray-peer-load")
        for expert in setup.preload:
            try:
                await self.get_model(expert)
            except Exception as exc:  # a broken expert fails its requests, not the replica
                log.warning("ray peer: preloading expert %r failed: %s", expert, exc)
        await self._report_loads()

    async def get_model(self, expert: str) -> torch.nn.Module:  # replaced by the subclass
        raise NotImplementedError

    async def _load_expert(self, expert: str) -> torch.nn.Module:
        loop = asyncio.get_running_loop()
        module, load = await loop.run_in_executor(self._loads, self._read_and_build, expert)
        # Reported by the batch that asked for it, outside Ray's model-cache lock, so the
        # ledger's round trip does not lengthen Ray's serialised loads.
        self._unreported.append(load)
        return module

    async def _report_loads(self) -> None:
        loads, self._unreported = tuple(self._unreported), []
        if loads:
            await self._ledger.record.remote(loads)

    def _read_and_build(self, expert: str) -> tuple[torch.nn.Module, LoadRecord]:
        file = self._setup.experts[expert]
        t0 = time.perf_counter()
        buf = self._storage.read(file.weights_path, expected_bytes=file.file_bytes)
        tensors = parse_safetensors(buf, source=file.weights_path)
        t1 = time.perf_counter()
        module = self._architectures[file.architecture].build(self._setup.build_device)
        module.load_state_dict(tensors, strict=True, assign=self._setup.build_device == "meta")
        load = LoadRecord(self._replica, expert, file.file_bytes, t1 - t0,
                          time.perf_counter() - t1)
        return module, load

    async def _run_batch(self, inputs: list[np.ndarray]) -> list[TaskReply]:
        from ray import serve

        expert = serve.get_multiplexed_model_id()
        module = await self.get_model(expert)
        self._num_batches += 1
        batch_id = self._num_batches
        loop = asyncio.get_running_loop()
        compute = loop.run_in_executor(self._compute, _forward, module, inputs)
        # Before replying, so every load is in the ledger when the driver reads it after
        # the last reply; it overlaps the forward pass.
        await self._report_loads()
        decoded, exec_s = await compute
        return [
            TaskReply(d.label_index, d.detail, self._replica, batch_id, len(inputs), exec_s)
            for d in decoded
        ]


def _forward(module: torch.nn.Module, inputs: list[np.ndarray]) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(inputs))  # [N, C, H, W]
        decoded = module.decode(module(x))
    return decoded, time.perf_counter() - t0


def deployment_class(num_models: int, max_batch_size: int, batch_wait_timeout_s: float) -> type:
    """The replica class with Ray's model cache (`num_models` per replica) and batching."""
    from ray import serve

    class ExpertReplica(ExpertReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=num_models)
        async def get_model(self, expert: str) -> torch.nn.Module:
            return await self._load_expert(expert)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def __call__(self, inputs: list[np.ndarray]) -> list[TaskReply]:
            return await self._run_batch(inputs)

    return ExpertReplica
