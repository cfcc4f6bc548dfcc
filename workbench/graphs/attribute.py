"""Edges of the attribution graph by gradient injection, in batches (circuit-tracer's attribute()).

In the replacement model (replacement.py) every target t reads a linear function of the residual
stream: a feature its pre-activation W_enc[:, f] . x_L[p], a logit its demeaned logit
(W_U[:, v] - mean_v' W_U[:, v']) . ln_final(resid)[n-1]. Injecting that vector as the gradient at
t's input (batch row b) and running one backward pass through the frozen linear paths gives, at
every source s's output, the gradient g_s; the edge is the direct effect

    A[t, s] = g_s . out_s,   out_s = a_s W_dec[s] (feature), e_L[p] (error), W_E[token_p] (token).

The prompt is run once as a batch of B copies (graph retained); each backward fills B rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..activations import frozen as frozen_weights
from .graph import Graph
from .replacement import Replacement, setup
from .sparse import TopInputs, top_rows
from .transcoder import INPUT_HOOK, OUTPUT_HOOK, Transcoder


class Injection(NamedTuple):
    """Gradients injected in one backward pass: one per batch row."""

    key: list[str]  # the captured tensor each row injects at ("x.L", "final", "z.L")
    pos: Int[Tensor, " b"]
    head: Int[Tensor, " b"]  # for "z.L" rows, else ignored
    vec: Float[Tensor, "b d"]


class _Stop(Exception):
    """Raised by the last layer's hook: the linear pass needs nothing past the residual stream."""


class LinearPass:
    """The prompt replayed as B copies with patterns and norm scales frozen and each MLP output a
    constant (plus the skip term's linear path), so its backward is the replacement model's
    transpose. `rows(inj)` gives the direct effects of every source on each injected target, and
    the gradient each target puts on the residual stream at its own position (its direct read)."""

    def __init__(self, model, rep: Replacement, transcoders: dict[int, Transcoder], batch_size: int):
        self.rep, self.B = rep, batch_size
        self.cap: dict[str, Tensor] = {}
        B, L = batch_size, model.cfg.n_layers
        grow = lambda t: t.expand(B, *t.shape[1:])  # noqa: E731
        leaves = {"embed": rep.embed.expand(B, *rep.embed.shape).clone().requires_grad_()}
        for i, l in enumerate(rep.mlp_layers):
            leaves[f"mlp.{l}"] = rep.mlp_out[i].expand(B, *rep.mlp_out[i].shape).clone().requires_grad_()
        self.leaves = leaves

        def frozen(t, hook):
            return grow(self.rep.frozen[hook.name])

        def capture(name):
            def fn(t, hook):
                self.cap[name] = t
                return t

            return fn

        def mlp_out(t, hook, l):
            out = leaves[f"mlp.{l}"]
            if l in transcoders and transcoders[l].W_skip is not None:
                s = transcoders[l].skip(self.cap[f"x.{l}"])
                out = out + (s - s.detach())
            return out

        hooks = [(n, frozen) for n in rep.frozen] + [("hook_embed", lambda t, hook: leaves["embed"])]
        for l in range(L):
            hooks.append((f"blocks.{l}.attn.hook_z", capture(f"z.{l}")))
            if l in rep.mlp_layers:
                hooks.append((f"blocks.{l}.hook_resid_mid", capture(f"r.{l}")))
                hooks.append((f"blocks.{l}.{INPUT_HOOK}", capture(f"x.{l}")))
                hooks.append((f"blocks.{l}.{OUTPUT_HOOK}", lambda t, hook, l=l: mlp_out(t, hook, l)))

        def last(t, hook):  # the final residual stream; a TransformerBridge has no stop_at_layer
            self.cap["r.final"] = t
            raise _Stop

        hooks.append((f"blocks.{L - 1}.hook_resid_post", last))
        # Only the leaves need gradients: with the weights frozen too, autograd keeps no input
        # activation of any matmul for a weight gradient (at 512 tokens x 16 copies of SmolLM2 that
        # would be gigabytes), and the backward computes input gradients only.
        weights = [*model.parameters(), *(t for tc in transcoders.values() for t in _tensors(tc))]
        with frozen_weights(weights), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            try:
                model(rep.tokens[None].expand(B, -1).to(model.cfg.device))
            except _Stop:
                pass
            resid = self.cap["r.final"]
            self.cap["final"] = model.ln_final(resid) if hasattr(model, "ln_final") else resid
        self.sources = [leaves["embed"]] + [leaves[f"mlp.{l}"] for l in rep.mlp_layers]

    def rows(self, inj: Injection) -> tuple[Float[Tensor, "b S"], Float[Tensor, "b d"]]:
        """(direct effects [b, n_sources] in Graph's source order, direct reads [b, d])."""
        b, rep = len(inj.key), self.rep
        groups: dict[str, Tensor] = {}
        for i, key in enumerate(inj.key):
            groups.setdefault(key, []).append(i)
        grads = {}
        for key, idx in groups.items():
            idx = torch.tensor(idx)
            g = torch.zeros_like(self.cap[key])
            if key.startswith("z."):  # a head's z: d_head of a wider row
                g[idx, inj.pos[idx], inj.head[idx]] = inj.vec[idx, : g.shape[-1]].to(g.dtype)
            else:
                g[idx, inj.pos[idx]] = inj.vec[idx].to(g.dtype)
            grads[key] = g
            groups[key] = idx
        reads = sorted({_read_key(k) for k in grads if not k.startswith("z.")})
        wrt = self.sources + [self.cap[k] for k in reads]
        got = torch.autograd.grad(
            [self.cap[k] for k in grads], wrt, list(grads.values()), retain_graph=True, allow_unused=True
        )
        B, n = self.B, len(rep.tokens)
        new = lambda cols: got[0].new_zeros(B, cols) if got[0] is not None else rep.embed.new_zeros(B, cols)  # noqa: E731
        tokens = new(n) if got[0] is None else (got[0] * rep.embed).sum(-1)
        feats, errors = [], []
        for i, l in enumerate(rep.mlp_layers):
            gm, sel = got[1 + i], rep.features[:, 0] == l
            if gm is None:  # the layer lies downstream of every target in the batch
                feats.append(new(int(sel.sum())))
                errors.append(new(n))
                continue
            errors.append((gm * rep.errors[i]).sum(-1))
            if sel.any():
                feats.append(torch.einsum("bmd,md->bm", gm[:, rep.features[sel, 1]], rep.decoder[sel]))
        direct = rep.embed.new_zeros(b, rep.embed.shape[-1])
        for k, g in zip(reads, got[len(self.sources) :]):
            for key, idx in groups.items():
                if not key.startswith("z.") and _read_key(key) == k and g is not None:
                    direct[idx] = g[idx, inj.pos[idx]].to(direct.dtype)
        return torch.cat(feats + errors + [tokens], 1)[:b], direct


