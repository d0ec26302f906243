"""Where this process sits in a ``torchrun`` launch, read from the environment
torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); one process otherwise.

Low in the import order, so the pipeline (which alone writes the run's
bookkeeping) and the progress output (which only rank 0 prints) can ask without
importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fmforge.errors import UserError


class LaunchError(UserError, ValueError):
    """The launch environment (torchrun's variables) cannot be read."""


@dataclass(frozen=True)
class Launch:
    rank: int
    local_rank: int
    world_size: int
    launched: bool = False  # torchrun set the environment
    local_world_size: int = 1  # processes on this node

    @property
    def nodes(self) -> int:
        """Nodes in the launch (torchrun starts the same number on each)."""
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def under_torchrun(self) -> bool:
        """Started by torchrun (which may start a single process)."""
        return self.launched

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, metrics, progress and the run's records."""
        return self.rank == 0


def current_launch() -> Launch:
    def number(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise LaunchError(f"environment variable {name}={value!r} is not a whole number; "
                              "launch with torchrun, or unset it") from None

    return Launch(rank=number("RANK", 0), local_rank=number("LOCAL_RANK", 0),
                  world_size=number("WORLD_SIZE", 1),
                  local_world_size=number("LOCAL_WORLD_SIZE", number("WORLD_SIZE", 1)),
                  launched="TORCHELASTIC_RUN_ID" in os.environ or "MASTER_ADDR" in os.environ)
