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
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
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
    progress: bool = False,
) -> tuple[Graph, LinearPass]:
    """The attribution graph of `tokens` (module docstring): every active feature and every logit
    target is a row; `logit_targets` replaces the salient logits by given token ids. With `top_m`
    each row keeps only its top-m inputs and a remainder (sparse.py: `graph.top_inputs`, no dense
    adjacency). Also returns the linear pass, for more rows on the same prompt (heads.py)."""
    transcoders = transcoders or {}
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
    bar = tqdm(total=m + k, desc="attribution", disable=not progress)
    for s in range(0, m + k, B):
        idx = order[s : s + B]
        inj = Injection([keys[i] for i in idx], pos[idx], torch.zeros(len(idx), dtype=torch.long), vecs[idx])
        rows, direct = lin.rows(inj)
        node = torch.tensor([i if i < m else n_src + (i - m) for i in idx])
        if top_m is None:
            adj[node, :n_src] = rows.detach().to(dtype)
        else:
            row = torch.tensor(idx)
            top.cols[row], top.vals[row], top.rest[row] = top_rows(rows.detach().to(dtype), top_m)
            layer = torch.cat([rep.features[:, 0], torch.full((k,), model.cfg.n_layers)])[row]
            stream_influence(inf, w, node, layer, rows.detach())
        reads[torch.tensor(idx)] = direct.to(reads.dtype)
        bar.update(len(idx))
    bar.close()
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
    )
    return graph, lin
