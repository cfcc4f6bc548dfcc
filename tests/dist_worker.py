"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: trains every case on a
shared activation cache with the gloo backend and leaves each run directory for the test to
compare against one process.

    torchrun --standalone --nproc_per_node 2 tests/dist_worker.py CACHE_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from workbench.activations import ActivationStore, CachedSource
from workbench.runs import RunDir
from workbench.sae import SAEConfig, SAETrainConfig, train_sae

D, F, K, BATCH, STEPS = 16, 128, 2, 128, 12
CASES = [  # (layout, selection, aux, feature-choice capacities)
    ("data", "topk", "auxk", "uniform"),
    ("data", "gradient", "auxk", "uniform"),
    ("data", "mutual_choice", "auxk", "uniform"),
    ("data", "feature_choice", "aux_zipf", "zipf"),
    ("latent", "topk", "auxk", "uniform"),
    ("latent", "gradient", "aux_zipf", "uniform"),
    ("latent", "mutual_choice", "auxk", "uniform"),
    ("latent", "feature_choice", "auxk", "zipf"),
]
RESUMED = [("data", "mutual_choice", "aux_zipf", "uniform"), ("latent", "topk", "auxk", "uniform")]
STOP_AT = 5  # the 2-rank runs in RESUMED stop here; the test finishes them on one process
GROWN = ("latent", "mutual_choice", "auxk", "uniform")  # one process stops at STOP_AT, two ranks finish


def name(case: tuple) -> str:
    return "-".join(case[:3])


def configs(case: tuple) -> tuple[SAEConfig, SAETrainConfig]:
    parallel, selection, aux, caps = case
    # dead_tokens of one batch, so AuxK / aux_zipf have dead latents to work on within 12 steps
    sae = SAEConfig(
        d_in=D, d_sae=F, k=K, selection=selection, aux=aux, fc_capacity=caps, k_aux=8, dead_tokens=BATCH, aux_coef=0.5
    )
    # float64: Adam's first steps divide tiny gradients by their own size, so float32 summation
    # order alone (one rank's sum vs two) moves some weights by ~lr/20 and hides real bugs
    train = SAETrainConfig(
        total_tokens=STEPS * BATCH,
        batch_size=BATCH,
        lr=3e-3,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=STOP_AT,
        parallel=parallel,
        dtype="float64",
    )
    return sae, train


def store(cache: Path, train: SAETrainConfig, rank: int = 0, world: int = 1) -> ActivationStore:
    return ActivationStore(CachedSource(cache), train.batch_size, seed=train.seed, rank=rank, world_size=world)


def tie_scores() -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with ties everywhere (values 0..3), per-token [12, 40] and per-latent [40, 12]."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randint(0, 4, (12, 40), generator=gen).float(), torch.randint(0, 4, (40, 12), generator=gen).float())


def merge_with_ties(out: Path, rank: int, world: int) -> None:
    """Each rank's part of a merged top-k on tied scores, gathered whole for the test to check."""
    from workbench.sae.parallel import Layout
    from workbench.sae.topk import merged_topk, token_topk

    tokens, latents = tie_scores()
    n = tokens.shape[1] // world
    cols = slice(rank * n, (rank + 1) * n)
    layout = Layout("latent", rank, world)
    per_token = token_topk(layout, tokens[:, cols], 7)  # latents spread over ranks
    flat = merged_topk(
        layout,
        tokens[:, cols].reshape(1, -1),
        30,  # mutual choice, latent layout
        lambda c: c // n * tokens.shape[1] + rank * n + c % n,
    ).view(12, n)
    m = latents.shape[1] // world  # feature choice, data layout: a latent's tokens spread over ranks
    caps = torch.arange(40) % 9
    per_latent = merged_topk(
        Layout("data", rank, world), latents[:, rank * m : (rank + 1) * m], caps, lambda c: c + rank * m
    )
    parts = {"per_token": per_token.T, "flat": flat.T, "per_latent": per_latent.T}  # gather along columns
    whole = {k: layout.all_gather(v.to(torch.uint8).contiguous()).T.bool() for k, v in parts.items()}
    if rank == 0:
        torch.save(whole, out / "ties.pt")


def main(cache: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    merge_with_ties(out, rank, world)
    for case in CASES:
        sae_cfg, train = configs(case)
        train_sae(sae_cfg, train, store(cache, train, rank, world), RunDir(out / name(case)), progress=False)
    for case in RESUMED:
        sae_cfg, train = configs(case)
        train_sae(
            sae_cfg,
            train,
            store(cache, train, rank, world),
            RunDir(out / ("resumed-" + name(case))),
            stop_after=STOP_AT,
            progress=False,
        )
    sae_cfg, train = configs(GROWN)
    train_sae(sae_cfg, train, store(cache, train, rank, world), RunDir(out / ("grown-" + name(GROWN))), progress=False)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