def _tensors(tc: Transcoder) -> list[Tensor]:
    return [v for v in vars(tc).values() if isinstance(v, Tensor)]


def _read_key(key: str) -> str:
    """Where a target's direct read sits: the residual stream just before the norm it reads through."""
    return "r.final" if key == "final" else "r." + key.split(".")[1]


def stream_influence(
    inf: Float[Tensor, " N"], w: Float[Tensor, " N"], nodes: Int[Tensor, " b"], layer: Int[Tensor, " b"], rows
) -> None:
    """Adds the rows' share of every source's influence, I[s] += (I[t] + w[t]) |A[t, s]| / Σ|A[t, .]|,
    from the highest layer down: a row is only fed by sources of lower layers, so when every row of
    higher layers has been added, I[t] is final. Summed over all rows this is prune.influence's
    I = (I + w) Â, exactly, without storing A."""
    a = rows.abs().double()
    a = a / a.sum(1, keepdim=True).clamp_min(1e-10)
    for L in layer.unique().flip(0).tolist():
        sel = layer == L
        inf[: a.shape[1]] += (inf[nodes[sel]] + w[nodes[sel]]) @ a[sel]


def salient_logits(
    logits: Float[Tensor, " V"], max_n_logits: int = 10, desired_logit_prob: float = 0.95
) -> tuple[Int[Tensor, " k"], Float[Tensor, " k"]]:
    """The most probable tokens until their cumulative probability reaches `desired_logit_prob`, at
    most `max_n_logits` (circuit-tracer's compute_salient_logits)."""
    probs = torch.softmax(logits.double(), -1)
    top_p, top_i = probs.topk(min(max_n_logits, len(probs)))
    cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob, dtype=top_p.dtype))) + 1
    return top_i[:cut], top_p[:cut]


def attribute(model, tokens: Int[Tensor, " n"], transcoders: dict[int, Transcoder] | None = None, **kw) -> Graph:
    """The attribution graph of `tokens` (`trace`'s graph, its linear pass let go)."""
    return trace(model, tokens, transcoders, **kw)[0]


