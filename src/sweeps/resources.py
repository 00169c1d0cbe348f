"""What each slot of a local sweep may use: its own GPUs, or its share of the CPU threads.

A job sees only its slot's GPUs (`CUDA_VISIBLE_DEVICES`), so `trainer.devices=N` inside it counts
from its own first device and DDP works as in a single run. On a CPU the cores are shared out:
`OMP_NUM_THREADS` (which torch reads for its thread pool, and Lightning's DDP launcher respects)
keeps two jobs from fighting over the same cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from src.utils.errors import UserError

# Variables that size a process's CPU thread pools (torch's OpenMP and MKL).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class SlotResources:
    """The devices or threads of one slot, and the environment that gives them to its jobs."""

    slot: int
    gpus: list[str]
    threads: int | None

    def env(self) -> dict[str, str]:
        """Environment variables a job in this slot starts with."""
        if self.threads is None:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        return {name: str(self.threads) for name in THREAD_VARIABLES}

    def describe(self) -> dict[str, object]:
        """What the job's `sweep_job.json` records."""
        if self.threads is None:
            return {"slot": self.slot, "gpus": self.gpus, "CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        return {"slot": self.slot, "cpu_threads": self.threads}


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: `CUDA_VISIBLE_DEVICES` when set, else the ones torch counts.

    torch is imported only where an NVIDIA driver is present (a CPU machine pays nothing).
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip() not in ("", "-1")]
    if not Path("/proc/driver/nvidia/gpus").is_dir():
        return []
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def wants_cpu(config: DictConfig) -> bool:
    """The jobs train on the CPU whatever the machine has (`trainer.accelerator=cpu`)."""
    return str(config.trainer.get("accelerator", "auto")) == "cpu"


def plan_slots(config: DictConfig, gpus: list[str] | None = None, cores: int | None = None) -> list[SlotResources]:
    """One `SlotResources` per slot: `sweep.devices_per_job` GPUs each, or a share of the cores."""
    sweep = config.sweep
    slots = int(sweep.slots)
    if slots < 1:
        raise UserError(f"sweep.slots={slots}: expected 1 or more jobs at once")
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus or wants_cpu(config):
        cores = cpu_count() if cores is None else cores
        threads = int(sweep.threads_per_job or max(1, cores // slots))
        return [SlotResources(slot, [], threads) for slot in range(slots)]
    per_job = int(sweep.devices_per_job)
    if per_job < 1 or slots * per_job > len(gpus):
        raise UserError(
            f"sweep.slots={slots} x sweep.devices_per_job={per_job} needs {slots * per_job} GPUs; "
            f"{len(gpus)} are visible ({','.join(gpus)}). Lower sweep.slots or sweep.devices_per_job"
        )
    devices = config.trainer.get("devices")
    if isinstance(devices, int) and devices > per_job:
        raise UserError(
            f"trainer.devices={devices} but each job sees sweep.devices_per_job={per_job} GPUs: "
            f"pass sweep.devices_per_job={devices}"
        )
    return [SlotResources(slot, gpus[slot * per_job : (slot + 1) * per_job], None) for slot in range(slots)]
