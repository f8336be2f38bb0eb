"""The processes one command runs as: one by default, several under ``accelerate launch`` or
``torchrun``.

    >>> w = Workers.current(device=None)   # rank, world size, this process's device
    >>> [b for b in range(10) if w.mine(b)]
    >>> w.wait()                           # every process reaches this point before any goes on

Several GPUs: ``accelerate launch --multi_gpu --num_processes 4 -m safeclip index build ...``
(each process embeds on its own GPU). Several CPU processes: ``torchrun --nproc_per_node 2 -m
safeclip index build ... --device cpu`` (accelerate's own launcher starts one process on CPU).
Work is split round-robin by batch; the processes meet through accelerate's barrier (gloo on
CPU, NCCL on GPU). Without a launcher nothing distributed is imported or started.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

BARRIER_HOURS = 12  # a worker may wait this long for the slowest one (resumed runs are uneven)


@dataclass
class Workers:
    rank: int = 0
    world: int = 1
    device: str | None = None
    state: object | None = None  # accelerate's PartialState when launched, else None

    @classmethod
    def current(cls, device: str | None = None) -> "Workers":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, device)
        import torch
        from accelerate import PartialState

        cpu = device == "cpu" or not torch.cuda.is_available()
        state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=BARRIER_HOURS))
        # "cuda" (or no device) means this process's own GPU
        own = device if device and device not in ("cuda", "auto") else str(state.device)
        return cls(state.process_index, state.num_processes, "cpu" if cpu else own, state)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, batch: int) -> bool:
        return batch % self.world == self.rank

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def total(self, count: int) -> int:
        """The sum of ``count`` over all workers (every worker gets it)."""
        if self.state is None:
            return count
        from accelerate.utils import gather_object

        return int(sum(gather_object([int(count)])))

    def describe(self) -> str:
        return f"worker {self.rank} of {self.world}"
