"""Attribution graphs (workbench.graphs) against a reference written here: the frozen replacement
model as a forward pass with every node's value an input. It is linear in the node values, so
every edge must equal the finite difference of its target in that model (float64, 1e-6); an MLP
that is its transcoder leaves no error and completeness exactly 1; on planted [BOS, r, r] copy
prompts the top token input of the correct next token's logit is the token after the earlier
occurrence, and on the hand-set model its edge runs through the one induction head."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.handset_heads import BOS as HS_BOS
from tests.handset_heads import INDUCTION_HEAD, handset_model
from workbench.graphs import sparse
from workbench.graphs.attribute import salient_logits, trace
from workbench.graphs.graph import Graph
from workbench.graphs.heads import head_loadings
from workbench.graphs.prune import graph_scores, influence, normalize, prune, threshold_value
from workbench.graphs.transcoder import Transcoder, load_transcoders, random_transcoder, save_transcoders
from workbench.sae.attention import copy_contexts

TOKENS = torch.tensor([10, 3, 4, 5, 3, 4, 7])
BOS = 10


def tiny_model(**overrides) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=11, act_fn="relu")
    cfg |= dict(normalization_type="LN", dtype=torch.float64, seed=0) | overrides
    return HookedTransformer(HookedTransformerConfig(**cfg)).eval()


def tiny_transcoders() -> dict[int, Transcoder]:
    """Layer 0: TopK k=3; layer 1: a JumpReLU skip transcoder (the skip path carries gradient)."""
    t0 = random_transcoder(16, 24, 3, seed=0, dtype=torch.float64)
    t1 = random_transcoder(16, 24, 3, skip=True, seed=1, dtype=torch.float64)
    t1 = dataclasses.replace(t1, activation="jumprelu", threshold=torch.full((24,), 0.3, dtype=torch.float64))
    return {0: t0, 1: t1}


# --- the reference: the frozen replacement model, every node's value an input ---------------------


def frozen_reference(model, tokens, tcs, graph: Graph):
    """f(scale [B, N]) -> every target's value [B, T] (features' pre-activations, then the logits'
    demeaned logits) in the frozen model, each source node's output multiplied by scale[:, source]:
    a batch of B perturbed prompts at once, patterns and norm scales the clean run's."""
    _, cache = model.run_with_cache(tokens[None])
    sl, F = graph.slices(), graph.features
    x_clean = {l: cache[f"blocks.{l}.ln2.hook_normalized"] for l in tcs}
    writes = torch.stack([a * tcs[int(l)].W_dec[q] for (l, _, q), a in zip(F.tolist(), graph.activations)])
    errors = {l: cache[f"blocks.{l}.hook_mlp_out"][0] - tcs[l](x_clean[l][0]) for l in tcs}
    for e in errors.values():
        e[0] = 0  # the BOS position's MLP output is a constant, no node
    at_pos = torch.nn.functional.one_hot(F[:, 1], graph.n_pos).double()  # [m, n]

    def run(scale: torch.Tensor) -> torch.Tensor:
        d = scale - 1  # each source's output is added d times once more
        B = len(scale)
        hooks = [(n, lambda t, hook: cache[hook.name]) for n in cache if n.endswith(("hook_pattern", "hook_scale"))]
        hooks.append(("hook_embed", lambda t, hook: cache["hook_embed"] * scale[:, sl["token"], None]))
        xs = {}

        def keep_x(t, hook):
            xs[hook.layer()] = t

        def mlp_out(t, hook):
            l = hook.layer()
            out = cache[hook.name].expand(B, -1, -1) + tcs[l].skip(xs[l]) - tcs[l].skip(x_clean[l])
            i = F[:, 0] == l
            out = out + torch.einsum("bm,mn,md->bnd", d[:, : graph.n_features][:, i], at_pos[i], writes[i])
            e0 = graph.error_layers.index(l) * graph.n_pos + sl["error"].start
            return out + d[:, e0 : e0 + graph.n_pos, None] * errors[l]

        for l in range(model.cfg.n_layers):
            hooks += [(f"blocks.{l}.ln2.hook_normalized", keep_x), (f"blocks.{l}.hook_mlp_out", mlp_out)]
        with torch.no_grad():
            logits = model.run_with_hooks(tokens[None].expand(B, -1), fwd_hooks=hooks)[:, -1]
        pre = [xs[l][:, p] @ tcs[l].W_enc[:, q] + tcs[l].b_enc[q] for l, p, q in F.tolist()]
        demeaned = logits[:, graph.logit_tokens] - logits.mean(-1, keepdim=True)
        return torch.cat([torch.stack(pre, 1), demeaned], 1)

    return run


