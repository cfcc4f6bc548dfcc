"""One SAE spread over the ranks of a torch.distributed process group (launched by torchrun).

Two layouts, each equal to one process on the same global batches (up to float summation
order; tests/test_distributed.py runs both with two gloo processes):

- "data" (DDP): every rank holds the whole SAE and rows [r·B/W, (r+1)·B/W) of each global
  batch; torch's DistributedDataParallel averages the gradients. What reads the whole batch is
  made global: the FVU denominator (batch mean and variance), Mutual Choice's top k·B over the
  batch, Feature Choice's top m_i tokens per latent, the dead-latent clocks, usage and the
  thresholds. TopK, g-SAE and AuxK select per token and need no communication.
- "latent": every rank holds latents [r·F/W, (r+1)·F/W) (encoder and decoder rows, their Adam
  state and statistics) and the whole batch (each rank reads 1/W of it, then all-gather). A
  per-token selection merges each rank's local top-k candidates into the global top k (as
  OpenAI's sparse_autoencoder does); the decoder's partial outputs are summed across ranks.

Exact Mutual Choice costs one all-gather per step of each rank's top min(k·B, local entries)
candidates as (value, index) pairs: W·k·B·12 bytes (B=4096, k=32, W=8: 12.6 MB), then a sort
of W·k·B keys on every rank (topk.merged_topk, which every rule calls with this layout).

`Layout` holds where this rank's share lies and the collectives; the cross-rank selection lives
in topk.py and the whole-SAE checkpoint gathering in the functions at the end of this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

MODES = ("data", "latent")
SHARDED = ("W_enc", "b_enc", "W_dec", "threshold", "tokens_since_fired", "usage")  # split by latent


class _SumPartials(torch.autograd.Function):
    """All-reduce sum whose backward is the identity: every rank computes the same loss from
    the sum, so the sum's gradient already is each partial's whole gradient."""

    @staticmethod
    def forward(ctx, t: Tensor, group: Any) -> Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


@dataclass(frozen=True)
class Layout:
    """Where this rank's part of the SAE and of each batch lies, and the collectives over ranks."""

    mode: str = "single"  # "single" | "data" | "latent"
    rank: int = 0
    world: int = 1
    group: Any = None  # the process group; None is torch's default group

    @property
    def data(self) -> bool:
        return self.mode == "data" and self.world > 1

    @property
    def latent(self) -> bool:
        return self.mode == "latent" and self.world > 1

    def latent_slice(self, F: int) -> slice:
        if not self.latent:
            return slice(0, F)
        if F % self.world:
            raise ValueError(f"parallel='latent': d_sae={F} must be divisible by the {self.world} ranks")
        n = F // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def global_batch(self, local_rows: int) -> int:
        return local_rows * self.world if self.data else local_rows

    # --- collectives (no-ops in one process) ------------------------------------------------

    def sum(self, t: Tensor) -> Tensor:
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t, group=self.group)
        return t

    def min(self, t: Tensor) -> Tensor:
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return t

    def sum_over_tokens(self, t: Tensor) -> Tensor:
        """A per-latent statistic summed over the global batch (tokens are spread in "data")."""
        return self.sum(t) if self.data else t

    def sum_over_latents(self, t: Tensor) -> Tensor:
        """A per-token statistic summed over all latents (latents are spread in "latent")."""
        return self.sum(t) if self.latent else t

    def sum_partials(self, t: Tensor) -> Tensor:
        """Differentiable sum of the ranks' partial decoder outputs ("latent"); else t."""
        return _SumPartials.apply(t, self.group) if self.latent else t

    def all_gather(self, t: Tensor) -> Tensor:
        """[n, ...] on each rank -> [W·n, ...] in rank order."""
        if self.world == 1:
            return t
        out = t.new_empty((self.world * t.shape[0], *t.shape[1:]))
        dist.all_gather_single(out, t.contiguous(), group=self.group)
        return out

    def gather_latents(self, t: Tensor) -> Tensor:
        """A per-latent tensor, whole ("latent" gathers the shards; else it already is)."""
        return self.all_gather(t) if self.latent else t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)


SINGLE = Layout()


# --- checkpoints: always the whole SAE, so any number of ranks can resume -------------------


def _gather_to_rank0(layout: Layout, t: Tensor) -> Tensor | None:
    parts = [torch.empty_like(t) for _ in range(layout.world)] if layout.rank == 0 else None
    dist.gather(t.contiguous(), parts, dst=0, group=layout.group)
    return torch.cat(parts).cpu() if parts is not None else None


def full_state(
    layout: Layout, sae: torch.nn.Module, opt: torch.optim.Optimizer | None = None
) -> tuple[dict, dict | None]:
    """The whole SAE's (and optimizer's) state dicts, as one process would have them.

    Collective in "latent" (every rank must call it); the result is meant for rank 0.
    """
    sae_state = sae.state_dict()
    opt_state = opt.state_dict() if opt is not None else None
    if not layout.latent:
        return sae_state, opt_state
    names = [n for n, _ in sae.named_parameters()]
    whole = {k: _gather_to_rank0(layout, v) if k in SHARDED else v.cpu() for k, v in sae_state.items()}
    if opt_state is None:
        return whole, None
    opt_whole = {"param_groups": opt_state["param_groups"], "state": {}}
    for i, st in sorted(opt_state["state"].items()):
        opt_whole["state"][i] = {
            k: _gather_to_rank0(layout, v) if names[i] in SHARDED and v.ndim else v for k, v in st.items()
        }
    return whole, opt_whole


def load_full_state(
    layout: Layout, sae: torch.nn.Module, opt: torch.optim.Optimizer, sae_state: dict, opt_state: dict
) -> None:
    """Load whole-SAE state dicts (from any number of ranks) into this rank's part."""
    if layout.latent:
        sl = layout.latent_slice(sae.cfg.d_sae)
        names = [n for n, _ in sae.named_parameters()]
        sae_state = {k: v[sl] if k in SHARDED else v for k, v in sae_state.items()}
        opt_state = {
            "param_groups": opt_state["param_groups"],
            "state": {
                i: {k: v[sl] if names[i] in SHARDED and v.ndim else v for k, v in st.items()}
                for i, st in opt_state["state"].items()
            },
        }
    sae.load_state_dict(sae_state)
    opt.load_state_dict(opt_state)


def current_layout(mode: str) -> Layout:
    """The layout for `mode` in the default process group, or SINGLE outside torch.distributed."""
    if mode not in MODES:
        raise ValueError(f"parallel={mode!r}: expected one of {MODES}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    return Layout(mode, dist.get_rank(), dist.get_world_size())


def init_from_env() -> tuple[int, int, int]:
    """Join torchrun's process group (NCCL with CUDA, else gloo); (rank, local_rank, world).

    Without torchrun's environment (WORLD_SIZE unset or 1) nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), local_rank, dist.get_world_size()
