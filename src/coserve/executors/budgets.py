"""Budgets per device: each device (the CPU's RAM, each GPU) has its own pool of expert
weights, split over that device's executors, and its own activation memory per executor.
A GPU's budget may be a fraction of its memory, and is checked against what the device
really has, through `DeviceMemory` (torch on a real machine, fixed sizes in a test or a
simulated machine). Pure Python: torch is imported only by `TorchDevices`' calls."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coserve.errors import ConfigError

# What a GPU pool may not use: the CUDA context (300-500 MB), cuBLAS/cuDNN workspaces and
# the caching allocator's slack. Checked budgets leave this much of the free memory alone.
CUDA_RESERVE_BYTES = 1 << 30
GPU_SYNTAX = ("give bytes (e.g. 12e9), a fraction of each GPU's memory (e.g. 0.8), or one "
              "per GPU (e.g. cuda:0=12e9,cuda:1=0.8)")


class DeviceMemory(Protocol):
    """What the devices have; injectable so the GPU budget logic runs without a GPU."""

    def memory_bytes(self, device: str) -> tuple[int, int]:
        """(free, total) bytes of `device` ('cuda:N'); ConfigError when it is missing."""
        ...

    def host_memory_bytes(self) -> int | None:
        """The host's RAM in bytes (None: unknown)."""
        ...


class TorchDevices:
    """This machine's GPUs, as `torch.cuda.mem_get_info` reports them."""

    def memory_bytes(self, device: str) -> tuple[int, int]:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"executors on {device} need CUDA, which this machine lacks (torch "
                              f"sees no GPU); use cpu executors, e.g. --executors cpu:2")
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{device} does not exist: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), cuda:0 to "
                              f"cuda:{torch.cuda.device_count() - 1}")
        free, total = torch.cuda.mem_get_info(index)
        return int(free), int(total)

    def host_memory_bytes(self) -> int | None:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


class FixedDevices:
    """Devices of known sizes: a machine to simulate, or a test's GPU of N bytes."""

    def __init__(self, total_bytes: Mapping[str, int], free_bytes: Mapping[str, int] | None = None,
                 host_bytes: int | None = None) -> None:
        self._total = dict(total_bytes)
        self._free = dict(free_bytes or total_bytes)
        self._host = host_bytes

    def memory_bytes(self, device: str) -> tuple[int, int]:
        if device not in self._total:
            raise ConfigError(f"{device} does not exist: the devices are {sorted(self._total)}")
        return self._free[device], self._total[device]

    def host_memory_bytes(self) -> int | None:
        return self._host


@dataclass(frozen=True)
class DeviceBudget:
    """One device's own budget. `device`: 'cuda' (every GPU without its own entry),
    'cuda:N' or 'cpu'. Expert weights in `budget_bytes`, or (GPUs) `memory_fraction` of
    the device's total memory, or neither (the config's budget); activation memory per
    executor on this device in `activation_bytes` (None: the config's)."""

    device: str
    budget_bytes: int | None = None
    memory_fraction: float | None = None
    activation_bytes: int | None = None

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if not (self.device in ("cpu", "cuda") or (kind == "cuda" and index.isdigit())):
            raise ConfigError(f"device budget for {self.device!r}: name 'cpu', 'cuda' (every "
                              f"GPU) or 'cuda:N'")
        if self.budget_bytes is not None and self.memory_fraction is not None:
            raise ConfigError(f"{self.device}: give budget_bytes or memory_fraction, not both")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ConfigError(f"{self.device}: budget_bytes must be positive, got {self.budget_bytes}")
        if self.memory_fraction is not None:
            if kind == "cpu":
                raise ConfigError("a fraction of memory is for GPU budgets; give the CPU pool in "
                                  "bytes (--budget-bytes) or of expert bytes (--budget-fraction)")
            if not 0 < self.memory_fraction <= 1:
                raise ConfigError(f"{self.device}: memory_fraction must be in (0, 1], got "
                                  f"{self.memory_fraction}")
        if self.activation_bytes is not None and self.activation_bytes <= 0:
            raise ConfigError(f"{self.device}: activation_bytes must be positive, got "
                              f"{self.activation_bytes}")