def test_every_edge_is_the_finite_difference_of_the_frozen_model():
    model, tcs = tiny_model(), tiny_transcoders()
    graph, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=7)
    sl = graph.slices()
    assert graph.n_features > 20 and graph.n_logits >= 2 and (graph.features[:, 1] > 0).all()
    f = frozen_reference(model, TOKENS, tcs, graph)
    rows = torch.cat([torch.arange(graph.n_features), torch.arange(sl["logit"].start, graph.n_nodes)])
    n_src, eps = sl["token"].stop, 1e-3
    bump = torch.eye(graph.n_nodes, dtype=torch.float64)[:n_src] * eps
    fd = ((f(1 + bump) - f(1 - bump)) / (2 * eps)).T  # [targets, sources]
    A = graph.adjacency[rows, :n_src]
    assert (A != 0).sum() > 300  # the check covers many non-zero edges
    assert torch.allclose(A, fd, atol=1e-6, rtol=0), (A - fd).abs().max()
    # the reference at the prompt's own values: the transcoders' pre-activations
    at_prompt = f(torch.ones(1, graph.n_nodes, dtype=torch.float64))[0]
    _, cache = model.run_with_cache(TOKENS[None])
    for i, (l, p, q) in enumerate(graph.features.tolist()):
        pre = tcs[l].encode_pre(cache[f"blocks.{l}.ln2.hook_normalized"][0, p])
        assert float(at_prompt[i]) == pytest.approx(float(pre[q]), abs=1e-9)


def test_an_mlp_that_is_its_transcoder_gives_completeness_one():
    model, tcs = tiny_model(), tiny_transcoders()
    x_in = {}

    def keep(t, hook):
        x_in[hook.layer()] = t

    def replace(t, hook):
        return tcs[hook.layer()](x_in[hook.layer()][0])[None]

    for l in range(2):
        model.add_hook(f"blocks.{l}.ln2.hook_normalized", keep, is_permanent=True)
        model.add_hook(f"blocks.{l}.hook_mlp_out", replace, is_permanent=True)
    graph, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=16)
    model.reset_hooks(including_permanent=True)
    sl = graph.slices()
    assert (graph.adjacency[:, sl["error"]] == 0).all()
    assert graph_scores(graph) == (1.0, 1.0)
    true_mlps, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=16)  # random transcoders: errors
    rep, comp = graph_scores(true_mlps)
    assert 0 < rep < 0.99 and 0 < comp < 0.99


