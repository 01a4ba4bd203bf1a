"""Where this node sits in a multi-node job, read from the variables torchrun, Kubernetes and JobSet set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import contract
from .errors import DistributedEnvInvalid


@dataclass(frozen=True, kw_only=True)
class Topology:
    """This node's place in the job."""

    num_machines: int = 1
    """Nodes in the job."""
    machine_rank: int = 0
    """This node's rank, 0 to num_machines - 1."""
    main_process_ip: str | None = None
    """Node 0's address; None on one node."""
    main_process_port: int | None = None
    """Node 0's port; None on one node."""

    @property
    def node_suffix(self) -> str:
        """Nodes of one job often share output_dir: each node's own files there carry its rank."""
        return f".node{self.machine_rank}" if self.num_machines > 1 else ""


def read_topology(environ: Mapping[str, str] = os.environ) -> Topology:
    """NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT as torchrun names them; an indexed Job's completion index is
    the node rank when NODE_RANK is unset."""
    num_machines = contract.NNODES.read(environ)
    if num_machines == 1:
        return Topology()
    rank = contract.NODE_RANK.read(environ)
    if rank is None:
        rank = contract.JOB_COMPLETION_INDEX.read(environ)
    if rank is None or rank >= num_machines:
        raise DistributedEnvInvalid(
            f"NNODES={num_machines} needs NODE_RANK (or JOB_COMPLETION_INDEX) in 0..{num_machines - 1}"
        )
    master = contract.MASTER_ADDR.read(environ)
    if not master:
        raise DistributedEnvInvalid(f"NNODES={num_machines} needs MASTER_ADDR, the address of node 0")
    return Topology(
        num_machines=num_machines,
        machine_rank=rank,
        main_process_ip=master,
        main_process_port=contract.MASTER_PORT.read(environ),
    )
