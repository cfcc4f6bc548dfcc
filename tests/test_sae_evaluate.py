"""sae/evaluate.py against direct float64 computations on tiny random-init HookedTransformers:
reconstruction metrics, CE loss recovered and KL with the SAE spliced in, logit effects, and the
streamed feature table against a dense one (uneven chunks, a sub-sample, planted ties)."""

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.activations import ActivationBatch
from workbench.runs import atomic_save_tensors
from workbench.sae.config import SAEConfig
from workbench.sae.evaluate import (
    FeatureTable,
    feature_activations,
    feature_table,
    logit_effects,
    reconstruction_metrics,
    splice_metrics,
)
from workbench.sae.model import SparseAutoencoder

D, V, T = 16, 23, 10  # d_model, vocabulary, window length (BOS + 9)
HOOK = "blocks.0.hook_resid_post"


def _model(init: float = 0.4) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        n_ctx=T,
        d_vocab=V,
        act_fn="gelu",
        normalization_type="LN",
        initializer_range=init,
        dtype=torch.float64,
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    model.requires_grad_(False)
    return model


def _sae(d_sae: int = 48, k: int = 4, seed: int = 1, hook: str = HOOK) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=d_sae, k=k, hook_name=hook), seed=seed).double().eval()
    sae.requires_grad_(False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        sae.b_dec.copy_(0.1 * torch.randn(D, generator=gen, dtype=torch.float64))
        sae.b_enc.copy_(0.05 * torch.randn(d_sae, generator=gen, dtype=torch.float64))
    return sae


def _tokens(n: int = 7, vocab: int = V, seed: int = 0) -> torch.Tensor:
    toks = torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))
    toks[:, 0] = 0  # BOS
    return toks


# --- reconstruction ---------------------------------------------------------------------------------


def test_reconstruction_metrics_match_a_direct_float64_computation():
    sae = _sae(d_sae=40, k=3)
    with torch.no_grad():
        sae.b_enc[:5] = -1e3  # planted dead latents: never among the top k with a positive value
        sae.b_enc[5] = 1e3  # planted dense latent: on every token, with 2 of k left to the rest
    gen = torch.Generator().manual_seed(0)
    offset = 2.0 * torch.randn(D, generator=gen, dtype=torch.float64)  # a mean far from 0: FVU must centre
    x = offset + torch.randn(50, D, generator=gen, dtype=torch.float64)  # a mean far from 0: FVU must centre
    got = reconstruction_metrics(sae, [ActivationBatch(b, None) for b in x.split([7, 30, 13])])

    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(3, dim=1).indices, True)
        z = torch.where(keep, pre.clamp_min(0), 0.0)
        x_hat = z @ sae.W_dec + sae.b_dec
    fired = (z > 0).sum(0).double() / len(x)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert got["fvu"] == pytest.approx(fvu, rel=1e-10)
    assert got["explained_variance"] == pytest.approx(1 - fvu, rel=1e-10)
    assert float((x - x_hat).pow(2).sum() / x.pow(2).sum()) < 0.5 * fvu  # an uncentred denominator would fail
    l0 = (z > 0).sum(1)
    assert got["l0"] == pytest.approx(float(l0.double().mean()), rel=1e-12)
    assert got["l0_hist"] == torch.bincount(l0).tolist()
    assert got["dead_frac"] == float((fired == 0).double().mean()) and 5 / 40 <= got["dead_frac"] < 1
    assert got["dense_frac"] == float((fired > 0.1).double().mean()) and got["dense_frac"] >= 1 / 40
    assert got["log10_density"] == pytest.approx(fired.clamp_min(1e-10).log10().tolist(), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1).mean()
    assert got["cos_sim"] == pytest.approx(float(cos), rel=1e-10)
    assert got["l2_ratio"] == pytest.approx(float((x_hat.norm(dim=1) / x.norm(dim=1)).mean()), rel=1e-10)
    assert got["n_tokens"] == 50