def test_pruning_and_scores_follow_the_definitions():
    model, tcs = tiny_model(), tiny_transcoders()
    graph, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=64)
    A, w = graph.adjacency, graph.logit_weights()
    N = graph.n_nodes
    A_norm = normalize(A)
    dense = w @ (torch.linalg.inv(torch.eye(N, dtype=A.dtype) - A_norm) - torch.eye(N, dtype=A.dtype))
    assert torch.allclose(influence(A_norm, w), dense, atol=1e-12)
    p = prune(graph, 0.8, 0.98)
    sl = graph.slices()
    assert p.node_mask[sl["token"].start :].all()
    feat_inf = p.node_influence[: sl["token"].start]
    kept = feat_inf[p.node_mask[: sl["token"].start]]
    dropped = feat_inf[~p.node_mask[: sl["token"].start]]
    assert 0 < len(kept) < sl["token"].start and dropped.max() <= p.node_influence.sort().values[-1]
    assert not p.edge_mask[~p.node_mask].any() and not p.edge_mask[:, ~p.node_mask].any()
    assert p.edge_mask.sum() < (A != 0).sum()
    loose = prune(graph, 1.0, 1.0)  # every edge with a path to a logit
    kept = loose.node_mask[:, None] & loose.node_mask[None, :]
    assert torch.equal(loose.edge_mask, (loose.edge_scores > 0) & kept) and loose.edge_mask.sum() > p.edge_mask.sum()
    with pytest.raises(ValueError, match="node_threshold"):
        prune(graph, 1.5)
    # completeness: the influence-weighted share of inputs that are not errors, by hand
    inf = influence(A_norm, w)
    non_err = 1 - A_norm[:, sl["error"]].sum(1)
    hand = float((non_err * (inf + w)).sum() / (inf + w).sum())
    tok, err = inf[sl["token"]].sum(), inf[sl["error"]].sum()
    assert graph_scores(graph) == pytest.approx((float(tok / (tok + err)), hand), abs=1e-12)


def test_salient_logits_stop_at_the_cumulative_probability():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    ids, probs = salient_logits(logits, 10, 0.95)
    assert ids.tolist() == [0, 1, 2] and probs.sum() == pytest.approx(0.95)
    assert salient_logits(logits, 2, 0.95)[0].tolist() == [0, 1]


def test_head_loadings_sum_to_the_edge_and_match_the_frozen_model():
    model, tcs = tiny_model(), tiny_transcoders()
    tcs = {0: tcs[0], 1: dataclasses.replace(tcs[1], W_skip=None)}  # without skip, nothing is "other"
    graph, lin = trace(model, TOKENS, tcs, bos=BOS, batch_size=8)
    sl = graph.slices()
    t_idx, s_idx = (graph.adjacency[:, : sl["token"].stop] != 0).nonzero(as_tuple=True)
    load = head_loadings(model, lin, graph, t_idx, s_idx)
    edge = graph.adjacency[t_idx, s_idx]
    assert torch.allclose(load.residual + load.heads.sum((1, 2)), edge, atol=1e-9)
    assert load.other.abs().max() < 1e-9
    cross = (graph.node_table()["pos"][t_idx] != graph.node_table()["pos"][s_idx]).nonzero()[:, 0]
    assert len(cross) > 50 and (load.residual[cross] == 0).all()
    # one head's loading by a forward difference: the source's effect on z of that head at the
    # target's position, read through W_O and the target's direct read
    i = int(cross[load.heads[cross].abs().flatten(1).max(1).values.argmax()])
    t, s = int(t_idx[i]), int(s_idx[i])
    l, h = divmod(int(load.heads[i].abs().argmax()), graph.n_heads)
    q = int(graph.node_table()["pos"][t])
    z_of = _z_under_scaled_source(model, tcs, graph, s, l)
    dz = (z_of(1 + 1e-3) - z_of(1 - 1e-3)) / 2e-3
    direct = graph.reads[graph.target_row(t)]
    assert float(direct @ (model.W_O[l, h].detach().T @ dz[q, h])) == pytest.approx(
        float(load.heads[i, l, h]), abs=1e-7
    )


