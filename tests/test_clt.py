"""Cross-layer transcoders: exact losses and gradients against an independent float64 reference on
both paths for every rule, a planted two-layer MLP with a cross-layer write recovered, the
every-layer data loader, files and resumption."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from workbench.activations import ActivationStore, TensorSource, capture_pair
from workbench.fielddoc import FieldError
from workbench.runs import CheckpointError, RunDir
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder
from workbench.sae.clt import CLTConfig, CrossLayerTranscoder, clt_losses
from workbench.sae.clt_data import CLTSource, CLTStoreConfig, LayerSource, capture_layers, mlp_hooks, split_layers
from workbench.sae.clt_train import load_clt, save_clt, train_clt
from workbench.sae.trainer import sae_losses

RULES = ("topk", "gradient", "mutual_choice", "feature_choice")
L, D, D_OUT, F, K, B = 3, 10, 8, 24, 3, 48


def _clt(rule, skip, seed=0):
    cfg = CLTConfig(n_layers=L, d_in=D, d_out=D_OUT, d_sae=F, k=K, selection=rule, skip=skip, beta=0.5, k_aux=5)
    clt = CrossLayerTranscoder(cfg, seed=seed).double().train()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the zero decoder, with biases and skips that matter
        clt.b_enc.copy_(0.1 * torch.randn(L, F, generator=gen, dtype=torch.float64))
        clt.b_dec.copy_(torch.randn(L, D_OUT, generator=gen, dtype=torch.float64))
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64) / D_OUT**0.5)
        if skip:
            clt.W_skip.copy_(0.3 * torch.randn(L, D_OUT, D, generator=gen, dtype=torch.float64))
        clt.tokens_since_fired[:, :6] = 10**9  # dead latents in every layer: the aux loss has candidates
    return clt


def _data(seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=gen, dtype=torch.float64)
    y = torch.randn(B, L, D_OUT, generator=gen, dtype=torch.float64) + x[..., :D_OUT]
    g = torch.randn(B, L, D_OUT, generator=gen, dtype=torch.float64)
    return x, y, g


def _top(scores, k):
    """Boolean mask of the k largest entries of each row (no ties in random float64)."""
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)


def _reference_mask(rule, pre, grads_flat, W_flat):
    """Each rule written from its definition, independently of selection.py."""
    if rule == "topk":
        return _top(pre, K)
    if rule == "gradient":  # pre + β·pre·|⟨g, W_dec,i⟩| over every target the latent writes
        return _top(pre + 0.5 * pre * (grads_flat @ W_flat.T).abs(), K)
    if rule == "mutual_choice":
        flat = torch.zeros(pre.numel(), dtype=torch.bool)
        flat[pre.flatten().topk(K * len(pre)).indices] = True
        return flat.view(pre.shape)
    caps = torch.full((F,), K * len(pre) // F)  # feature choice, uniform: latent i keeps its m_i best tokens
    caps[: K * len(pre) - int(caps.sum())] += 1
    mask = torch.zeros_like(pre, dtype=torch.bool)
    for i in range(F):
        mask[pre[:, i].topk(int(caps[i])).indices, i] = True
    return mask


def _reference_loss(clt, x, y, g, rule):
    """ŷ_j = b_dec[j] + Σ_{l ≤ j} z_l W_dec[l][:, j−l] (+ x_j W_skip[j]ᵀ); mean FVU over layers plus
    aux_coef · mean over layers of AuxK (dead latents of layer l fit the residual of layers l..L−1)."""
    fvu = lambda t, t_hat: (t - t_hat).pow(2).sum() / (t - t.mean(0)).pow(2).sum()  # noqa: E731
    zs, pres = [], []
    for src in range(L):
        pre = x[:, src] @ clt.W_enc[src].T + clt.b_enc[src]
        W_flat = clt.W_dec[src].reshape(F, -1)
        mask = _reference_mask(rule, pre.detach(), g[:, src:].reshape(B, -1), W_flat.detach())
        zs.append(torch.where(mask, pre.relu(), 0.0))
        pres.append(pre)
    y_hat = []
    for j in range(L):
        out = clt.b_dec[j] + sum(zs[src] @ clt.W_dec[src][:, j - src] for src in range(j + 1))
        if clt.cfg.skip:
            out = out + x[:, j] @ clt.W_skip[j].T
        y_hat.append(out)
    y_hat = torch.stack(y_hat, 1)
    recon = torch.stack([fvu(y[:, j], y_hat[:, j]) for j in range(L)]).mean()
    aux = []
    for src in range(L):
        dead = torch.arange(6)
        z_aux = torch.zeros(B, F, dtype=torch.float64)
        top = pres[src][:, dead].topk(5, dim=1).indices
        z_aux[:, :6] = torch.zeros(B, 6, dtype=torch.float64).scatter(1, top, 1.0) * pres[src][:, dead].relu()
        e = (y - y_hat)[:, src:].reshape(B, -1).detach()
        aux.append(fvu(e, z_aux @ clt.W_dec[src].reshape(F, -1)) * min(6 / 5, 1.0))
    return recon + clt.cfg.aux_coef * torch.stack(aux).mean(), recon


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("skip", [False, True])
def test_both_paths_equal_the_float64_reference_in_loss_and_gradients(rule, skip):
    x, y, g = _data()
    grads = g if rule == "gradient" else None
    got = {}
    for sparse in (False, True):
        clt = _clt(rule, skip)
        res = clt_losses(clt, x, y, grads, sparse=sparse)
        res.loss.backward()
        got[sparse] = (res, {n: p.grad.clone() for n, p in clt.named_parameters()})
    clt = _clt(rule, skip)
    want, want_recon = _reference_loss(clt, x, y, g, rule)
    want_grads = torch.autograd.grad(want, list(clt.parameters()))
    for res, grads_ in got.values():
        torch.testing.assert_close(res.loss, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res.fvu, want_recon, rtol=1e-12, atol=1e-12)
        assert float(res.aux.detach()) > 0
        for (name, _), w in zip(clt.named_parameters(), want_grads):
            torch.testing.assert_close(grads_[name], w, rtol=1e-10, atol=1e-12, msg=name)
    assert all(float(got[True][1][f"W_dec.{i}"].abs().sum()) > 0 for i in range(L))
    # every layer keeps k per token on average (total L0 = L·k before ReLU zeros)
    assert got[True][0].l0 <= L * K + 1e-9 and len(got[True][0].l0s) == L


def test_a_one_layer_clt_is_a_transcoder():
    x, y, _ = _data()
    clt = _clt("topk", True)
    cfg = SAEConfig(d_in=D, d_sae=F, k=K, transcoder=True, skip=True, d_out=D_OUT, k_aux=5)
    one = CrossLayerTranscoder(CLTConfig(n_layers=1, d_in=D, d_out=D_OUT, d_sae=F, k=K, skip=True, k_aux=5)).double()
    sae = SparseAutoencoder(cfg).double().train()
    with torch.no_grad():  # layer 2 of the three-layer CLT: only its own decoder block
        for t, src in ((one.W_enc[0], clt.W_enc[2]), (sae.W_enc, clt.W_enc[2]), (one.b_enc[0], clt.b_enc[2])):
            t.copy_(src)
        sae.b_enc.copy_(clt.b_enc[2])
        one.W_dec[0].copy_(clt.W_dec[2])
        sae.W_dec.copy_(clt.W_dec[2][:, 0])
        one.b_dec.copy_(clt.b_dec[2:])
        sae.b_dec.copy_(clt.b_dec[2])
        one.W_skip.copy_(clt.W_skip[2:])
        sae.W_skip.copy_(clt.W_skip[2])
    one.train().tokens_since_fired[:, :6] = 10**9
    sae.tokens_since_fired[:6] = 10**9
    a = clt_losses(one, x[:, 2:], y[:, 2:], sparse=True)
    b = sae_losses(sae, x[:, 2], None, sparse=True, y=y[:, 2])
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)
    one.eval()
    sae.eval()
    with torch.no_grad():
        torch.testing.assert_close(one(x[:, 2:]).y_hat[:, 0], sae(x[:, 2]).x_hat)


def test_bad_input_is_refused_by_name():
    with pytest.raises(FieldError, match="n_layers"):
        CLTConfig(n_layers=0, d_in=4, d_sae=8, k=2)
    with pytest.raises(FieldError, match="input_hooks") as e:
        CLTConfig(n_layers=2, d_in=4, d_sae=8, k=2, input_hooks=("blocks.0.ln2.hook_normalized",))
    assert e.value.field == "input_hooks"
    with pytest.raises(FieldError, match="increasing"):
        CLTConfig(n_layers=2, d_in=4, d_sae=8, k=2, target_hooks=("blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out"))
    with pytest.raises(FieldError) as e:
        CLTConfig(n_layers=2, d_in=4, d_sae=8, k=8)
    assert e.value.field == "k"
    clt = _clt("topk", True)
    x, y, g = _data()
    with pytest.raises(ValueError, match="x: expected"):
        clt(x[:, :2])
    with pytest.raises(ValueError, match="y: expected"):
        clt_losses(clt, x, y[:, :2])
    with pytest.raises(ValueError, match="grads: expected"):
        clt(x, g[:, :, :3])
    with pytest.raises(ValueError, match="needs grads"):
        clt_losses(_clt("gradient", False), x, y)
    with pytest.raises(ValueError, match="decode"):
        clt.decode(torch.zeros(2, L, F, dtype=torch.float64))
    store = ActivationStore(TensorSource(torch.randn(256, L * D), targets=torch.randn(256, D_OUT)), 64)
    with pytest.raises(ValueError, match="every layer's target"):
        train_clt(clt.cfg, SAETrainConfig(total_tokens=128, batch_size=64), store, progress=False)


# --- planted two-layer MLP with a cross-layer write ---------------------------------------------


def planted_two_layer(n, d=32, active=3.0, seed=0, draw=0):
    """Layer l's input x_l = Σ a_li e_li (sparse a, orthonormal e; layers independent); the
    planted CLT: y_0 = Σ_i ReLU(a_0i − t_0i) v_0i and y_1 = Σ_i ReLU(a_1i − t_1i) v_1i +
    Σ_i ReLU(a_0i − t_0i) u_i. Layer 1's output needs layer 0's features (u, the cross-layer
    write): no function of x_1 alone predicts that part."""
    gen = torch.Generator().manual_seed(seed)
    E = [torch.linalg.qr(torch.randn(d, d, generator=gen))[0] for _ in range(2)]
    V0, V1, U = (torch.nn.functional.normalize(torch.randn(d, d, generator=gen), dim=1) for _ in range(3))
    t = 0.1 + 0.2 * torch.rand(2, d, generator=gen)
    gen = torch.Generator().manual_seed(1_000 + draw)
    a = [
        torch.where(torch.rand(n, d, generator=gen) < active / d, 0.5 + torch.rand(n, d, generator=gen), 0.0)
        for _ in range(2)
    ]
    h0, h1 = (a[0] - t[0]).relu(), (a[1] - t[1]).relu()
    x = torch.stack([a[0] @ E[0], a[1] @ E[1]], 1)
    y = torch.stack([h0 @ V0, h1 @ V1 + 0.8 * h0 @ U], 1)
    return x, y, {"E0": E[0], "E1": E[1], "V0": V0, "V1": V1, "U": U}


def mcc(learned, true):
    """Mean |cosine| of the true directions with learned ones, matched one to one (Hungarian)."""
    a = torch.nn.functional.normalize(learned.double(), dim=1)
    b = torch.nn.functional.normalize(true.double(), dim=1)
    sim = (b @ a.T).abs().numpy()
    rows, cols = linear_sum_assignment(-sim)
    return float(sim[rows, cols].mean())


def _held_fvu(t, t_hat):
    return float((t - t_hat).pow(2).sum() / (t - t.mean(0)).pow(2).sum())


def test_planted_cross_layer_write_is_recovered():
    x, y, truth = planted_two_layer(40_000)
    store = ActivationStore(TensorSource(x.flatten(1), targets=y.flatten(1), chunk_size=20_000), 256, seed=0)
    cfg = CLTConfig(n_layers=2, d_in=32, d_sae=64, k=6, dead_tokens=10_000)
    train = SAETrainConfig(total_tokens=200 * 256, batch_size=256, lr=1e-2, warmup_steps=10, seed=0)
    clt = train_clt(cfg, train, store, progress=False)
    W0, W1 = clt.W_dec[0].detach(), clt.W_dec[1].detach()
    assert mcc(clt.W_enc[0].detach(), truth["E0"]) >= 0.9 and mcc(clt.W_enc[1].detach(), truth["E1"]) >= 0.9
    assert mcc(W0[:, 0], truth["V0"]) >= 0.9 and mcc(W1[:, 0], truth["V1"]) >= 0.9
    assert mcc(W0[:, 1], truth["U"]) >= 0.9  # layer 0's latents write u_i into layer 1's output
    hx, hy, _ = planted_two_layer(4000, draw=1)
    with torch.no_grad():
        y_hat = clt(hx).y_hat
    assert max(_held_fvu(hy[:, j], y_hat[:, j]) for j in range(2)) < 0.05
    # a per-layer transcoder on layer 1 cannot see layer 0's features: its best is the v_1 part alone
    with torch.no_grad():
        without_cross = clt.decode(torch.stack([torch.zeros(4000, 64), clt.encode(hx)[:, 1]], 1))[:, 1]
    assert _held_fvu(hy[:, 1], without_cross) > 0.25


# --- data, files, resumption -------------------------------------------------------------------


def test_every_layers_rows_from_one_pass(tiny_model):
    tokens = torch.randint(0, 257, (3, 12), generator=torch.Generator().manual_seed(0))
    ins, outs = mlp_hooks(range(2))
    x, y, g = capture_layers(tiny_model, tokens, ins, outs, with_grads=True)
    assert x.shape == (3, 12, 2, 32) and y.shape == g.shape == (3, 12, 2, 32)
    for layer in range(2):  # the one-target capture's gradient at a leaf is the same total derivative
        xl, yl, gl = capture_pair(tiny_model, tokens, ins[layer], outs[layer], with_grads=True)
        torch.testing.assert_close(x[:, :, layer], xl)
        torch.testing.assert_close(y[:, :, layer], yl)
        torch.testing.assert_close(g[:, :, layer], gl)
    x0, y0, none = capture_layers(tiny_model, tokens, ins, outs)
    assert none is None
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(y0, y)
    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))
    cfg = CLTStoreConfig(ins, outs, buffer_tokens=256, seq_len=16)
    src = CLTSource(tiny_model, stream, cfg, bos_token_id=256)
    batch = next(ActivationStore(src, 64, seed=1))
    layer1 = next(ActivationStore(LayerSource(src, 1, 2), 64, seed=1))
    torch.testing.assert_close(split_layers(batch.acts, 2)[:, 1], layer1.acts)
    torch.testing.assert_close(split_layers(batch.targets, 2)[:, 1], layer1.targets)
    # each row's layer-1 target is the model's MLP 1 of its layer-1 input
    torch.testing.assert_close(tiny_model.blocks[1].mlp(layer1.acts.unsqueeze(0))[0], layer1.targets)
    with pytest.raises(FieldError, match="target_hooks"):
        CLTStoreConfig(ins, outs[:1])


def test_resume_is_exact_and_files_round_trip(tmp_path):
    x, y, _ = planted_two_layer(4096, d=16)
    cfg = CLTConfig(n_layers=2, d_in=16, d_sae=32, k=4, selection="mutual_choice", skip=True, dead_tokens=512)
    train = SAETrainConfig(
        total_tokens=24 * 128, batch_size=128, lr=3e-3, warmup_steps=2, checkpoint_every=5, dtype="float64"
    )

    def store():
        return ActivationStore(TensorSource(x.flatten(1), targets=y.flatten(1), chunk_size=2048), 128, seed=3)

    straight = train_clt(cfg, train, store(), RunDir(tmp_path / "a"), progress=False)
    train_clt(cfg, train, store(), RunDir(tmp_path / "b"), stop_after=7, progress=False)
    resumed = train_clt(cfg, train, store(), RunDir(tmp_path / "b"), progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [m["step"] for m in RunDir(tmp_path / "b").metrics()] == [
        m["step"] for m in RunDir(tmp_path / "a").metrics()
    ]
    back = load_clt(tmp_path / "a")
    assert back.cfg == cfg and float(back.threshold.max()) > 0  # mutual choice learned its thresholds
    with torch.no_grad():
        torch.testing.assert_close(back(x[:50].double()).y_hat, straight(x[:50].double()).y_hat, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="different CLTConfig"):
        other = CLTConfig(n_layers=2, d_in=16, d_sae=32, k=3)
        train_clt(other, train, store(), RunDir(tmp_path / "b"), progress=False)
    with pytest.raises(CheckpointError, match="clt_config.json"):
        load_clt(tmp_path / "missing")
    save_clt(back, tmp_path / "c")
    (tmp_path / "c" / "clt.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_clt(tmp_path / "c")


# --- the spliced CE and the two-hop study's measures ---------------------------------------------


def test_splice_ce_replaces_every_layer_at_once(tiny_model):
    from workbench.sae.clt_eval import clt_output, splice_ce

    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(3))
    ins, outs = mlp_hooks(range(2))
    exact = (lambda j, xs: tiny_model.blocks[j].mlp(xs[j].unsqueeze(0))[0], lambda xs: 0.0)
    zero = (lambda j, xs: torch.zeros_like(xs[j]), lambda xs: 0.0)
    same = splice_ce(tiny_model, tokens, ins, outs, exact)
    assert abs(same.ce_spliced - same.ce_clean) < 1e-5 and abs(same.recovered - 1) < 1e-4
    assert abs(splice_ce(tiny_model, tokens, ins, outs, zero).recovered) < 1e-6

    # layer 1 reads what the replaced layer 0 wrote: zeros at layer 0 and layer 1's own MLP of its
    # spliced input is the model with layer 0's MLP output zeroed (past BOS)
    def half(j, xs):
        return torch.zeros_like(xs[0]) if j == 0 else tiny_model.blocks[1].mlp(xs[1].unsqueeze(0))[0]

    got = splice_ce(tiny_model, tokens, ins, outs, (half, lambda xs: 0.0))

    def zero0(act, hook):
        act = act.clone()
        act[:, 1:] = 0.0
        return act

    with torch.no_grad():
        want = tiny_model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(outs[0], zero0)])
    assert abs(got.ce_spliced - float(want)) < 1e-5 and abs(got.ce_spliced - got.ce_clean) > 1e-3
    # a CLT's layer outputs in the splice are its own forward's
    clt = _clt("mutual_choice", True).eval()
    with torch.no_grad():
        clt.threshold.fill_(0.2)
        x = torch.randn(20, L, D, dtype=torch.float64)
        out, l0 = clt_output(clt)
        for j in range(L):
            torch.testing.assert_close(out(j, list(x.unbind(1))[: j + 1]), clt(x).y_hat[:, j], rtol=1e-12, atol=1e-12)
        assert abs(l0(list(x.unbind(1))) - float((clt.encode(x) > 0).sum((1, 2)).double().mean())) < 1e-9


def test_two_hop_measures_on_the_planted_circuit_written_both_ways():
    from workbench.sae.clt_twohop import best_correlation, cross_layer_share, planted_clt, two_hop_data

    data = two_hop_data(3000)
    assert 0.08 < float((data.and_act > 0).float().mean()) < 0.16  # p_and² = 0.1225
    for one_hop in (False, True):
        clt = planted_clt(data, one_hop)
        with torch.no_grad():
            y_hat = clt(data.x).y_hat
            z = clt.encode(data.x)
        torch.testing.assert_close(y_hat, data.y, rtol=0, atol=1e-5)  # both are the model, exactly
        share = cross_layer_share(clt, data.x, data.directions["w"])
        chain = cross_layer_share(clt, data.x, data.directions["u"])
        assert (share, chain) == ((1.0, 1.0) if one_hop else (0.0, 0.0))
        r, where = best_correlation(z[:, 0 if one_hop else 1], data.and_act)
        assert r > 1 - 1e-6 and where == (20 if one_hop else 6)  # the AND latent, in the layer it lives in
        assert best_correlation(z[:, 1 if one_hop else 0], data.and_act)[0] < 0.9


def test_circuit_tracer_clt_layout_round_trip(tmp_path):
    import yaml
    from safetensors.torch import load_file

    from workbench.sae.clt_io import from_circuit_tracer_clt, to_circuit_tracer_clt

    ins, outs = mlp_hooks(range(L))
    cfg = CLTConfig(n_layers=L, d_in=D, d_sae=F, k=K, selection="feature_choice", input_hooks=ins, target_hooks=outs)
    clt = CrossLayerTranscoder(cfg).double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / 3)
        clt.threshold.copy_(0.3 * torch.rand(L, F, generator=gen, dtype=torch.float64))
    to_circuit_tracer_clt(clt, tmp_path / "ct")
    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert (config["model_kind"], config["feature_input_hook"], config["feature_output_hook"]) == (
        "cross_layer_transcoder",
        "ln2.hook_normalized",
        "hook_mlp_out",
    )
    x = torch.randn(30, L, D, dtype=torch.float64)
    # CrossLayerTranscoder: features_l = x_l W_enc_lᵀ + b_enc_l, JumpReLU f·(f > θ_l); layer j's
    # reconstruction Σ_{l ≤ j} acts_l W_dec_l[:, j − l] + b_dec_j
    enc = [load_file(str(tmp_path / "ct" / f"W_enc_{i}.safetensors")) for i in range(L)]
    dec = [load_file(str(tmp_path / "ct" / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(L)]
    assert [tuple(w.shape) for w in dec] == [(F, L - i, D) for i in range(L)]
    acts = []
    for i, e in enumerate(enc):
        f = torch.einsum("bd,fd->bf", x[:, i], e[f"W_enc_{i}"]) + e[f"b_enc_{i}"]
        acts.append(f * (f > e[f"threshold_{i}"]))
    theirs = torch.stack(
        [sum(acts[i] @ dec[i][:, j - i] for i in range(j + 1)) + enc[j][f"b_dec_{j}"] for j in range(L)], 1
    )
    back = from_circuit_tracer_clt(tmp_path / "ct")
    with torch.no_grad():
        torch.testing.assert_close(clt.eval()(x).y_hat, theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back(x).y_hat, theirs, rtol=1e-12, atol=1e-12)
    assert (back.cfg.input_hooks, back.cfg.selection) == (ins, "feature_choice")
    with pytest.raises(ValueError, match="top-k"):
        to_circuit_tracer_clt(
            CrossLayerTranscoder(CLTConfig(n_layers=L, d_in=D, d_sae=F, k=K, input_hooks=ins)), tmp_path / "t"
        )
    with pytest.raises(ValueError, match="input_hooks"):
        to_circuit_tracer_clt(
            CrossLayerTranscoder(CLTConfig(n_layers=L, d_in=D, d_sae=F, k=K, selection="mutual_choice")), tmp_path / "n"
        )