def test_reconstruction_metrics_without_batches_is_an_error():
    with pytest.raises(ValueError, match="batches"):
        reconstruction_metrics(_sae(), [])


# --- splicing ---------------------------------------------------------------------------------------


def _sampled(model: HookedTransformer, n: int) -> torch.Tensor:
    """Windows the model itself writes (temperature 0.5), so the clean model predicts them well
    and ablating its residual stream costs loss: a random model on random tokens is worse than
    uniform, and zeroing can even help it."""
    gen = torch.Generator().manual_seed(5)
    toks = _tokens(n)[:, :2]
    with torch.no_grad():
        while toks.shape[1] < T:
            p = (model(toks)[:, -1] / 0.5).softmax(-1)
            toks = torch.cat([toks, torch.multinomial(p, 1, generator=gen)], 1)
    return toks


def _ce(model, tokens, hooks=()):
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    lp = logits.log_softmax(-1)
    return float(-lp[:, :-1].gather(-1, tokens[:, 1:, None]).mean()), lp


def _replace_after_bos(fn):
    def hook(act, hook):
        act = act.clone()
        act[:, 1:] = fn(act[:, 1:])
        return act

    return hook


def test_splice_metrics_match_a_hand_computation():
    model, sae = _model(), _sae()
    tokens = _sampled(model, 7)
    got = splice_metrics(model, sae, HOOK, tokens, batch_size=3)  # chunks of 3, 3, 1 windows

    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    mean = cache[HOOK][:, 1:].mean((0, 1))  # over every window's non-BOS tokens, not per chunk

    def sae_out(a):
        pre = (a - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, pre.topk(sae.cfg.k, dim=-1).indices, True)
        return torch.where(keep, pre.clamp_min(0), 0.0) @ sae.W_dec + sae.b_dec

    clean, lp = _ce(model, tokens)
    ce_sae, lq = _ce(model, tokens, [(HOOK, _replace_after_bos(sae_out))])
    zero, _ = _ce(model, tokens, [(HOOK, _replace_after_bos(torch.zeros_like))])
    mean_abl, _ = _ce(model, tokens, [(HOOK, _replace_after_bos(lambda a: mean.expand_as(a)))])
    assert zero - clean > 0.05 and mean_abl - clean > 0.01  # the ablations matter, so the ratios are sharp
    for key, want in (
        ("ce_clean", clean),
        ("ce_sae", ce_sae),
        ("ce_zero_ablation", zero),
        ("ce_mean_ablation", mean_abl),
    ):
        assert got[key] == pytest.approx(want, rel=1e-10), key
    assert got["ce_loss_recovered"] == pytest.approx((zero - ce_sae) / (zero - clean), rel=1e-9)
    assert got["ce_loss_recovered_vs_mean"] == pytest.approx((mean_abl - ce_sae) / (mean_abl - clean), rel=1e-9)
    # KL(clean || spliced) per position, averaged over the positions that predict a token, BOS left out
    kl = (lp.exp() * (lp - lq)).sum(-1)[:, 1:-1]
    assert got["kl_sae"] == pytest.approx(float(kl.mean()), rel=1e-9)
    assert float(kl.mean()) > 1e-3