def _z_under_scaled_source(model, tcs, graph, s, layer):
    _, cache = model.run_with_cache(TOKENS[None])
    sl, nodes = graph.slices(), graph.node_table()

    def z(scale: float) -> torch.Tensor:
        hooks = [(n, lambda t, hook: cache[hook.name]) for n in cache if n.endswith(("hook_pattern", "hook_scale"))]
        hooks += [(f"blocks.{l}.hook_mlp_out", lambda t, hook: cache[hook.name].clone()) for l in range(2)]
        p = int(nodes["pos"][s])
        if s >= sl["token"].start:
            hooks.append(
                ("hook_embed", lambda t, hook: t.index_put((torch.tensor(0), torch.tensor(p)), t[0, p] * scale))
            )
        elif s < graph.n_features:
            l, _, f = graph.features[s].tolist()
            delta = (scale - 1) * graph.activations[s] * tcs[l].W_dec[f]
            hooks.append(
                (
                    f"blocks.{l}.hook_mlp_out",
                    lambda t, hook: t.index_put((torch.tensor(0), torch.tensor(p)), t[0, p] + delta),
                )
            )
        else:
            raise ValueError("an error source: not used here")
        out = {}
        hooks.append((f"blocks.{layer}.attn.hook_z", lambda t, hook: out.setdefault("z", t)))
        with torch.no_grad():
            model.run_with_hooks(TOKENS[None], fwd_hooks=hooks)
        return out["z"][0]

    return z


def test_transcoders_round_trip_through_files(tmp_path):
    tcs = tiny_transcoders()
    save_transcoders(tmp_path, tcs)
    back = load_transcoders(tmp_path, dtype=torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    for l in (0, 1):
        assert back[l].activation == tcs[l].activation and torch.allclose(back[l](x), tcs[l](x), atol=1e-12)
    with pytest.raises(FileNotFoundError, match="layer_<L>"):
        load_transcoders(tmp_path / "nothing")
    with pytest.raises(ValueError, match="W_dec"):
        Transcoder(torch.zeros(4, 6), torch.zeros(6), torch.zeros(4, 6), torch.zeros(4))


def test_graph_round_trips_through_safetensors(tmp_path):
    graph, _ = trace(tiny_model(), TOKENS, tiny_transcoders(), bos=BOS, batch_size=64)
    graph.save(tmp_path / "g.safetensors")
    back = Graph.load(tmp_path / "g.safetensors")
    assert torch.equal(back.adjacency, graph.adjacency) and back.error_layers == graph.error_layers
    assert graph_scores(back) == graph_scores(graph)


# --- planted: [BOS, r, r] copy steps ------------------------------------------------------------


def copy_steps(n: int, segment: int, token_range: tuple[int, int], bos: int, seed: int):
    """(prompt up to a copy step, the correct next token, the position of the token after the
    earlier occurrence) for n planted [BOS, r, r] contexts, one random copy step each."""
    ctx = copy_contexts(n, segment, token_range, bos, seed=seed).tokens
    gen = torch.Generator().manual_seed(seed)
    for row in ctx:
        d = int(torch.randint(segment + 1, 2 * segment, (1,), generator=gen))
        yield row[: d + 1], int(row[d + 1]), d - segment + 1


def top_token_input(graph: Graph) -> int:
    sl = graph.slices()
    return int(graph.adjacency[sl["logit"].start, sl["token"]].argmax())


def test_handset_induction_copy_runs_through_the_induction_head():
    """Attention-only (no MLP, so no feature or error nodes): the top token input of the correct
    logit is the token after the earlier occurrence, and its edge loads on L1H0, the one induction
    head among 8 per layer."""
    model = handset_model(n_heads=8)
    hits, on_head = 0, []
    for toks, correct, source in copy_steps(12, 15, (0, HS_BOS), HS_BOS, seed=3):
        graph, lin = trace(model, toks, {}, logit_targets=[correct], bos=HS_BOS)
        top = top_token_input(graph)
        hits += top == source
        t = torch.tensor([graph.slices()["logit"].start])
        s = torch.tensor([graph.slices()["token"].start + top])
        load = head_loadings(model, lin, graph, t, s)
        on_head.append(float(load.heads[0][INDUCTION_HEAD] / graph.adjacency[t, s][0]))
    assert hits >= 0.9 * 12
    assert min(on_head) > 0.99


def test_default_model_copy_steps_with_mlps_as_error_nodes():
    """The shipped byte model, no transcoders (each MLP is its error node): the top token input of
    the correct byte's logit is the byte after its earlier occurrence in >= 90% of copy steps."""
    from workbench.hub import load_model

    model = load_model("workbench-tiny")[0].to(torch.float64)
    steps = list(copy_steps(40, 20, (32, 127), 256, seed=3))
    hits = sum(top_token_input(trace(model, t, {}, logit_targets=[c], bos=256)[0]) == s for t, c, s in steps)
    assert hits >= 0.9 * len(steps), hits


# --- long prompts: top-m inputs, streamed influence (sparse.py) ----------------------------------


def test_top_m_graph_streams_the_dense_influence_and_keeps_the_top_inputs(tmp_path):
    model, tcs = tiny_model(), tiny_transcoders()
    dense, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=5)
    top, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=5, top_m=4)  # batches end at layer boundaries
    w = dense.logit_weights()
    exact = influence(normalize(dense.adjacency), w)
    assert top.adjacency is None and torch.allclose(top.node_influence, exact, atol=1e-12, rtol=0)
    ref = sparse.from_dense(dense.adjacency, top.top_inputs.targets, 4)
    assert torch.allclose(top.top_inputs.to_dense(), ref.to_dense(), atol=1e-12)  # ties at 0 aside
    assert torch.allclose(top.top_inputs.rest + ref.vals.abs().sum(1), dense.adjacency[ref.targets].abs().sum(1))
    # the top-m iteration: exact when m covers every input, a lower bound below that
    full = sparse.from_dense(dense.adjacency, ref.targets, dense.n_nodes)
    assert torch.allclose(sparse.influence(full, w), exact, atol=1e-12, rtol=0)
    assert (sparse.influence(ref, w) <= exact + 1e-12).all() and not torch.allclose(sparse.influence(ref, w), exact)
    top.save(tmp_path / "g.safetensors")
    back = Graph.load(tmp_path / "g.safetensors")
    assert torch.equal(back.top_inputs.vals, top.top_inputs.vals) and torch.equal(
        back.node_influence, top.node_influence
    )
    with pytest.raises(ValueError, match="top 4 inputs"):
        prune(back)
    p = sparse.prune(back.top_inputs, w, back.slices()["token"].start, 0.8, 0.98, back.node_influence)
    fixed = torch.arange(dense.n_nodes) >= dense.slices()["token"].start
    assert torch.equal(p.node_mask, (exact >= threshold_value(exact, 0.8)) | fixed) and not p.node_mask.all()
    t = back.top_inputs
    assert p.edge_mask.any() and not p.edge_mask[~(p.node_mask[t.targets, None] & p.node_mask[t.cols])].any()