def parse_gpu_budgets(text: str) -> tuple[DeviceBudget, ...]:
    """`--gpu-budget-bytes`: '12e9' (bytes of expert weights on each GPU), '0.8' (that
    fraction of each GPU's total memory), or 'cuda:0=12e9,cuda:1=0.8' (one per GPU)."""
    budgets = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        device, _, value = part.rpartition("=")
        budgets.append(_gpu_budget(device.strip() or "cuda", value.strip(), text))
    if not budgets:
        raise ConfigError(f"cannot read --gpu-budget-bytes {text!r}: {GPU_SYNTAX}")
    devices = [b.device for b in budgets]
    if len(set(devices)) != len(devices):
        raise ConfigError(f"--gpu-budget-bytes {text!r} names a GPU twice: {GPU_SYNTAX}")
    return tuple(budgets)


def _gpu_budget(device: str, value: str, text: str) -> DeviceBudget:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if device != "cuda" and not device.startswith("cuda:"):
        number = -1.0
    if 0 < number <= 1:
        return DeviceBudget(device, memory_fraction=number)
    if 1 < number < 1e18:
        return DeviceBudget(device, budget_bytes=int(number))
    raise ConfigError(f"cannot read --gpu-budget-bytes {text!r}: {GPU_SYNTAX}")


@dataclass(frozen=True)
class DevicePool:
    """What one device holds: its executors, its expert budget (all of them together;
    None = unlimited) and the activation memory of each."""

    device: str  # 'cpu' or 'cuda:N'
    executors: tuple[int, ...]  # indices into the engine's executors
    budget_bytes: int | None
    activation_bytes: int  # per executor

    @property
    def executor_budget_bytes(self) -> int | None:
        """Each executor's share of the pool."""
        return None if self.budget_bytes is None else self.budget_bytes // len(self.executors)

    @property
    def memory_bytes(self) -> int | None:
        """Weights plus every executor's activations: what the device must have."""
        if self.budget_bytes is None:
            return None
        return self.budget_bytes + len(self.executors) * self.activation_bytes


def group_devices(processors: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Device -> its executors' indices, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(processors):
        groups.setdefault(p, []).append(i)
    return {d: tuple(ix) for d, ix in groups.items()}


def budget_for(device: str, budgets: Sequence[DeviceBudget]) -> DeviceBudget | None:
    """The most specific entry for `device`: its own, else 'cuda' for any GPU."""
    exact = next((b for b in budgets if b.device == device), None)
    if exact is not None or device == "cpu":
        return exact
    return next((b for b in budgets if b.device == "cuda"), None)


def check_fits(pool: DevicePool, devices: DeviceMemory, all_expert_bytes: int,
               reserve_bytes: int = CUDA_RESERVE_BYTES) -> None:
    """ConfigError, saying what fits, when a GPU pool's weights (all experts when
    unlimited) and activations exceed its free memory less the reserve."""
    free, total = devices.memory_bytes(pool.device)
    weights = pool.budget_bytes if pool.budget_bytes is not None else all_expert_bytes
    activations = len(pool.executors) * pool.activation_bytes
    room = free - reserve_bytes
    if weights + activations <= room:
        return
    most = max(0, room - activations)
    what = "an unlimited budget (all experts)" if pool.budget_bytes is None else "its budget"
    raise ConfigError(
        f"{pool.device} cannot hold {what}: {weights / 1e9:.2f} GB of experts + "
        f"{len(pool.executors)} x {pool.activation_bytes / 1e6:.0f} MB activations > "
        f"{free / 1e9:.2f} GB free of {total / 1e9:.2f} GB less {reserve_bytes / 1e9:.2f} GB "
        f"reserved for the CUDA context and workspace; give --gpu-budget-bytes at most "
        f"{most:.4g} (a fraction <= {most / total:.2f}) or fewer executors on it")
