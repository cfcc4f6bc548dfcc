"""Time full TopK-SAE training steps on one GPU: ours (Triton and pure torch), SAELens, sparsify.

A step = forward + backward + Adam, AuxK on with 10% of latents dead, B = 4096 tokens. Prints
median ms/step, tokens/s, peak memory, the ratio to each peer, and the ratio to the floor (the
bf16 encoder GEMM alone + the optimizer's memory traffic at measured bandwidth). Then trains
300 steps through `train_sae` on the same synthetic superposition data with the Triton path and
the pure-torch path, and prints both held-out FVUs and their relative gap (target: within 2%).

    python benchmarks/topk_sae_step.py            # both shapes (needs CUDA)
    python benchmarks/topk_sae_step.py --quick    # small shape, fewer repeats
    python benchmarks/topk_sae_step.py --parity-only
    python benchmarks/topk_sae_step.py --parts    # also time the step's parts and each kernel launch shape
Peers are optional: `pip install -e .[bench]` brings eai-sparsify; SAELens is a dependency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import date

import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.kernels.autograd import SparseEncodeDecode
from workbench.kernels.topk_encoder import GPU_CANDIDATES, tile_keys, topk_encode
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.losses import fvu
from workbench.sae.trainer import TritonPath, make_optimizer, optimizer_step, sae_losses
from workbench.tasks import SuperpositionConfig, superposition_data

SHAPES = {"gpt2-small": (768, 24_576, 32), "wide": (2048, 65_536, 64)}
# The fused AuxK candidates sort tiles as wide as k_aux = d/2 rounded up to a power of two: past 512
# (the wide shape's 1024) that is a register-spilling, slow-to-compile variant not worth a lease's time.
FUSED_AUX_MAX = 512
B = 4096


def timed(step, n: int, warmup: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def ours(d, F, k, x, triton: TritonPath | None):
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=F, k=k, dead_tokens=1)).to(x.device).train()
    sae.tokens_since_fired[: F // 10] = 10  # 10% dead
    cfg = SAETrainConfig(batch_size=B, device=str(x.device), use_triton=triton is not None)
    opt = make_optimizer(sae, cfg)

    def step():
        res = sae_losses(sae, x, None, triton)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        optimizer_step(sae, opt, cfg, 100)

    return step


def saelens(d, F, k, x, autocast: bool):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=F, k=k, device=str(x.device)))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(F, dtype=torch.bool, device=x.device)
    dead[: F // 10] = True

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=100, is_logging_step=False
                )
            )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def sparsify(d, F, k, x):
    from sparsify import SaeConfig, SparseCoder

    sae = SparseCoder(d, SaeConfig(num_latents=F, k=k), device=x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(F, dtype=torch.bool, device=x.device)
    dead[: F // 10] = True

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = sae(x, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        (out.fvu + out.auxk_loss / 32).backward()
        opt.step()

    return step


def floor_ms(d, F, x) -> float:
    w = torch.randn(F, d, device="cuda", dtype=torch.bfloat16)
    xb = x.bfloat16()
    gemm, _ = timed(lambda: xb @ w.T, 30)
    buf = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    out = torch.empty_like(buf)
    copy_ms, _ = timed(lambda: out.copy_(buf), 30)
    bandwidth = 2 * buf.numel() / (copy_ms / 1e3)  # bytes read + written per second
    return gemm + 28 * (2 * F * d) / bandwidth * 1e3  # Adam fp32: 28 bytes per parameter


def parts(d: int, F: int, k: int, x: torch.Tensor, n: int) -> None:
    """ms of each piece of our Triton step alone, and of the encoder kernel at each launch shape."""
    dev = x.device
    W_enc, W_dec = torch.randn(F, d, device=dev) / d**0.5, torch.randn(F, d, device=dev) / d**0.5
    b_enc, b_dec = torch.zeros(F, device=dev), torch.zeros(d, device=dev)
    dead = torch.zeros(F, dtype=torch.bool, device=dev)
    dead[: F // 10] = True
    rows_dead = dead.nonzero().squeeze(1)
    xb, wb = x.bfloat16(), W_enc.bfloat16()
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, k, precision="bf16")
    params = [p.clone().requires_grad_(True) for p in (W_enc, b_enc, W_dec, b_dec)]
    weights = [W_enc.clone().requires_grad_(True), W_dec.clone().requires_grad_(True)]
    adam = torch.optim.Adam(weights, fused=dev.type == "cuda")
    for p in adam.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)

    def encode_decode():
        vals, out = SparseEncodeDecode.apply(x, *params[:3], params[3], idx, True)
        (vals.sum() + out.sum()).backward()

    def dense_aux():
        pre = (x - b_dec) @ W_enc[rows_dead].T + b_enc[rows_dead]
        pre.topk(d // 2, dim=1)

    pieces = {
        "bf16 GEMM alone": lambda: xb @ wb.T,
        "bf16 GEMM + torch.topk (unfused)": lambda: torch.topk(xb @ wb.T, k, dim=1),
        "topk_encode bf16 (tuned launch)": lambda: topk_encode(x, W_enc, b_enc, b_dec, k, precision="bf16"),
        "topk_encode bf16 + fused AuxK candidates": lambda: topk_encode(
            x, W_enc, b_enc, b_dec, k, dead=dead, k_aux=d // 2, precision="bf16"
        ),
        "dense AuxK selection (GEMM on dead rows + topk)": dense_aux,
        "sparse encode/decode fwd + bwd": encode_decode,
        "fused Adam over W_enc, W_dec": adam.step,
    }
    if d // 2 > FUSED_AUX_MAX:
        del pieces["topk_encode bf16 + fused AuxK candidates"]
    for bl in GPU_CANDIDATES:
        bl = bl.holding(tile_keys(k))
        label = f"topk_encode bf16, blocks {bl.b}×{bl.f}×{bl.d}, {bl.warps} warps, {bl.stages} stages"
        pieces[label] = lambda bl=bl: topk_encode(x, W_enc, b_enc, b_dec, k, precision="bf16", blocks=bl)
    print(f"\nparts at {d} → {F}, k={k}, B={len(x)} (ms, median of {n})")
    print("| part | ms |")
    print("|---|---|")
    for label, fn in pieces.items():
        try:
            print(f"| {label} | {timed(fn, n)[0]:.3f} |")
        except Exception as e:  # a launch shape this device cannot run
            print(f"| {label} | failed: {type(e).__name__}: {str(e)[:80]} |")


def fvu_parity(d: int, F: int, k: int, steps: int = 300, batch: int = B, device: str = "cuda") -> None:
    """Held-out FVU after `steps` training steps, Triton path vs pure torch, same data and seed."""
    syn = SuperpositionConfig(d=d, n_features=4 * d, mean_active=k, seed=0)
    n = 16 * batch
    train, held_out = superposition_data(syn, n + 8192).acts.split([n, 8192])
    result = {}
    for triton in (True, False):
        store = ActivationStore(TensorSource(train, chunk_size=n), batch)  # 16 batches, cycled
        cfg = SAETrainConfig(
            total_tokens=steps * batch, batch_size=batch, device=device, use_triton=triton, b_dec_init="mean"
        )
        sae = train_sae(SAEConfig(d_in=d, d_sae=F, k=k), cfg, store, progress=False)
        with torch.no_grad():
            x = held_out.to(device)
            result[triton] = fvu(x, sae(x).x_hat).item()
    gap = abs(result[True] - result[False]) / result[False]
    print(
        f"FVU after {steps} steps ({d} → {F}, k={k}): triton {result[True]:.4f}, torch {result[False]:.4f}, "
        f"gap {gap:.2%} ({'within' if gap <= 0.02 else 'OUTSIDE'} 2%)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parity-only", action="store_true")
    ap.add_argument("--parts", action="store_true", help="also time the step's parts and each launch shape")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("topk_sae_step.py needs a CUDA GPU (none here): see benchmarks/RESULTS.md")
    n = 10 if args.quick else 30
    print(f"{date.today()} · {torch.cuda.get_device_name()} · torch {torch.__version__}")
    for name, (d, F, k) in SHAPES.items():
        if args.quick and name != "gpt2-small" or args.parity_only:
            continue
        x = torch.randn(B, d, device="cuda")
        rows = {
            "workbench triton": lambda: ours(d, F, k, x, TritonPath("bf16", "dense")),
            "workbench triton, fused AuxK": lambda: ours(d, F, k, x, TritonPath("bf16", "fused")),
            "workbench torch": lambda: ours(d, F, k, x, None),
            "SAELens fp32": lambda: saelens(d, F, k, x, False),
            "SAELens bf16 autocast": lambda: saelens(d, F, k, x, True),
            "sparsify": lambda: sparsify(d, F, k, x),
        }
        if d // 2 > FUSED_AUX_MAX:
            del rows["workbench triton, fused AuxK"]
        results = {}
        for label, make in rows.items():
            try:
                results[label] = timed(make(), n)
            except Exception as e:  # a peer not installed, or out of memory
                print(f"  {label}: skipped ({type(e).__name__}: {str(e)[:120]})")
            torch.cuda.empty_cache()
        fl = floor_ms(d, F, x)
        ref = results.get("workbench triton", (float("nan"), 0))[0]
        print(f"\n{name}: {d} → {F}, k={k}, B={B}; floor {fl:.3f} ms")
        print("| path | ms/step | tokens/s | peak GiB | triton speed-up | × floor |")
        print("|---|---|---|---|---|---|")
        for label, (ms, mem) in results.items():
            print(f"| {label} | {ms:.3f} | {B / ms * 1e3:,.0f} | {mem:.2f} | {ms / ref:.2f}× | {ms / fl:.2f} |")
        if args.parts:
            parts(d, F, k, x, n)
    fvu_parity(*SHAPES["gpt2-small"])


if __name__ == "__main__":
    main()
