"""The width ladder: each latent's parent one rung down, by decoder cosine and by co-firing.

Two kinds of ladder, one result:
- "prefixes": one Matryoshka SAE with prefix widths u_0 < u_1 < ... < u_L = F. Rung i (i ≥ 1)
  matches the latents new at that width, [u_{i−1}, u_i), to parents in the prefix [0, u_{i−1}).
  Rung 0 (the latents [0, u_0)) has no parent: the roots of the tree.
- "separate": SAEs of widths u_0 < ... < u_L trained apart (512 / 2048 / 8192). Rung i matches all
  u_i latents of SAE i to parents among the u_{i−1} latents of SAE i − 1.

Per child c and candidate parent p, on a batch of N activation rows (fires = positive latent):

    cos(c, p)     = ⟨W_dec[c], W_dec[p]⟩ / (‖W_dec[c]‖ ‖W_dec[p]‖)
    cofire(c, p)  = n(c ∧ p) / sqrt(n(c) · n(p))                 (Ochiai: the cosine of the firing
                                                                indicators; 0 when either never fires)
    given(c, p)   = n(c ∧ p) / n(c)                              (P(parent fires | child fires))

Each child's parent is the argmax of cos and, separately, of cofire (Ochiai, not `given`: a dense
latent fires with every child, and `given` would make it everyone's parent). The counts n(c ∧ p)
are one [N, Fc]ᵀ [N, Fp] product of 0/1 matrices in float32: exact integers below 2^24 rows.
Cost O(N · Fc · Fp) per rung (8192 rows, 2048 x 512: 8.6 GFLOP, a second or two on one core).

Saved as ladder.safetensors (the per-rung tensors) + ladder.json (kind, widths, rows, sources).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..runs import atomic_save_tensors, atomic_write_json, load_tensors
from .model import SparseAutoencoder

__all__ = [
    "LADDER_FILE",
    "LADDER_META_FILE",
    "Rung",
    "Ladder",
    "match_rung",
    "cofire_stats",
    "prefix_ladder",
    "separate_ladder",
    "default_widths",
]

LADDER_FILE = "ladder.safetensors"
LADDER_META_FILE = "ladder.json"
VERSION = 1
KINDS = ("prefixes", "separate")
FIELDS = ("child", "cos_parent", "cos", "cofire_parent", "cofire", "given", "child_density")


class Rung(NamedTuple):
    """One rung: children of width `width` matched to parents of width `parent_width`."""

    width: int  # u_i: the child dictionary's width (prefix or SAE)
    parent_width: int  # u_{i-1}: the parents are latents [0, parent_width) of the rung below
    child: Int[Tensor, " n"]  # the children's latent ids (prefixes: [u_{i-1}, u_i); separate: all u_i)
    cos_parent: Int[Tensor, " n"]  # the parent by decoder cosine
    cos: Float[Tensor, " n"]  # ... and that cosine
    cofire_parent: Int[Tensor, " n"]  # the parent by co-firing (Ochiai); -1 when the child never fired
    cofire: Float[Tensor, " n"]  # ... and its Ochiai coefficient
    given: Float[Tensor, " n"]  # P(cofire_parent fires | child fires) (0 when the child never fired)
    child_density: Float[Tensor, " n"]  # the child's firing rate on the batch


@dataclass(frozen=True)
class Ladder:
    """A width ladder (module docstring); `rungs[i]` matches rung i + 1 to rung i."""

    kind: str  # "prefixes" (one Matryoshka SAE) or "separate" (one SAE per width)
    widths: tuple[int, ...]  # u_0 < ... < u_L
    n_rows: int  # activation rows the co-firing was counted on
    rungs: tuple[Rung, ...]
    sources: tuple[str, ...] = ()  # the runs (or a label) each width came from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {KINDS}")
        if len(self.rungs) != len(self.widths) - 1:
            raise ValueError(f"{len(self.widths)} widths need {len(self.widths) - 1} rungs, got {len(self.rungs)}")

    def parent_of(self, width: int, latent: int, by: str = "cos") -> tuple[int, float] | None:
        """(parent, score) of `latent` of the dictionary of width `width` one rung down; None on rung 0
        (or, prefixes, for a latent below the rung's new band)."""
        i = self._rung(width)
        if i is None:
            return None
        r = self.rungs[i]
        hit = (r.child == latent).nonzero()
        if len(hit) == 0:
            return None
        j = int(hit[0, 0])
        parent, score = (r.cos_parent, r.cos) if by == "cos" else (r.cofire_parent, r.cofire)
        return int(parent[j]), float(score[j])

    def _rung(self, width: int) -> int | None:
        if width not in self.widths:
            raise ValueError(f"width={width}: expected one of the ladder's widths {self.widths}")
        i = self.widths.index(width)
        return None if i == 0 else i - 1

    def save(self, folder: str | Path) -> None:
        """ladder.safetensors then ladder.json (each written atomically); `load` reads the pair."""
        folder = Path(folder)
        tensors = {f"rung{i}.{f}": getattr(r, f) for i, r in enumerate(self.rungs) for f in FIELDS}
        atomic_save_tensors(folder / LADDER_FILE, tensors)
        meta = dict(version=VERSION, kind=self.kind, widths=list(self.widths), n_rows=self.n_rows)
        atomic_write_json(folder / LADDER_META_FILE, {**meta, "sources": list(self.sources)})

    @classmethod
    def load(cls, folder: str | Path) -> Ladder:
        folder = Path(folder)
        meta_path = folder / LADDER_META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from e
        if meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: version {meta.get('version')!r}, this workbench reads {VERSION}")
        state = load_tensors(folder / LADDER_FILE)
        widths = tuple(int(w) for w in meta["widths"])
        try:
            rungs = tuple(
                Rung(widths[i + 1], widths[i], *(state[f"rung{i}.{f}"] for f in FIELDS)) for i in range(len(widths) - 1)
            )
        except KeyError as e:
            raise ValueError(f"{folder / LADDER_FILE}: missing tensor {e.args[0]} for the widths {widths}") from None
        return cls(meta["kind"], widths, int(meta["n_rows"]), rungs, tuple(meta.get("sources", ())))


def _unit(W: Float[Tensor, "F d"]) -> Float[Tensor, "F d"]:
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cofire_stats(
    child_fires: Bool[Tensor, "N Fc"], parent_fires: Bool[Tensor, "N Fp"]
) -> tuple[Float[Tensor, "Fc Fp"], Float[Tensor, "Fc Fp"]]:
    """(Ochiai n(c∧p)/sqrt(n(c) n(p)), given n(c∧p)/n(c)), both 0 where a count is 0; the joint
    counts are one 0/1 product in float32 (exact below 2^24 rows), the ratios in float64."""
    if len(child_fires) != len(parent_fires):
        raise ValueError(
            f"child_fires has {len(child_fires)} rows, parent_fires {len(parent_fires)}: expected the same"
        )
    if len(child_fires) >= 1 << 24:
        raise ValueError(f"{len(child_fires)} rows: float32 counts are exact below 2^24; pass fewer rows")
    both = (child_fires.float().T @ parent_fires.float()).double()  # [Fc, Fp]
    nc, np_ = child_fires.sum(0).double(), parent_fires.sum(0).double()
    ochiai = both / (nc[:, None] * np_[None, :]).sqrt().clamp_min(1e-300)
    given = both / nc[:, None].clamp_min(1)
    return ochiai, given


def match_rung(
    W_child: Float[Tensor, "Fc d"],
    W_parent: Float[Tensor, "Fp d"],
    child_fires: Bool[Tensor, "N Fc"],
    parent_fires: Bool[Tensor, "N Fp"],
    child_ids: Int[Tensor, " Fc"] | None = None,
    width: int | None = None,
) -> Rung:
    """Each child's parent by decoder cosine and by co-firing (module docstring)."""
    if W_child.shape[1] != W_parent.shape[1]:
        raise ValueError(f"W_child is {W_child.shape[1]} wide, W_parent {W_parent.shape[1]}: expected one d_in")
    if child_fires.shape[1] != len(W_child) or parent_fires.shape[1] != len(W_parent):
        raise ValueError(
            f"child_fires/parent_fires: expected {len(W_child)}/{len(W_parent)} columns (the decoders' rows), "
            f"got {child_fires.shape[1]}/{parent_fires.shape[1]}"
        )
    cos = _unit(W_child.double()) @ _unit(W_parent.double()).T
    cos_val, cos_parent = cos.max(1)
    ochiai, given = cofire_stats(child_fires, parent_fires)
    co_val, co_parent = ochiai.max(1)
    fired = child_fires.any(0)
    co_parent = torch.where(fired, co_parent, torch.full_like(co_parent, -1))
    ids = torch.arange(len(W_child)) if child_ids is None else child_ids
    return Rung(
        len(W_child) if width is None else width,
        len(W_parent),
        ids,
        cos_parent,
        cos_val.float(),
        co_parent,
        co_val.float(),
        given.gather(1, co_parent.clamp_min(0)[:, None]).squeeze(1).mul(fired).float(),
        child_fires.double().mean(0).float(),
    )


def default_widths(sae: SparseAutoencoder) -> tuple[int, ...]:
    """A Matryoshka SAE's rungs: its fixed prefix widths and F; otherwise F/8, F/4, F/2, F (those ≥ 1)."""
    F = sae.cfg.d_sae
    if sae.cfg.matryoshka == "fixed":
        return tuple(sorted(set(sae.cfg.matryoshka_widths) | {F}))
    return tuple(sorted({max(1, F // 8), max(1, F // 4), max(1, F // 2), F}))


@torch.no_grad()
def _fires(sae: SparseAutoencoder, acts: Float[Tensor, "N d"], chunk: int = 4096) -> Bool[Tensor, "N F"]:
    x = acts.to(sae.W_dec.dtype)
    return torch.cat([sae.encode(x[i : i + chunk]) > 0 for i in range(0, len(x), chunk)])


@torch.no_grad()
def prefix_ladder(
    sae: SparseAutoencoder, acts: Float[Tensor, "N d"], widths: Sequence[int] | None = None, source: str = ""
) -> Ladder:
    """The ladder of one (Matryoshka) SAE's prefixes: firings of the whole SAE's encoding (its rule
    selects over all F latents, as in training), rung i the latents [u_{i−1}, u_i)."""
    widths = tuple(default_widths(sae) if widths is None else widths)
    F = sae.cfg.d_sae
    if list(widths) != sorted(set(widths)) or widths[0] < 1 or widths[-1] > F or len(widths) < 2:
        raise ValueError(f"widths={widths}: expected at least two increasing widths in [1, d_sae={F}]")
    fires, W = _fires(sae, acts), sae.W_dec.detach()
    rungs = tuple(
        match_rung(W[lo:hi], W[:lo], fires[:, lo:hi], fires[:, :lo], torch.arange(lo, hi), hi)
        for lo, hi in zip(widths[:-1], widths[1:])
    )
    return Ladder("prefixes", widths, len(acts), rungs, (source,) if source else ())


@torch.no_grad()
def separate_ladder(
    saes: Sequence[SparseAutoencoder], acts: Float[Tensor, "N d"], sources: Sequence[str] = ()
) -> Ladder:
    """The ladder between SAEs trained apart on the same hook, in increasing width."""
    widths = tuple(s.cfg.d_sae for s in saes)
    if len(saes) < 2 or list(widths) != sorted(set(widths)):
        raise ValueError(f"saes: expected at least two SAEs of increasing width, got widths {widths}")
    if len({s.cfg.d_in for s in saes}) != 1:
        raise ValueError(f"saes: expected one d_in, got {[s.cfg.d_in for s in saes]}")
    fires = [_fires(s, acts) for s in saes]
    rungs = tuple(
        match_rung(saes[i + 1].W_dec.detach(), saes[i].W_dec.detach(), fires[i + 1], fires[i])
        for i in range(len(saes) - 1)
    )
    return Ladder("separate", widths, len(acts), rungs, tuple(sources))


def run_activations(run_dir: str | Path, n_windows: int = 32) -> Float[Tensor, "N d"]:
    """The run's SAE input on `n_windows` held-out windows of its recorded corpus (BOS rows left out)."""
    from ..activations import capture
    from ..hub import model_for_run
    from ..runs import CONFIG_FILE
    from .io import load_sae
    from .run_eval import held_out_windows, load_text

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / CONFIG_FILE).read_text())
    sae = load_sae(run_dir)
    model, tok = model_for_run(run_dir)
    corpus = cfg.get("corpus")  # as run_eval.evaluate_recorded_run reads it
    text = load_text(None if corpus in (None, "python-docs") else corpus, cfg.get("text_field", "text"))
    _, val = held_out_windows(text, tok, min(128, model.cfg.n_ctx - 1), n_windows)
    acts = torch.cat([capture(model, c, sae.cfg.hook_name)[0][:, 1:] for c in val.split(32)])
    return acts.reshape(-1, acts.shape[-1])


def main(argv: list[str] | None = None) -> None:
    """python -m workbench.sae.ladder RUN [RUN ...]: one run, its prefix ladder; several (increasing
    width, one hook), the ladder between them. Written into the first run's folder (or --out)."""
    import argparse

    from .io import load_sae

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--widths", type=int, nargs="+", help="prefix widths (one run); default: default_widths")
    ap.add_argument("--windows", type=int, default=32, help="held-out windows the co-firing is counted on")
    ap.add_argument("--out", help="folder to write ladder.safetensors/json into (default: the first run)")
    args = ap.parse_args(argv)
    acts = run_activations(args.runs[0], args.windows)
    names = [Path(r).name for r in args.runs]
    if len(args.runs) == 1:
        ladder = prefix_ladder(load_sae(args.runs[0]), acts, args.widths, names[0])
    else:
        ladder = separate_ladder([load_sae(r) for r in args.runs], acts, names)
    ladder.save(args.out or args.runs[0])
    print(f"ladder ({ladder.kind}, widths {ladder.widths}, {ladder.n_rows} rows) -> {args.out or args.runs[0]}")


if __name__ == "__main__":
    main()