def test_rows_below_min_influence_are_skipped_with_their_mass_bounded(tmp_path):
    """A feature is skipped only when its streamed influence plus weight is below the floor; in the
    top layer (fed by the logits alone) that influence is the dense graph's, so exactly the features
    below the floor are skipped there; every node's streamed influence misses at most untraced_mass
    of the total; skipped rows are absent from the stored inputs; the weights' grad flags are back."""
    model, tcs = tiny_model(), tiny_transcoders()
    flags = [p.requires_grad for p in model.parameters()]
    dense, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=5)
    w = dense.logit_weights()
    exact = influence(normalize(dense.adjacency), w)
    m = dense.n_features
    share = (exact + w)[:m] / w.sum()
    floor = float(share[share > 0].median())  # every silent feature and half the others fall below
    top, _ = trace(model, TOKENS, tcs, bos=BOS, batch_size=5, top_m=4, min_influence=floor)
    traced = torch.zeros(dense.n_nodes, dtype=torch.bool)
    traced[top.top_inputs.targets] = True
    skipped, streamed = ~traced[:m], (top.node_influence + w)[:m] / w.sum()
    assert skipped.any() and (streamed[skipped] < floor).all() and (streamed[~skipped] >= floor).all()
    last = dense.features[:, 0] == 1
    assert torch.allclose(streamed[last], share[last]) and torch.equal(skipped[last], share[last] < floor)
    missed = (exact - top.node_influence) / w.sum()
    assert (missed >= -1e-12).all() and (missed <= top.untraced_mass + 1e-12).all() and missed.max() > 0
    assert top.untraced_mass == pytest.approx(float(streamed[skipped].sum()), rel=1e-9)
    assert [p.requires_grad for p in model.parameters()] == flags
    top.save(tmp_path / "g.safetensors")
    assert Graph.load(tmp_path / "g.safetensors").untraced_mass == pytest.approx(top.untraced_mass)
    with pytest.raises(ValueError, match="min_influence: only a top-m graph"):
        trace(model, TOKENS, tcs, bos=BOS, min_influence=0.1)


