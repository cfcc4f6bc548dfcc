"""Activations (and optionally loss gradients) at a hook, as shuffled batches or cached shards.

Data are produced in *chunks*: chunk i is a deterministic function of (seed, i): for a live
model, `buffer_tokens` activations from windows drawn with that seed; for a disk cache, a group
of shards. A chunk is shuffled in memory and cut into batches, so memory is bounded by the
chunk, not the corpus, and the position (chunk, batch) is all a checkpoint must store to resume
on exactly the same batches. With `world_size > 1` every rank takes its own contiguous slice
of each global batch, so data-parallel training sees the same global batches as one process,
and reads only those rows: no row of a chunk is loaded by two ranks (a disk cache is read row
by row through a memory map; a live model source still computes the whole chunk on each rank).

A transcoder's store also yields a target per row (ActivationBatch.targets): the activation at a
second hook of the same token, e.g. x at blocks.L.ln2.hook_normalized (the MLP's input, what
sparsify's transcode=True reads; circuit-tracer reads blocks.L.hook_resid_mid) and y at
blocks.L.hook_mlp_out. Gradients are then taken at the target: that is what the decoder writes.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from tqdm.auto import tqdm

if TYPE_CHECKING:  # importing transformer_lens costs seconds; torchrun workers on a cache skip it
    from transformer_lens import HookedTransformer

from .corpus import windows
from .fielddoc import REQUIRED, doc
from .runs import atomic_save_tensors, atomic_write_json


@contextmanager
def frozen(tensors: Iterable[torch.Tensor]):
    """`tensors` (a model's weights) not requiring gradients inside the block, their flags restored
    after, also on an error: a backward then computes the gradients of the activations only, and
    autograd keeps no matmul input for a weight gradient."""
    tensors = [t for t in tensors if t.requires_grad]
    try:
        for t in tensors:
            t.requires_grad_(False)
        yield
    finally:
        for t in tensors:
            t.requires_grad_(True)


class ActivationBatch(NamedTuple):
    acts: Float[torch.Tensor, "batch d"]
    grads: Float[torch.Tensor, "batch d"] | None  # dL/d(acts) (dL/d(targets) with targets) when captured
    targets: Float[torch.Tensor, "batch d_out"] | None = None  # a transcoder's y, when the source has one


def validate_hook_name(model: HookedTransformer, hook_name: str) -> None:
    """Raise a KeyError naming close matches when the model has no hook called `hook_name`."""
    if hook_name in model.hook_dict:
        return
    close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(
        f"hook_name {hook_name!r} is not a hook of this model "
        f"({model.cfg.n_layers} layers, e.g. 'blocks.0.hook_resid_post'){hint}"
    )


# Hooks whose activation carries a head axis, [batch, pos, n_heads, d]: q, k, v (n_kv_heads under
# GQA), z and the per-head result. An SAE reads them as one row per token with the heads
# concatenated (head-major, [n_heads·d]), SAELens' convention (`reshape_activations="hook_z"`)
# and that of the attention-SAE papers (Kissane et al. 2024); never as one row per head.
HEAD_AXIS_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k")
ROWS = "token"  # the row layout written into caches and SAE configs since hook_z rows became one per token


def has_head_axis(hook_name: str) -> bool:
    """Whether the activation at `hook_name` is [batch, pos, n_heads, d] (see HEAD_AXIS_HOOKS)."""
    return hook_name.rsplit(".", 1)[-1] in HEAD_AXIS_HOOKS


def token_rows(act: Float[torch.Tensor, "batch pos *rest"], hook_name: str) -> Float[torch.Tensor, "batch pos d"]:
    """One row per token: a head-axis hook's [batch, pos, n_heads, d_head] becomes
    [batch, pos, n_heads·d_head] (head h at columns [h·d_head, (h+1)·d_head)); others pass unchanged.

    Any other activation that is not [batch, pos, d] (an attention pattern [batch, head, q, k])
    has no row per token, and is refused."""
    if act.ndim == 4 and has_head_axis(hook_name):
        return act.flatten(-2)
    if act.ndim != 3:
        raise ValueError(
            f"hook_name {hook_name!r}: its activation has shape {tuple(act.shape)}, not [batch, pos, d] "
            f"nor a head-axis hook's [batch, pos, n_heads, d_head] ({', '.join(HEAD_AXIS_HOOKS)}); "
            "an SAE needs one row per token"
        )
    return act


def split_heads(rows: Float[torch.Tensor, "*lead d"], like: torch.Size) -> Float[torch.Tensor, "*lead n_heads d_head"]:
    """Undo `token_rows` for an activation of shape `like` (a no-op for hooks without a head axis)."""
    return rows.reshape(*rows.shape[:-1], *like[2:])


def hook_dim(model: HookedTransformer, hook_name: str) -> int:
    """Width of one row (one token) at a hook, found by a 2-token forward pass: n_heads·d_head for
    a head-axis hook such as blocks.L.attn.hook_z (see `token_rows`), else the last axis."""
    validate_hook_name(model, hook_name)
    _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter=hook_name)
    return token_rows(cache[hook_name], hook_name).shape[-1]


_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def stop_layer(hook_names: list[str]) -> int | None:
    """The `stop_at_layer` that still runs every hook in `hook_names`: the last block they name
    plus one (0 when only the embeddings are read); None when one lies after the blocks
    (ln_final, unembed) or is not recognised, so the whole model runs."""
    last = -1
    for name in hook_names:
        m = _BLOCK.match(name)
        if m:
            last = max(last, int(m.group(1)))
        elif name not in _BEFORE_BLOCKS:
            return None
    return last + 1


def capture(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch seq"], hook_name: str, with_grads: bool = False
) -> tuple[Float[torch.Tensor, "batch seq d"], Float[torch.Tensor, "batch seq d"] | None]:
    """Activations at `hook_name` and, optionally, d(sum of next-token losses)/d(activation), one
    row per token (a head-axis hook's heads concatenated: `token_rows`).

    The loss is summed over positions (not averaged), so a gradient does not shrink with the
    batch size or sequence length; sequences do not interact, so each row's gradient is that of
    its own sequence's total loss. Gradients flow only through the layers after the hook.
    Without gradients the forward pass stops after the hook's block (`stop_layer`).
    """
    acts, _, grads = capture_pair(model, tokens, hook_name, None, with_grads)
    return acts, grads


def capture_pair(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch seq"],
    hook_name: str,
    target_hook: str | None,
    with_grads: bool = False,
) -> tuple[
    Float[torch.Tensor, "batch seq d"],
    Float[torch.Tensor, "batch seq d_out"] | None,
    Float[torch.Tensor, "batch seq d_g"] | None,
]:
    """`capture` for a transcoder: the activations at `hook_name`, at `target_hook` (None: no
    target) and, with `with_grads`, the loss gradient at the target (at `hook_name` without one),
    each one row per token."""
    validate_hook_name(model, hook_name)
    names = [hook_name] + ([target_hook] if target_hook else [])
    for name in names[1:]:
        validate_hook_name(model, name)
    if not with_grads:
        # measured 2.3x faster caching on a real model when the layers after the hooks are skipped
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=stop_layer(names))
        target = token_rows(cache[target_hook], target_hook) if target_hook else None
        return token_rows(cache[hook_name], hook_name), target, None
    saved = {}
    leaf = target_hook or hook_name

    # keyed by the name asked for: a TransformerBridge's hook.name is its own module path, not the alias
    def keep(act, hook):
        saved[hook_name] = act.detach()

    def make_leaf(act, hook):
        saved[leaf] = act.detach().requires_grad_(True)
        return saved[leaf]

    hooks = [(leaf, make_leaf)] + ([(hook_name, keep)] if target_hook else [])
    with frozen(model.parameters()), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        loss = model(tokens, return_type="loss", loss_per_token=True).sum()
        (grad,) = torch.autograd.grad(loss, saved[leaf])
    acts = token_rows(saved[hook_name].detach(), hook_name)
    target = token_rows(saved[target_hook].detach(), target_hook) if target_hook else None
    return acts, target, token_rows(grad, leaf)


class ChunkSource(Protocol):
    d: int
    has_grads: bool
    # has_targets: bool and d_out: int, when a source yields a transcoder's targets (else absent)

    def chunk(self, i: int) -> ActivationBatch: ...


@dataclass(frozen=True)
class StoreConfig:
    """Where activations come from and how they are batched."""

    hook_name: str = doc(REQUIRED, "TransformerLens hook name, e.g. blocks.1.hook_resid_post")
    batch_size: int = doc(4096, "activations per (global) batch")
    buffer_tokens: int = doc(
        65_536, "activations per chunk (a cache shard), computed at once and shuffled into batches: the memory bound"
    )
    seq_len: int = doc(128, "tokens per window after BOS")
    with_grads: bool = doc(False, "also capture dL/d(activation) (gradient SAEs need it; at the target with one)")
    target_hook: str = doc(
        "", "transcoder: also capture this hook as the target y, e.g. blocks.0.hook_mlp_out; empty: none"
    )
    skip_bos: bool = doc(True, "drop the BOS position: its activations are outliers, not text")
    reverse: bool = doc(False, "reverse windows (for a backward model)")
    seed: int = doc(0, "which windows each chunk holds, and its shuffle")
    model_batch: int = doc(32, "windows per model forward pass")


class ModelSource:
    """Chunks computed from a model over a token stream."""

    def __init__(self, model: HookedTransformer, stream: Int[torch.Tensor, " n"], cfg: StoreConfig, bos_token_id: int):
        validate_hook_name(model, cfg.hook_name)
        if cfg.seq_len >= model.cfg.n_ctx:
            raise ValueError(f"seq_len={cfg.seq_len} must be < the model's n_ctx={model.cfg.n_ctx}")
        self.model, self.stream, self.cfg, self.bos = model, stream, cfg, bos_token_id
        self.d = hook_dim(model, cfg.hook_name)
        self.has_grads = cfg.with_grads
        self.has_targets = bool(cfg.target_hook)
        self.d_out = hook_dim(model, cfg.target_hook) if cfg.target_hook else self.d

    def chunk(self, i: int) -> ActivationBatch:
        per_seq = self.cfg.seq_len + (0 if self.cfg.skip_bos else 1)
        n_seq = -(-self.cfg.buffer_tokens // per_seq)
        gen = torch.Generator().manual_seed(self.cfg.seed * 7_919 + i)
        seqs = windows(
            self.stream, self.cfg.seq_len, bos_token_id=self.bos, reverse=self.cfg.reverse, n=n_seq, generator=gen
        )
        acts, grads, targets = [], [], []
        start = 1 if self.cfg.skip_bos else 0
        for batch in seqs.split(self.cfg.model_batch):
            a, y, g = capture_pair(self.model, batch, self.cfg.hook_name, self.cfg.target_hook, self.cfg.with_grads)
            acts.append(a[:, start:].reshape(-1, self.d))
            if y is not None:
                targets.append(y[:, start:].reshape(-1, self.d_out))
            if g is not None:
                grads.append(g[:, start:].reshape(-1, g.shape[-1]))
        n = self.cfg.buffer_tokens
        return ActivationBatch(
            torch.cat(acts)[:n], torch.cat(grads)[:n] if grads else None, torch.cat(targets)[:n] if targets else None
        )


class TensorSource:
    """Chunks cut from tensors already in memory (synthetic data, small experiments)."""

    def __init__(
        self,
        acts: Float[torch.Tensor, "n d"],
        grads: Float[torch.Tensor, "n d"] | None = None,
        chunk_size: int | None = None,
        targets: Float[torch.Tensor, "n d_out"] | None = None,
    ):
        if acts.ndim != 2:
            raise ValueError(f"acts: expected [n, d], got shape {tuple(acts.shape)}")
        if targets is not None and (targets.ndim != 2 or len(targets) != len(acts)):
            raise ValueError(f"targets: expected [{len(acts)}, d_out], got shape {tuple(targets.shape)}")
        like = acts if targets is None else targets  # gradients are at the target when there is one
        if grads is not None and grads.shape != like.shape:
            name = "targets'" if targets is not None else "acts'"
            raise ValueError(f"grads: shape {tuple(grads.shape)} must equal {name} {tuple(like.shape)}")
        if not torch.isfinite(acts).all():
            raise ValueError("acts: contains NaN or inf")
        if targets is not None and not torch.isfinite(targets).all():
            raise ValueError("targets: contains NaN or inf")
        self.acts, self.grads, self.targets = acts, grads, targets
        self.d, self.has_grads = acts.shape[1], grads is not None
        self.has_targets = targets is not None
        self.d_out = like.shape[1]
        self.chunk_size = min(chunk_size or len(acts), len(acts))
        self.n_chunks = len(acts) // self.chunk_size

    def chunk(self, i: int) -> ActivationBatch:
        j = i % self.n_chunks
        sl = slice(j * self.chunk_size, (j + 1) * self.chunk_size)
        return ActivationBatch(*(None if t is None else t[sl] for t in (self.acts, self.grads, self.targets)))


class ActivationStore:
    """Shuffled batches from a chunk source; `state_dict()` is enough to resume exactly.

    With `world_size > 1` each rank gets rows [rank·b/W, (rank+1)·b/W) of every global batch b.
    """

    def __init__(self, source: ChunkSource, batch_size: int, seed: int = 0, *, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by world_size={world_size}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.d, self.has_grads = source.d, source.has_grads
        self.has_targets = bool(getattr(source, "has_targets", False))
        self.d_out = int(getattr(source, "d_out", source.d))  # the targets' width (d without targets)
        self._chunk_index, self._batch_index = 0, 0
        self._chunk: ActivationBatch | None = None
        self._head_chunk: ActivationBatch | None = None  # chunk 0, when head() computed it

    def state_dict(self) -> dict[str, int]:
        return {"chunk": self._chunk_index, "batch": self._batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._chunk_index, self._batch_index = int(state["chunk"]), int(state["batch"])
        self._chunk = None

    def head(self, n: int) -> Float[torch.Tensor, "m d"]:
        """The first min(n, len) activations of chunk 0 in source order, the same on every rank
        (what an SAE's b_dec starts from). A disk cache reads only those rows; a computed chunk 0
        is kept for the first batches instead of being computed twice."""
        return self._head(n).acts

    def head_targets(self, n: int) -> Float[torch.Tensor, "m d_out"]:
        """`head` for the targets (what a transcoder's b_dec starts from)."""
        if not self.has_targets:
            raise ValueError("head_targets: this store's source yields no targets")
        return self._head(n).targets

    def _head(self, n: int) -> ActivationBatch:
        if hasattr(self.source, "chunk_rows"):
            return self.source.chunk_rows(0, torch.arange(min(n, self.source.chunk_len(0))))
        if self._head_chunk is None:
            self._head_chunk = self.source.chunk(0)
        return ActivationBatch(*(None if t is None else t[:n] for t in self._head_chunk))

    def _load_chunk(self) -> None:
        """This rank's rows of the current chunk, in the order its batches use them."""
        i = self._chunk_index
        n = self.source.chunk_len(i) if hasattr(self.source, "chunk_len") else None
        whole = None
        if n is None:
            kept = self._head_chunk if i == 0 else None
            whole = kept if kept is not None else self.source.chunk(i)
            self._head_chunk = None
            n = len(whole.acts)
        if n < self.batch_size:
            raise ValueError(f"a chunk holds {n} activations, fewer than batch_size={self.batch_size}")
        gen = torch.Generator().manual_seed(self.seed * 104_729 + i)
        perm = torch.randperm(n, generator=gen)
        per_chunk, local = n // self.batch_size, self.batch_size // self.world_size
        rows = perm[: per_chunk * self.batch_size].view(per_chunk, self.world_size, local)[:, self.rank].reshape(-1)
        if whole is None:
            batch = self.source.chunk_rows(i, rows)
        else:
            batch = ActivationBatch(*(None if t is None else t[rows] for t in whole))
        for name, t in (("activations", batch.acts), ("targets", batch.targets)):
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"chunk {i}: {name} contain NaN or inf")
        self._chunk = batch

    def __iter__(self) -> Iterator[ActivationBatch]:
        return self

    def __next__(self) -> ActivationBatch:
        if self._chunk is None:
            self._load_chunk()
        assert self._chunk is not None
        local = self.batch_size // self.world_size
        if self._batch_index >= len(self._chunk.acts) // local:
            self._chunk_index, self._batch_index = self._chunk_index + 1, 0
            self._load_chunk()
        start = self._batch_index * local
        self._batch_index += 1
        sl = slice(start, start + local)
        return ActivationBatch(*(None if t is None else t[sl] for t in self._chunk))


# --- disk cache ------------------------------------------------------------------------------

MANIFEST = "manifest.json"


def cache_activations(
    source: ChunkSource,
    out_dir: str | Path,
    n_chunks: int,
    *,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Path:
    """Write chunks 0..n_chunks-1 of `source` as safetensors shards plus a manifest (written
    last, so a half-written cache has no manifest and is refused on read)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in tqdm(range(n_chunks), desc="caching activations", disable=not progress):
        acts, grads, targets = source.chunk(i)
        tensors = {"acts": acts.to(dtype)}
        if grads is not None:
            tensors["grads"] = grads.to(dtype)
        if targets is not None:
            tensors["targets"] = targets.to(dtype)
        name = f"shard_{i:05d}.safetensors"
        atomic_save_tensors(out / name, tensors)
        shards.append({"file": name, "n": len(acts)})
    atomic_write_json(
        out / MANIFEST,
        {
            "format": "workbench-activations/1",
            "rows": ROWS,
            "d": source.d,
            "has_grads": source.has_grads,
            "has_targets": bool(getattr(source, "has_targets", False)),
            "d_out": int(getattr(source, "d_out", source.d)),
            "dtype": str(dtype).removeprefix("torch."),
            "shards": shards,
            "metadata": metadata or {},
        },
    )
    return out


class CachedSource:
    """Chunks read back from a cache directory; chunk i is shard i mod n (loaded lazily)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"cache_dir {self.dir} has no {MANIFEST} (not a cache, or not finished)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if manifest.get("format") != "workbench-activations/1":
            raise ValueError(f"{path}: unknown cache format {manifest.get('format')!r}")
        self.manifest = manifest
        hook = str((manifest.get("metadata") or {}).get("hook_name", ""))
        if has_head_axis(hook) and manifest.get("rows") != ROWS:
            raise ValueError(
                f"{path}: this cache of {hook} holds one row per attention head (d={manifest.get('d')}, one "
                "head's width), written before head-axis hooks were read as one row per token with the heads "
                "concatenated; an SAE trained on it pools the heads' vectors as separate samples. "
                "Cache it again (python -m workbench cache-acts --hook ...)"
            )
        self.d, self.has_grads = int(manifest["d"]), bool(manifest["has_grads"])
        # caches from before targets existed have neither key
        self.has_targets = bool(manifest.get("has_targets", False))
        self.d_out = int(manifest.get("d_out", self.d))
        self.shards = manifest["shards"]
        if not self.shards:
            raise ValueError(f"{path} lists no shards")

    @property
    def n_tokens(self) -> int:
        return sum(s["n"] for s in self.shards)

    def chunk(self, i: int) -> ActivationBatch:
        shard = self.shards[i % len(self.shards)]
        with safe_open(self.dir / shard["file"], framework="pt") as f:
            acts = f.get_tensor("acts").float()
            grads = f.get_tensor("grads").float() if self.has_grads else None
            targets = f.get_tensor("targets").float() if self.has_targets else None
        if acts.shape != (shard["n"], self.d):
            raise ValueError(f"{shard['file']}: shape {tuple(acts.shape)} != manifest's ({shard['n']}, {self.d})")
        if targets is not None and targets.shape != (shard["n"], self.d_out):
            raise ValueError(
                f"{shard['file']}: targets' shape {tuple(targets.shape)} != manifest's ({shard['n']}, {self.d_out})"
            )
        return ActivationBatch(acts, grads, targets)

    def chunk_len(self, i: int) -> int:
        return int(self.shards[i % len(self.shards)]["n"])

    def chunk_rows(self, i: int, rows: Int[torch.Tensor, " m"]) -> ActivationBatch:
        """Rows `rows` of chunk i, read through a memory map: only their pages leave the disk."""
        shard = self.shards[i % len(self.shards)]
        path = self.dir / shard["file"]
        acts = read_rows(path, "acts", rows, (shard["n"], self.d))
        g_width = self.d_out if self.has_targets else self.d  # gradients are at the target when there is one
        grads = read_rows(path, "grads", rows, (shard["n"], g_width)) if self.has_grads else None
        targets = read_rows(path, "targets", rows, (shard["n"], self.d_out)) if self.has_targets else None
        return ActivationBatch(acts, grads, targets)


_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 travels as raw bits


def read_rows(
    path: Path, name: str, rows: Int[torch.Tensor, " m"], shape: tuple[int, int]
) -> Float[torch.Tensor, "m d"]:
    """Rows of a 2-D tensor in a safetensors file, as float32, without reading the others.

    safetensors reads whole tensors or contiguous slices; a rank's rows of a shuffled batch are
    scattered, so this maps the file (an 8-byte header length, a JSON header, then raw
    little-endian data) and gathers the rows.
    """
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    info = header.get(name)
    if info is None or info["dtype"] not in _NP_DTYPES or tuple(info["shape"]) != shape:
        raise ValueError(
            f"{path}: tensor {name!r} is {info and (info['dtype'], info['shape'])}, "
            f"expected {shape} in one of {list(_NP_DTYPES)}"
        )
    begin = 8 + header_len + info["data_offsets"][0]
    data = np.memmap(path, dtype=_NP_DTYPES[info["dtype"]], mode="r", offset=begin, shape=shape)
    order = torch.argsort(rows)  # ascending offsets read the file forwards
    picked = torch.from_numpy(np.ascontiguousarray(data[rows[order].numpy()]))
    if info["dtype"] == "BF16":
        picked = picked.view(torch.bfloat16)
    out = torch.empty((len(rows), shape[1]), dtype=torch.float32)
    out[order] = picked.float()
    return out
