"""Where this node sits in a multi-node job, read from the variables torchrun, Kubernetes and JobSet set."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DistributedEnvInvalid

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Topology:
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None

    @property
    def node_suffix(self) -> str:
        """Nodes of one job often share output_dir: each node's own files there carry its rank."""
        return f".node{self.machine_rank}" if self.num_machines > 1 else ""


def read_topology(environ: os._Environ | dict = os.environ) -> Topology:
    """NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT as torchrun names them; an indexed Job's completion index is
    the node rank when NODE_RANK is unset."""
    num_machines = _integer(environ, "NNODES", 1)
    if num_machines == 1:
        return Topology()
    rank = _integer(environ, "NODE_RANK", _integer(environ, "JOB_COMPLETION_INDEX", -1))
    if not 0 <= rank < num_machines:
        raise DistributedEnvInvalid(
            f"NNODES={num_machines} needs NODE_RANK (or JOB_COMPLETION_INDEX) in 0..{num_machines - 1}"
        )
    master = environ.get("MASTER_ADDR")
    if not master:
        raise DistributedEnvInvalid(f"NNODES={num_machines} needs MASTER_ADDR, the address of node 0")
    return Topology(num_machines, rank, master, _integer(environ, "MASTER_PORT", DEFAULT_MASTER_PORT))


def _integer(environ, name: str, default: int) -> int:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedEnvInvalid(f"{name} must be an integer, got {raw!r}") from None