def test_ce_recovered_is_one_for_a_perfect_sae_and_zero_for_an_empty_one():
    model = _model()
    tokens = _sampled(model, 5)
    # latents ±e_i with k = d_in: ReLU keeps exactly one of each pair, so x̂ = relu(x) − relu(−x) = x
    perfect = SparseAutoencoder(SAEConfig(d_in=D, d_sae=2 * D, k=D, hook_name=HOOK)).double().eval()
    eye = torch.eye(D, dtype=torch.float64)
    with torch.no_grad():
        perfect.W_enc.copy_(torch.cat([eye, -eye]))
        perfect.W_dec.copy_(torch.cat([eye, -eye]))
        perfect.b_enc.zero_()
        perfect.b_dec.zero_()
    got = splice_metrics(model, perfect, HOOK, tokens)
    assert got["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-9)
    assert got["ce_sae"] == pytest.approx(got["ce_clean"], abs=1e-10) and got["kl_sae"] == pytest.approx(0, abs=1e-10)
    empty = _sae()
    with torch.no_grad():
        empty.W_dec.zero_()
        empty.b_dec.zero_()
    got = splice_metrics(model, empty, HOOK, tokens)
    assert got["ce_sae"] == pytest.approx(got["ce_zero_ablation"], rel=1e-12)
    assert got["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert got["ce_loss_recovered_vs_mean"] < 0  # zeroing is worse than the mean


def test_logit_effects_are_the_decoder_through_ln_scale_and_unembedding():
    model, sae = _model(), _sae()
    with torch.no_grad():
        model.ln_final.w.copy_(torch.linspace(0.5, 2.0, D, dtype=torch.float64))
    top, top_v, bottom, bottom_v = logit_effects(model, sae, m=4)
    direct = torch.stack([(sae.W_dec[f] * model.ln_final.w) @ model.W_U for f in range(sae.cfg.d_sae)])
    for f in (0, 7, 47):
        order = direct[f].argsort(descending=True)
        assert top[f].tolist() == order[:4].tolist() and bottom[f].tolist() == order.flip(0)[:4].tolist()
        torch.testing.assert_close(top_v[f], direct[f, order[:4]])
        torch.testing.assert_close(bottom_v[f], direct[f, order.flip(0)[:4]])


# --- hook_z: one row per token, the heads concatenated ------------------------------------------------

Z_HOOK = "blocks.1.attn.hook_z"  # 2 heads x d_head 8 = 16 = D wide, so _sae fits it


def _topk_out(sae, a):
    pre = (a - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, pre.topk(sae.cfg.k, dim=-1).indices, True)
    return torch.where(keep, pre.clamp_min(0), 0.0)


def test_hook_z_splice_reads_and_writes_one_row_per_token():
    """The spliced reconstruction at hook_z is the SAE on each token's heads side by side, reshaped
    back to [batch, pos, n_heads, d_head]; an SAE over pooled heads (d_in = d_head) is refused."""
    model, sae = _model(), _sae(hook=Z_HOOK)
    tokens = _sampled(model, 5)

    def sae_z(a):  # a: [b, pos, heads, d_head]
        flat = a.flatten(-2)
        return (_topk_out(sae, flat) @ sae.W_dec + sae.b_dec).reshape(a.shape)

    _, cache = model.run_with_cache(tokens, names_filter=Z_HOOK)
    mean = cache[Z_HOOK][:, 1:].mean((0, 1))
    got = splice_metrics(model, sae, Z_HOOK, tokens, batch_size=2)
    ce_sae, _ = _ce(model, tokens, [(Z_HOOK, _replace_after_bos(sae_z))])
    mean_abl, _ = _ce(model, tokens, [(Z_HOOK, _replace_after_bos(lambda a: mean.expand_as(a)))])
    assert got["ce_sae"] == pytest.approx(ce_sae, rel=1e-10)
    assert got["ce_mean_ablation"] == pytest.approx(mean_abl, rel=1e-10)
    z = feature_activations(model, sae, Z_HOOK, tokens)
    want = _topk_out(sae, cache[Z_HOOK].flatten(-2))
    torch.testing.assert_close(z[:, 1:], want[:, 1:])
    pooled = SparseAutoencoder(SAEConfig(d_in=8, d_sae=12, k=2, hook_name=Z_HOOK)).double()
    with pytest.raises(ValueError, match="d_in=8 does not match the width 16.*one row per attention head"):
        splice_metrics(model, pooled, Z_HOOK, tokens)


def test_hook_z_logit_effects_go_through_each_heads_W_O():
    model, sae = _model(), _sae(hook=Z_HOOK)
    top, top_v, _, _ = logit_effects(model, sae, m=3)
    W_O = model.blocks[1].attn.W_O  # [heads, d_head, d_model]
    for f in (0, 9):
        resid = sum(sae.W_dec[f, 8 * h : 8 * (h + 1)] @ W_O[h] for h in range(2))
        direct = (resid * model.ln_final.w) @ model.W_U
        assert top[f].tolist() == direct.argsort(descending=True)[:3].tolist()
        torch.testing.assert_close(top_v[f], direct.sort(descending=True).values[:3])


# --- the feature table against a dense computation ----------------------------------------------------


def _dense_table(z, n_top, before, after, bins, n_corr, sample_windows):
    """The table straight from every activation at once: sorted lists and an F x F correlation."""
    n_seq, T_, Fn = z.shape
    C = min(before + 1 + after, T_)
    flat = z.reshape(-1, Fn)
    n_tok = n_seq * (T_ - 1)
    out = {
        "density": (flat > 0).sum(0).double() / n_tok,
        "hist_max": flat.max(0).values,
        "top": [],
        "hist": torch.zeros(Fn, bins, dtype=torch.long),
    }
    out["mean_act"] = flat.double().sum(0) / (flat > 0).sum(0).clamp_min(1)
    for f in range(Fn):
        hits = sorted((-float(flat[g, f]), g) for g in range(len(flat)) if flat[g, f] > 0)[:n_top]
        rows = []
        for negv, g in hits:
            s, p = divmod(g, T_)
            start = min(max(p - before, 0), T_ - C)
            rows.append((-negv, s, p, start, z[s, start : start + C, f]))
        out["top"].append(rows)
        for g in range(len(flat)):
            a = float(flat[g, f])
            if a > 0:
                out["hist"][f, min(math.floor(a * bins / float(out["hist_max"][f])), bins - 1)] += 1
    x = z[:sample_windows, 1:].reshape(-1, Fn).double()
    xc = x - x.mean(0)
    std = xc.pow(2).mean(0).sqrt()
    r = (xc.T @ xc / len(x)) / (std[:, None] * std[None, :])
    together = (x > 0).double().T @ (x > 0).double()
    ok = (together > 0) & (std[:, None] > 0) & (std[None, :] > 0) & ~torch.eye(Fn, dtype=torch.bool)
    out["r"], out["together"], out["ok"], out["n_sample"] = r, together, ok, len(x)
    return out


def _assert_matches(table: FeatureTable, ref: dict, n_top: int, n_corr: int):
    Fn = len(table.density)
    torch.testing.assert_close(table.density.double(), ref["density"], rtol=1e-6, atol=0)
    torch.testing.assert_close(table.mean_act.double(), ref["mean_act"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(table.hist_max, ref["hist_max"])
    assert torch.equal(table.hist_counts, ref["hist"])
    for f in range(Fn):
        rows = ref["top"][f]
        assert table.top_seq[f, : len(rows)].tolist() == [s for _, s, _, _, _ in rows], f
        assert table.top_pos[f, : len(rows)].tolist() == [p for _, _, p, _, _ in rows], f
        assert table.context_start[f, : len(rows)].tolist() == [st for _, _, _, st, _ in rows], f
        torch.testing.assert_close(table.top_values[f, : len(rows)], torch.tensor([v for v, *_ in rows]))
        for j, row in enumerate(rows):
            torch.testing.assert_close(table.context_acts[f, j], row[4])
        # empty slots say so explicitly
        assert (table.top_values[f, len(rows) :] == 0).all() and (table.top_seq[f, len(rows) :] == -1).all()
        assert (table.context_start[f, len(rows) :] == -1).all() and (table.context_acts[f, len(rows) :] == 0).all()
        # correlations: the highest r among partners firing together with f in the sample
        cand = ref["r"][f][ref["ok"][f]]
        n_found = min(n_corr, len(cand))
        want = cand.sort(descending=True).values[:n_found]
        got_idx = table.corr_idx[f, :n_found]
        torch.testing.assert_close(table.corr_values[f, :n_found].double(), want, rtol=1e-5, atol=1e-6)
        # whichever partner a tie picked, it has the reported r and co-fire count
        torch.testing.assert_close(ref["r"][f, got_idx], table.corr_values[f, :n_found].double(), rtol=1e-5, atol=1e-6)
        assert table.corr_cofires[f, :n_found].tolist() == ref["together"][f, got_idx].long().tolist()
        assert (table.corr_idx[f, n_found:] == -1).all() and table.corr_values[f, n_found:].isnan().all()
    assert int(table.corr_tokens) == ref["n_sample"]


@pytest.mark.parametrize("batch_size, corr_tokens", [(7, 10**6), (3, 10**6), (2, 27), (1, 9)])
def test_streamed_feature_table_equals_the_dense_one(batch_size, corr_tokens):
    """One chunk, chunks of 3 windows (7 = 3 + 3 + 1), of 2 with a 3-window correlation sample
    (histograms from a second pass), and of 1 with a 1-window sample."""
    model, sae, tokens = _model(), _sae(d_sae=48, k=4), _tokens(7)
    n_top, before, after, bins, n_corr = 5, 3, 2, 7, 4
    table = feature_table(
        model,
        sae,
        HOOK,
        tokens,
        n_top=n_top,
        context=(before, after),
        bins=bins,
        n_corr=n_corr,
        batch_size=batch_size,
        corr_tokens=corr_tokens,
        corr_block_elements=48 * 5,
    )
    z = feature_activations(model, sae, HOOK, tokens).float()
    sample = min(7, corr_tokens // (T - 1))
    ref = _dense_table(z, n_top, before, after, bins, n_corr, sample)
    assert (ref["density"] > 0).sum() > 20 and max(len(r) for r in ref["top"]) == n_top  # slots fill and empty
    _assert_matches(table, ref, n_top, n_corr)


def test_ties_keep_token_order_across_chunks():
    """Integer embeddings and encoder weights read at hook_embed: a token's activation is the same
    exact number wherever it occurs, so top-n lists are full of ties across windows and chunks."""
    model = _model()
    gen = torch.Generator().manual_seed(3)
    hook = "hook_embed"
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=12, k=3, hook_name=hook)).double().eval()
    with torch.no_grad():
        model.embed.W_E.copy_(torch.randint(-2, 3, (V, D), generator=gen).double())
        sae.W_enc.copy_(torch.randint(-1, 2, (12, D), generator=gen).double())
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    tokens = _tokens(9, vocab=5, seed=4)  # 5 distinct tokens over 81 positions
    z = feature_activations(model, sae, hook, tokens).float()
    assert torch.equal(z, z.round())  # exact integers: no rounding can break a tie
    ref = _dense_table(z, 6, 4, 1, 5, 3, 9)
    tied = sum(len(r) > 1 and r[0][0] == r[-1][0] for r in ref["top"])
    assert tied >= 3  # several features whose whole top list is one tied value
    for batch_size in (9, 4, 2):
        table = feature_table(
            model, sae, hook, tokens, n_top=6, context=(4, 1), bins=5, n_corr=3, batch_size=batch_size
        )
        _assert_matches(table, ref, 6, 3)


def test_chunk_size_follows_the_element_budget():
    """chunk_elements below one window's activations still processes one window at a time."""
    model, sae, tokens = _model(), _sae(d_sae=48, k=4), _tokens(5)
    a = feature_table(model, sae, HOOK, tokens, chunk_elements=1)
    b = feature_table(model, sae, HOOK, tokens)
    for k in FeatureTable._fields:
        torch.testing.assert_close(getattr(a, k), getattr(b, k), equal_nan=True, msg=k)


def test_feature_table_rejects_bad_arguments():
    model, sae = _model(), _sae()
    with pytest.raises(ValueError, match="tokens"):
        feature_table(model, sae, HOOK, torch.zeros(T, dtype=torch.long))
    with pytest.raises(ValueError, match="n_top"):
        feature_table(model, sae, HOOK, _tokens(2), n_top=0)
    with pytest.raises(ValueError, match=r"context\[0\]"):
        feature_table(model, sae, HOOK, _tokens(2), context=(-1, 2))
    with pytest.raises(KeyError):
        feature_table(model, sae, "blocks.9.hook_resid_post", _tokens(2))


# --- the saved file ----------------------------------------------------------------------------------


def test_feature_table_round_trips_through_its_file(tmp_path):
    model, sae, tokens = _model(), _sae(), _tokens(4)
    table = feature_table(model, sae, HOOK, tokens, n_corr=60)  # more partners than exist: NaN slots
    assert table.corr_values.isnan().any()
    table.save(tmp_path / "features.safetensors")
    back = FeatureTable.load(tmp_path / "features.safetensors")
    for k in FeatureTable._fields:
        torch.testing.assert_close(getattr(back, k), getattr(table, k), equal_nan=True, rtol=0, atol=0, msg=k)


def test_version_one_files_load_with_explicit_markers(tmp_path):
    old = {
        "tokens": _tokens(2),
        "density": torch.tensor([0.5, 0.0]),
        "mean_act": torch.tensor([1.0, 0.0]),
        "top_values": torch.tensor([[2.0, 0.0], [0.0, 0.0]]),
        "top_seq": torch.zeros(2, 2, dtype=torch.long),
        "top_pos": torch.tensor([[3, 0], [0, 0]]),
        "context_acts": torch.zeros(2, 2, 4),
        "context_start": torch.tensor([[1, 0], [0, 0]]),
        "hist_counts": torch.zeros(2, 3, dtype=torch.long),
        "hist_max": torch.tensor([2.0, 0.0]),
        "logit_top": torch.zeros(2, 1, dtype=torch.long),
        "logit_top_values": torch.zeros(2, 1),
        "logit_bottom": torch.zeros(2, 1, dtype=torch.long),
        "logit_bottom_values": torch.zeros(2, 1),
        "corr_idx": torch.tensor([[1], [0]]),
        "corr_values": torch.tensor([[0.25], [-1.0]]),
    }  # version 1 wrote "no correlation" as -1
    path = tmp_path / "features.safetensors"
    atomic_save_tensors(path, old, metadata={"format": "workbench-feature-table"})
    t = FeatureTable.load(path)
    assert t.corr_idx.tolist() == [[1], [-1]] and t.corr_values[0, 0] == 0.25 and t.corr_values[1, 0].isnan()
    assert t.top_seq.tolist() == [[0, -1], [-1, -1]] and t.context_start.tolist() == [[1, -1], [-1, -1]]
    assert int(t.corr_tokens) == -1 and (t.corr_cofires == -1).all()


def test_unreadable_feature_table_files_name_the_file(tmp_path):
    path = tmp_path / "future.safetensors"
    atomic_save_tensors(path, {"x": torch.zeros(1)}, metadata={"format": "workbench-feature-table", "version": "9"})
    with pytest.raises(ValueError, match=r"future\.safetensors.*version 9"):
        FeatureTable.load(path)
    other = tmp_path / "sae.safetensors"
    atomic_save_tensors(other, {"W_enc": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"sae\.safetensors is not a feature table"):
        FeatureTable.load(other)


def test_correlation_figure_skips_missing_partners():
    from workbench.figures.sae import correlated_features

    model, sae, tokens = _model(), _sae(), _tokens(4)
    table = feature_table(model, sae, HOOK, tokens, n_corr=60)
    f = int(table.density.argmax())
    fig = correlated_features(table, f)
    n_found = int((table.corr_idx[f] >= 0).sum())
    assert len(fig.data[0].x) == n_found and None not in fig.data[0].y
    assert f"{int(table.corr_tokens):,} tokens" in fig.layout.title.text
    alone = table._replace(
        corr_idx=torch.full_like(table.corr_idx, -1), corr_values=torch.full_like(table.corr_values, float("nan"))
    )
    assert "no other feature" in correlated_features(alone, f).layout.annotations[0].text