def trace(
    model,
    tokens: Int[Tensor, " n"],
    transcoders: dict[int, Transcoder] | None = None,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    logit_targets: list[int] | None = None,
    bos: int | None = None,
    batch_size: int = 256,
    top_m: int | None = None,
    min_influence: float = 0.0,
    progress: bool = False,
) -> tuple[Graph, LinearPass]:
    """The attribution graph of `tokens` (module docstring): every active feature and every logit
    target is a row; `logit_targets` replaces the salient logits by given token ids. With `top_m`
    each row keeps only its top-m inputs and a remainder (sparse.py: `graph.top_inputs`, no dense
    adjacency). Also returns the linear pass, for more rows on the same prompt (heads.py).

    `min_influence` (top-m graphs): a feature whose streamed influence plus logit weight is below
    this share of the logits' total probability when its row comes up is not traced; its inputs are
    not stored, and the influence its row would have passed on (the sum of those shares, an upper
    bound on what every other node's influence misses) is `graph.untraced_mass`. Rows come layer
    by layer from the top, so a feature's influence is final when it is weighed."""
    transcoders = transcoders or {}
    if min_influence and top_m is None:
        raise ValueError("min_influence: only a top-m graph (top_m=...) streams the influence it needs")
    if not 0.0 <= min_influence < 1.0:
        raise ValueError(f"min_influence: expected a share in [0, 1), got {min_influence}")
    rep = setup(model, tokens, transcoders, bos)
    last = rep.logits[-1]
    if logit_targets is None:
        ids, probs = salient_logits(last, max_n_logits, desired_logit_prob)
    else:
        ids = torch.as_tensor(logit_targets, dtype=torch.long)
        probs = torch.softmax(last.double(), -1)[ids]
    W_U = model.W_U.detach()
    logit_vecs = (W_U[:, ids] - W_U.mean(1, keepdim=True)).T
    m, n = len(rep.features), len(tokens)
    k = len(ids)
    keys = [f"x.{int(l)}" for l in rep.features[:, 0]] + ["final"] * k
    pos = torch.cat([rep.features[:, 1], torch.full((k,), n - 1)])
    vecs = torch.cat([rep.encoder, logit_vecs.to(rep.encoder.dtype)])
    n_src = m + n * len(rep.mlp_layers) + n
    dtype = rep.embed.dtype
    if top_m is None:
        adj = torch.zeros(n_src + k, n_src + k, dtype=dtype)
    else:
        targets = torch.cat([torch.arange(m), torch.arange(n_src, n_src + k)])
        top = TopInputs(
            targets,
            torch.zeros(m + k, top_m, dtype=torch.long),
            torch.zeros(m + k, top_m, dtype=dtype),
            torch.zeros(m + k, dtype=dtype),
            n_src + k,
        )
    reads = torch.zeros(m + k, rep.embed.shape[-1], dtype=rep.embed.dtype)
    B = max(1, min(batch_size, m + k))
    lin = LinearPass(model, rep, transcoders, B)
    # logits first, as circuit-tracer; then features from the last layer down, so that a row's
    # influence is final when it is traced (stream_influence)
    order = list(range(m, m + k)) + list(range(m))[::-1]
    inf = torch.zeros(n_src + k, dtype=torch.float64)
    w = torch.zeros(n_src + k, dtype=torch.float64)
    w[n_src:] = probs.double()
    row_layer = torch.cat([rep.features[:, 0], torch.full((k,), model.cfg.n_layers)]).tolist()
    node_of = lambda i: i if i < m else n_src + (i - m)  # noqa: E731
    floor, untraced = min_influence * float(w.sum()), 0.0
    traced = torch.zeros(m + k, dtype=torch.bool)
    bar = tqdm(total=m + k, desc="attribution", disable=not progress)
    for idx in _batches(order, row_layer, B):
        if floor:  # every row of higher layers is streamed: these rows' influence is final
            share = (inf + w)[torch.tensor([node_of(i) for i in idx])]
            untraced += float(share[share < floor].sum())
            bar.update(int((share < floor).sum()))
            idx = [i for i, keep in zip(idx, (share >= floor).tolist()) if keep]
            if not idx:
                continue
        inj = Injection([keys[i] for i in idx], pos[idx], torch.zeros(len(idx), dtype=torch.long), vecs[idx])
        rows, direct = lin.rows(inj)
        node = torch.tensor([node_of(i) for i in idx])
        row = torch.tensor(idx)
        traced[row] = True
        if top_m is None:
            adj[node, :n_src] = rows.detach().to(dtype)
        else:
            top.cols[row], top.vals[row], top.rest[row] = top_rows(rows.detach().to(dtype), top_m)
            stream_influence(inf, w, node, torch.tensor([row_layer[i] for i in idx]), rows.detach())
        reads[row] = direct.to(reads.dtype)
        bar.update(len(idx))
    bar.close()
    if top_m is not None and not traced.all():
        top = TopInputs(top.targets[traced], top.cols[traced], top.vals[traced], top.rest[traced], top.n_nodes)
    graph = Graph(
        tokens=rep.tokens,
        features=rep.features,
        activations=rep.activations,
        error_layers=list(rep.mlp_layers),
        logit_tokens=ids,
        logit_probs=probs.to(dtype),
        adjacency=adj if top_m is None else None,
        reads=reads,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
        top_inputs=None if top_m is None else top,
        node_influence=None if top_m is None else inf.to(dtype),
        untraced_mass=untraced / max(float(w.sum()), 1e-300) if top_m is not None else None,
    )
    return graph, lin


def _batches(order: list[int], layer: list[int], B: int):
    """`order` in runs of at most B rows of one layer: a row's influence is final only once every
    row of a higher layer has been streamed, so no batch mixes layers."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == B or layer[i] != layer[batch[0]]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
