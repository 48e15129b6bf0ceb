"""Tuning on several processes: torchrun's environment, DDP or FSDP2 wrapping, and the few collectives the loop needs.

``otaro tune`` runs unchanged under ``torchrun --nproc-per-node N --no-python otaro tune ...``
(one node or many). torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
:meth:`DistContext.from_env` joins that process group (gloo on CPU, NCCL on CUDA, each rank on
``cuda:LOCAL_RANK``). Without those variables it is one process, no group, and the loop runs as before.

What the loop relies on (docs/TUNING.md, "Several GPUs"):

* every rank holds the same samples (rank 0 builds or loads them, then broadcasts);
* the global batch of step ``s`` is the same list on every rank; rank ``r`` takes its contiguous share;
* each rank's loss is its *sum* over its scored tokens times ``world / N_global``, so the gradient
  averaging of DDP / FSDP yields the token-weighted mean of the whole batch, as one process computes it;
* the step's loss value is summed from every rank's share in rank order, so all ranks see the same
  float and BPS picks the same bit-width (checked each step against rank 0's pick).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from torch import nn

from otaro_export.errors import OtaroError

#: torchrun's variables that say this process is one rank of a group
_ENV = ("RANK", "WORLD_SIZE")
#: how long a rank waits for the others at a collective (rank 0 alone builds the data and writes checkpoints)
DEFAULT_TIMEOUT = timedelta(minutes=60)


class DistributedError(OtaroError, RuntimeError):
    """The process group or the ranks' shares of the work are not usable."""


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in _ENV)


def rank_device(device: str, local_rank: int, world_size: int) -> torch.device:
    """The device of this rank: ``cuda`` means ``cuda:LOCAL_RANK`` when several ranks share a node."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DistributedError(f"unknown device {device!r} (use cpu, cuda, cuda:1, ...)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(
                f"device {device!r} asked for, but this torch build/machine has no CUDA GPU; use --device cpu"
            )
        if world_size > 1 or launched_by_torchrun():
            if dev.index is not None:
                raise DistributedError(
                    f"--device {device} under torchrun: pass --device cuda, each rank then uses cuda:LOCAL_RANK"
                )
            dev = torch.device("cuda", local_rank)
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(
                    f"rank with LOCAL_RANK {local_rank} has no GPU (this node has {torch.cuda.device_count()}): "
                    "use --nproc-per-node <= the GPU count"
                )
            torch.cuda.set_device(dev)
    return dev


@dataclass
class DistContext:
    """This process's place in the run. The default is a single process with no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context initialised the group, so it destroys it
    parallel: str | None = None  # "ddp" / "fsdp" once a model is wrapped

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @staticmethod
    def from_env(device: str = "cpu", timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
        """Join torchrun's group if this process was started by it (or one is initialised already)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            local = int(os.environ.get("LOCAL_RANK", rank))
            return DistContext(rank, world, local, rank_device(device, local, world), owns_group=False)
        if not launched_by_torchrun():
            return DistContext(device=rank_device(device, 0, 1))
        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed; run without torchrun")
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError as exc:
            raise DistributedError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers ({exc})") from exc
        dev = rank_device(device, local, world)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            if dev.type == "cuda":
                dist.init_process_group(backend, timeout=timeout, device_id=dev)
            else:
                dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the torchrun process group ({backend}): {exc}") from exc
        return DistContext(rank, world, local, dev, owns_group=True)

    def close(self) -> None:
        if self.owns_group and self.distributed:
            torch.distributed.destroy_process_group()
            self.owns_group = False

    # -- collectives (no-ops for one process) ------------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, value: int, what: str) -> int:
        """Rank 0's integer ``value``; an error on any rank whose own value differs (a desynchronised run)."""
        if not self.distributed:
            return value
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        chosen = int(t.item())
        if chosen != value:
            raise DistributedError(f"rank {self.rank} has {what} {value} but rank 0 has {chosen}: the ranks diverged")
        return chosen

    def sum_in_rank_order(self, values: list[float]) -> list[float]:
        """Element-wise sums of every rank's ``values``, added in rank order in float64: the same float on every rank."""
        if not self.distributed:
            return [float(v) for v in values]
        local = torch.tensor(values, dtype=torch.float64, device=self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total.tolist()

    def share(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        n = len(indices)
        return list(indices[self.rank * n // self.world_size : (self.rank + 1) * n // self.world_size])

    # -- models ------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, parallel: str) -> nn.Module:
        """``model`` under DDP (replicated, gradients all-reduced) or FSDP2 (every decoder block sharded).

        Without a process group it is returned as is. FSDP2 shards in place and replaces the
        Parameters by DTensor ones: fetch parameters (optimizer, LAA) from the model after this call.
        """
        if not self.distributed:
            return model
        self.parallel = parallel
        if parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Gradients as views into DDP's buckets: no second copy of every gradient.
            return DistributedDataParallel(
                model, device_ids=ids, forward_sync_buffers=False, gradient_as_bucket_view=True
            )
        if parallel == "fsdp":
            shard_model(model, self.device)
            return model
        raise DistributedError(f"--parallel must be ddp or fsdp, got {parallel!r}")

    def gather_full(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU copies of ``named`` on rank 0 ({} elsewhere). Collective under FSDP: every rank calls it."""
        from torch.distributed.tensor import DTensor

        out = {}
        for name, tensor in named.items():
            t = tensor.detach()
            if isinstance(t, DTensor):
                t = t.full_tensor()  # one all-gather per tensor: peak memory is one full tensor
            if self.is_main:
                out[name] = t.to("cpu", copy=True).contiguous()
        return out


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks (HF's ``_no_split_modules`` classes): FSDP2's unit of sharding."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise DistributedError(
            f"{type(model).__name__} names no decoder-block class (_no_split_modules): "
            "use --parallel ddp and no --activation-checkpointing"
        )
    return blocks


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing per decoder block: backward recomputes the block instead of keeping its tensors.

    Drops what dominates a large model's step memory besides the sharded state: every block's
    activations and its fake-quantized weights (saved full size for the STE backward). Costs about
    one more forward pass. Parameter names do not change (composable API, no wrapper module), and
    the recomputation is exact: the model runs in eval mode and draws no random numbers.
    """
    from torch.distributed._composable import checkpoint

    for block in block_modules(model):
        checkpoint(block)


def shard_model(model: nn.Module, device: torch.device) -> None:
    """FSDP2 (``fully_shard``) over all ranks: each decoder block is one unit, the root holds the rest.

    Untied input and output embeddings are units of their own (an 8B model's are 0.5 B parameters
    each: gathered only while used). A tied embedding / lm_head stays in the root unit, so it
    remains one tensor.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in block_modules(model):
        fully_shard(block, mesh=mesh)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed is not None and head is not None and embed.weight is not head.weight:
        fully_shard(embed, mesh=mesh)
        fully_shard(head, mesh=mesh)
    fully_shard(model, mesh=mesh)


def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into ``param``, which may be an FSDP shard (each rank keeps its own slice)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            local = distribute_tensor(
                full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
            param.to_local().copy_(local.to_local())
        else:
            param.copy_(full.to(param.device, param.dtype))