def test_top_m_node_influence_ranks_as_the_dense_one_on_the_default_model():
    """48 bytes of held-out text, random TopK transcoders (512 latents, seed 0): Spearman >= 0.99
    between the top-m graph's node influence and the dense algorithm's, over feature and error nodes."""
    from scipy.stats import spearmanr

    from workbench.hub import load_model
    from workbench.token_data import default_data

    model, data = load_model("workbench-tiny")[0], default_data()
    tokens = torch.cat([torch.tensor([256]), data.validation[:48]])
    tcs = {l: random_transcoder(128, 512, 16, seed=l) for l in range(2)}
    dense, _ = trace(model, tokens, tcs, bos=256)
    top, _ = trace(model, tokens, tcs, bos=256, top_m=32)
    exact = influence(normalize(dense.adjacency), dense.logit_weights())
    inner = dense.slices()["token"].start
    assert spearmanr(exact[:inner], top.node_influence[:inner]).statistic >= 0.99


# --- trainer transcoders as graph transcoders (transcoder.from_sae / from_runs) -------------------


@pytest.mark.parametrize("selection,skip", [("topk", False), ("topk", True), ("mutual_choice", False)])
def test_a_trainer_transcoder_adapts_to_the_same_mlp_replacement(tmp_path, selection, skip):
    """Trained a few steps on the tiny model's layer-0 MLP pairs, saved as a run, adapted: the model
    with its MLP replaced by the trainer's module and by the adapted graphs.Transcoder give the same
    logits in float64 (1e-12); the run folder's adapter gives the same weights."""
    from workbench.activations import ActivationStore, TensorSource
    from workbench.graphs.transcoder import from_runs, from_sae
    from workbench.sae import SAEConfig, SAETrainConfig, train_sae
    from workbench.sae.io import load_sae, save_sae

    model = tiny_model()
    names = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]
    tokens = torch.randint(0, 10, (64, 8), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens, names_filter=names)
    x, y = (cache[n].flatten(0, 1).float() for n in names)
    cfg = SAEConfig(d_in=16, d_sae=32, k=3, selection=selection, skip=skip, target_hook=names[1], hook_name=names[0])
    sae = train_sae(
        cfg,
        SAETrainConfig(total_tokens=4096, batch_size=256, lr=4e-3),
        ActivationStore(TensorSource(x, targets=y), 256),
        progress=False,
    )
    save_sae(sae, tmp_path / "run")
    tcs = from_runs(tmp_path / "run")
    sae = load_sae(tmp_path / "run").double().eval()
    tc = from_sae(sae)
    assert list(tcs) == [0] and tc.activation == ("jumprelu" if selection == "mutual_choice" else "topk")
    assert (tc.W_skip is not None) == skip
    with torch.no_grad():
        if skip:
            assert sae.W_skip.abs().sum() > 0  # trained away from its zero start, so the test can fail
        outs = [
            model.run_with_hooks(tokens, fwd_hooks=[(names[1], lambda t, hook, f=f: f(cache[names[0]]))])
            for f in (lambda v: sae(v.flatten(0, 1)).x_hat.view_as(v), tc)
        ]
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0) and not torch.allclose(outs[0], model(tokens))
    assert torch.allclose(tcs[0].to(torch.float64).W_enc, tc.W_enc, atol=1e-6)
    with pytest.raises(ValueError, match="expected a transcoder"):
        from_sae(type(sae)(SAEConfig(d_in=16, d_sae=32, k=3)))
