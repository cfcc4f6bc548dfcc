"""Attention-output SAEs (workbench/sae/attention.py): DFA terms against the SAE's own pre-activation in
float64 (multi-head and grouped-query attention), head shares on a planted decoder, and planted truth:
a hand-set model with one induction head among 8 (its copy latents must sit on that head) and the
default model's layer-1 hook_z on [BOS, r, r] contexts (DFA argmax on the known source)."""

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.handset_attention import BOS, INDUCTION, N_HEADS, handset_attention_model, random_contexts
from workbench.activations import TensorSource, capture
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.attention import (
    AttentionTable,
    CopySAEConfig,
    attention_inputs,
    attention_table,
    copy_contexts,
    copy_source_check,
    copy_token_range,
    dfa,
    expand_kv,
    head_shares,
    latents_through_head,
    train_copy_sae,
    z_layer,
)
from workbench.sae.evaluate import FeatureTable

Z = "blocks.1.attn.hook_z"


def _model(n_kv: int | None) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=24,
        n_heads=4,
        d_head=6,
        n_key_value_heads=n_kv,
        d_mlp=32,
        n_ctx=12,
        d_vocab=19,
        act_fn="gelu",
        normalization_type="LN",
        initializer_range=0.5,
        dtype=torch.float64,
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # non-zero value biases: they are part of v, so of the DFA terms
        model.blocks[1].attn.b_V.normal_(generator=torch.Generator().manual_seed(3))
    return model


def _sae(d_in: int, F: int = 30) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=F, k=5, hook_name=Z), seed=2).double().eval()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=gen, dtype=torch.float64))
        sae.b_enc.copy_(torch.randn(F, generator=gen, dtype=torch.float64))
    return sae


@pytest.mark.parametrize("n_kv", [None, 2])
def test_dfa_terms_sum_exactly_to_the_pre_activation(n_kv):
    """Σ_{h, src} A[h, dest, src] (W_enc[f, h]·v[src, h]) + b_enc − W_enc·b_dec equals the SAE's
    pre-activation on the token's hook_z row, in float64; under GQA query head h reads kv head h // 2."""
    model, sae = _model(n_kv), _sae(24)
    tokens = torch.randint(0, 19, (3, 12), generator=torch.Generator().manual_seed(0))
    inputs = attention_inputs(model, tokens, 1)
    seq, dest = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 11, 5, 0, 7])
    latents = torch.tensor([0, 3, 17, 29])
    got = dfa(sae, inputs, seq, dest, latents)
    x = capture(model, tokens, Z)[0][seq, dest]  # [n, 24]: the SAE's input rows
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    torch.testing.assert_close(got.pre, pre[:, latents], rtol=0, atol=1e-12)
    torch.testing.assert_close(got.per_head.sum((2, 3)) + got.bias, pre[:, latents], rtol=0, atol=1e-12)
    torch.testing.assert_close(got.by_source.sum(-1), got.by_head.sum(-1), rtol=0, atol=1e-12)
    assert all((got.per_head[i, :, :, d + 1 :] == 0).all() for i, d in enumerate(dest.tolist()))  # causal
    # one term by hand, reading the raw (unexpanded) values
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern"])
    v_raw, A = cache["blocks.1.attn.hook_v"], cache["blocks.1.attn.hook_pattern"]
    group = 4 // (n_kv or 4)
    i, j, h, s = 4, 2, 3, 6  # row (seq 2, dest 7), latent 17, query head 3, source 6
    w = sae.W_enc[17, 6 * h : 6 * (h + 1)]
    want = A[2, h, 7, s] * (w @ v_raw[2, s, h // group])
    torch.testing.assert_close(got.per_head[i, j, h, s], want, rtol=0, atol=1e-13)


def test_expand_kv_and_bad_inputs():
    v = torch.arange(6.0).view(1, 3, 2, 1)  # 3 sources, kv heads 0 and 1
    assert expand_kv(v, 4)[0, 0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # heads 0, 1 -> kv 0; 2, 3 -> kv 1
    with pytest.raises(ValueError, match="n_heads=3 is not a multiple"):
        expand_kv(v, 3)
    with pytest.raises(ValueError, match="blocks.L.attn.hook_z"):
        z_layer("blocks.1.hook_resid_post")
    assert z_layer("blocks.12.attn.hook_z") == 12
    inputs = attention_inputs(_model(None), torch.zeros(1, 4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="d_in=12 is not n_heads·d_head"):
        dfa(_sae(12), inputs, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))


def test_head_shares_split_the_squared_decoder_norm_by_head():
    sae = _sae(24, F=6)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[0, 0:6] = 3.0 / 6**0.5  # all on head 0
        sae.W_dec[1, 6:12] = 1.0 / 6**0.5  # norm 1 on head 1 ...
        sae.W_dec[1, 18:24] = 2.0 / 6**0.5  # ... norm 2 on head 3: shares 1/5, 4/5
    shares = head_shares(sae, 4)
    torch.testing.assert_close(shares[:2], torch.tensor([[1, 0, 0, 0], [0, 0.2, 0, 0.8]], dtype=torch.float64))
    assert shares[2].tolist() == [0, 0, 0, 0]  # a zero row has no shares
    through = latents_through_head(shares, 3, min_share=0.5)
    assert through.latents.tolist() == [1] and through.shares.tolist() == pytest.approx([0.8])
    assert latents_through_head(shares, 0).latents.tolist() == [0]
    with pytest.raises(ValueError, match="n_heads=5 does not divide"):
        head_shares(sae, 5)


def test_copy_contexts_plant_distinct_segments():
    ctx = copy_contexts(5, 7, (10, 30), bos=0, seed=1)
    assert ctx.tokens.shape == (5, 15) and (ctx.tokens[:, 0] == 0).all()
    seg = ctx.tokens[:, 1:8]
    assert torch.equal(seg, ctx.tokens[:, 8:]) and all(len(set(r.tolist())) == 7 for r in seg)
    dest = ctx.copy_positions
    assert dest.tolist() == list(range(8, 15))
    # the source of a copy step holds the token that follows the current token's earlier occurrence
    src = ctx.source(dest)
    for row in ctx.tokens:
        for d, s in zip(dest.tolist(), src.tolist()):
            earlier = row[1:d].tolist().index(int(row[d])) + 1
            assert s == earlier + 1
    with pytest.raises(ValueError, match="segment=25"):
        copy_contexts(1, 25, (10, 30), bos=0)


def _handset_sae(model) -> SparseAutoencoder:
    ctx = copy_contexts(1000, 15, (0, BOS), BOS, seed=1)
    rows = [
        capture(model, t, Z)[0][:, 1:].flatten(0, 1)
        for t in torch.cat([ctx.tokens, random_contexts(1000, 31, seed=2)]).split(250)
    ]
    rows = torch.cat(rows).float()
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    from workbench.activations import ActivationStore

    store = ActivationStore(TensorSource(rows), 1024, seed=0)
    cfg = SAEConfig(d_in=rows.shape[1], d_sae=1024, k=6, hook_name=Z)
    return train_sae(cfg, SAETrainConfig(total_tokens=1_000_000, batch_size=1024, lr=4e-3), store, progress=False)


def test_handset_copy_latents_sit_on_the_one_induction_head():
    """One induction head (5) among 8 heads that all write varying tokens: the latents that fire on
    copy steps put >= 0.8 of their squared decoder norm on head 5 (a flattening that interleaves
    the heads, or shares over the wrong axis, spreads them), and their DFA finds the planted source."""
    model = handset_attention_model()
    sae = _handset_sae(model).double().eval()
    test = copy_contexts(200, 15, (0, BOS), BOS, seed=9)
    check = copy_source_check(model, sae, test)
    shares = head_shares(sae, N_HEADS)[check.latents]
    assert len(check.latents) >= 20  # most of the 39 copyable tokens have a copy latent
    assert shares[:, INDUCTION].min() >= 0.8, shares[:, INDUCTION]
    assert check.rate >= 0.9, (check.rate, check.per_latent_hits)
    through = latents_through_head(head_shares(sae, N_HEADS), INDUCTION, min_share=0.8)
    assert set(check.latents.tolist()) <= set(through.latents.tolist())


def test_default_model_copy_latents_find_the_planted_source(default_models):
    """The default's layer-1 hook_z SAE (400k tokens, half [BOS, r, r] contexts): on held-out planted
    contexts its copy-step latents put their DFA argmax on the token after the earlier occurrence in
    at least 90% of their firings (benchmarks/attention_sae.py prints the figure)."""
    from workbench.corpus import ByteTokenizer, corpus_stream, python_docs_corpus

    model, tok = default_models[0], ByteTokenizer()
    cfg = CopySAEConfig()
    sae = train_copy_sae(model, corpus_stream(python_docs_corpus(), tok, "train", 128), tok.bos_token_id, cfg)
    ctx = copy_contexts(200, cfg.segment, copy_token_range(model, tok.bos_token_id, cfg), tok.bos_token_id, seed=99)
    check = copy_source_check(model, sae, ctx)
    assert len(check.latents) >= 10 and check.firings >= 1000
    assert check.rate >= 0.9, (check.rate, check.per_latent_hits)


def test_attention_table_terms_add_up_to_each_top_activation():
    """The saved DFA of each top context: context terms + terms before the context + bias equal the
    latent's pre-activation there, which is the table's top activation (a TopK latent fires with its
    pre-activation); each row equals `dfa` at that destination."""
    from workbench.sae.evaluate import feature_table

    model, sae = _model(2), _sae(24)
    tokens = torch.randint(0, 19, (6, 12), generator=torch.Generator().manual_seed(5))
    table = feature_table(model, sae, Z, tokens, n_top=3, context=(4, 1), n_corr=2)
    att = attention_table(model, sae, table, batch_size=4)  # windows in two forward passes
    assert att.dfa.shape == (30, 3, 4, 6) and att.shares.shape == (30, 4)
    full = (att.dfa.sum((2, 3)) + att.dfa_rest + att.bias[:, None]).double()
    filled = table.top_seq >= 0
    assert filled.sum() > 40 and (table.context_start[filled] > 0).any()  # some context starts after 0
    torch.testing.assert_close(full[filled], table.top_values[filled].double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(att.pre[filled], table.top_values[filled], rtol=1e-5, atol=1e-5)
    f, j = filled.nonzero()[7].tolist()
    seq, pos, start = int(table.top_seq[f, j]), int(table.top_pos[f, j]), int(table.context_start[f, j])
    one = dfa(sae, attention_inputs(model, tokens, 1), torch.tensor([seq]), torch.tensor([pos]), torch.tensor([f]))
    torch.testing.assert_close(att.dfa[f, j], one.per_head[0, 0, :, start : start + 6].float())
    assert not att.dfa[~filled].any()


class ZRun(NamedTuple):
    root: Path  # a runs folder holding the one run
    name: str
    table: FeatureTable
    att: AttentionTable
    status: dict  # the evaluation's BuildStatus snapshot


@pytest.fixture(scope="module")
def zrun(tmp_path_factory) -> ZRun:
    """An evaluated hook_z SAE run on the tiny model (a run folder a RunStore lists: config.json,
    sae.safetensors, results, feature and attention tables, usefulness.json), made once per module."""
    from tests.conftest import TINY_KW
    from workbench.corpus import ByteTokenizer
    from workbench.models import ModelConfig, new_model
    from workbench.runs import ATTENTION_FILE, FEATURES_FILE, RunDir
    from workbench.sae.io import save_sae
    from workbench.sae.run_eval import evaluate_sae
    from workbench.viewer.build_status import BuildStatus

    model = new_model(ModelConfig(**TINY_KW), seed=0).eval()
    root = tmp_path_factory.mktemp("zruns")
    run = RunDir(root / "z<1>")
    run.write_config({"hook_name": Z}, kind="sae")
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=24, k=3, hook_name=Z, model_name="tiny"), seed=3).eval()
    save_sae(sae, run.path)
    tokens = torch.randint(32, 127, (4, 12), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 256
    status = BuildStatus()
    evaluate_sae(run.path, model, sae, ByteTokenizer(), tokens, status=status, progress=False)
    table = FeatureTable.load(run.file(FEATURES_FILE))
    return ZRun(root, run.name, table, AttentionTable.load(run.file(ATTENTION_FILE)), status.snapshot())


def test_hook_z_run_evaluation_writes_the_attention_table_and_probes(zrun, tmp_path):
    from workbench.runs import FEATURES_FILE, RESULTS_FILE
    from workbench.sae.saebench_json import read_run_evals

    assert (zrun.root / zrun.name / RESULTS_FILE).exists()
    table, att = zrun.table, zrun.att
    filled = table.top_seq >= 0
    torch.testing.assert_close(att.pre[filled], table.top_values[filled], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(att.shares.sum(1), torch.ones(24))
    states = {s["name"]: s["state"] for s in zrun.status["stages"]}
    assert states["head attribution"] == states["usefulness"] == "done"  # sparse probing reads hook_z rows too
    evals = read_run_evals(zrun.root / zrun.name)
    assert evals is not None and evals["sparse_probing"]["tasks"]
    (tmp_path / "junk.safetensors").write_bytes((zrun.root / zrun.name / FEATURES_FILE).read_bytes())
    with pytest.raises(ValueError, match="not an attention table"):
        AttentionTable.load(tmp_path / "junk.safetensors")


# --- figures and the viewer's pieces ------------------------------------------------------------------


def test_figures_show_the_shares_and_the_dfa_per_head():
    from workbench.figures.attention_sae import dfa_strip, head_latents_bar, head_shares_bar

    fig = head_shares_bar([0.1, 0.6, 0.3], latent=4, layer=1, highlight=2)
    bar = fig.data[0]
    assert list(bar.x) == ["L1H0", "L1H1", "L1H2"] and list(bar.y) == [0.1, 0.6, 0.3]
    assert bar.marker.color[2] != bar.marker.color[0]
    assert "zero decoder row" in head_shares_bar([0.0, 0.0], 3, 1).layout.annotations[0].text
    by_head = [[0.5, -0.25, 0.0], [0.25, 1.0, 0.0]]
    strip = dfa_strip(["<a href='x'>", "b", "c"], by_head, dest=1, latent=7, layer=1, value=1.5, rest=0.1, bias=-0.2)
    heat = strip.data[0]
    assert list(heat.y) == ["L1H1", "L1H0", "all heads"]  # drawn bottom-up: the sum on top
    assert [list(r) for r in heat.z] == [[0.25, 1.0, 0.0], [0.5, -0.25, 0.0], [0.75, 0.75, 0.0]]
    assert heat.zmin == -1.0 and heat.zmax == 1.0  # symmetric: 0 is white
    assert "<a" not in heat.x[0] and "&lt;a" in heat.x[0]
    assert strip.layout.shapes[0].x0 == 0.5 and strip.layout.shapes[0].x1 == 1.5  # the destination framed
    with pytest.raises(ValueError, match=r"by_head: expected \[n_heads\]\[3\]"):
        dfa_strip(["a", "b", "c"], [[1.0, 2.0]], dest=0, latent=0, layer=0)
    bars = head_latents_bar([5, 2], [0.9, 0.7], layer=1, head=3, run="<b>run</b>")
    assert list(bars.data[0].y) == ["latent 2", "latent 5"] and "<b>" not in bars.layout.title.text


def test_latent_heads_section_draws_the_saved_dfa(zrun):
    from workbench.corpus import ByteTokenizer
    from workbench.viewer.attention_sae import latent_heads_section, load_attention_table

    table, att = zrun.table, zrun.att
    assert load_attention_table(zrun.root / zrun.name, "blocks.1.hook_resid_post") is None  # other hooks have none
    f = int(table.top_values[:, 0].argmax())
    sec = latent_heads_section(att, table, f, ByteTokenizer(), "blocks.1.attn.hook_z", n_contexts=2)
    assert set(sec.figures) == {"feat-heads", "feat-dfa-0", "feat-dfa-1"}
    assert all(f'id="{k}"' in sec.html for k in sec.figures)
    assert sec.figures["feat-heads"]["data"][0]["y"] == pytest.approx(att.shares[f].tolist())
    heat = sec.figures["feat-dfa-0"]["data"][0]
    assert heat["z"][-2] == pytest.approx(att.dfa[f, 0, 0].tolist())  # head 0, second row from the top
    start, pos = int(table.context_start[f, 0]), int(table.top_pos[f, 0])
    assert len(heat["x"]) == att.dfa.shape[3] and heat["x"][pos - start].startswith(f"{pos - start}:")
    with pytest.raises(ValueError, match="feature=24"):
        latent_heads_section(att, table, 24, ByteTokenizer(), "blocks.1.attn.hook_z")


def test_head_latents_lists_the_latents_by_their_share_on_the_head(zrun):
    from workbench.viewer.attention_sae import head_latents, head_latents_section

    table, att = zrun.table, zrun.att
    shares = torch.zeros(24, 4)
    shares[:, 0] = 1.0
    shares[[3, 9, 11], 0], shares[[3, 9, 11], 2] = 0.2, 0.8
    shares[9, 2], shares[9, 0] = 0.95, 0.05
    planted = AttentionTable(shares, att.dfa, att.dfa_rest, att.bias, att.pre)
    rows = head_latents([("<run&1>", planted, table), ("other", planted, None)], head=2, min_share=0.5, limit=4)
    assert [(r.run, r.latent, r.share) for r in rows] == [
        ("<run&1>", 9, pytest.approx(0.95)),
        ("other", 9, pytest.approx(0.95)),
        ("<run&1>", 3, pytest.approx(0.8)),
        ("<run&1>", 11, pytest.approx(0.8)),
    ]
    assert rows[0].density == pytest.approx(float(table.density[9])) and rows[1].density is None
    sec = head_latents_section(rows, layer=1, head=2)
    assert "<run&1>" not in sec.html and "&lt;run&amp;1&gt;" in sec.html and "/run/%3Crun%261%3E?feature=9" in sec.html
    assert sec.figures == {}  # two runs: the table only
    one = head_latents_section(rows[:1], layer=1, head=2)
    assert one.figures["head-latents"]["data"][0]["x"] == pytest.approx([0.95])
    assert "No latent" in head_latents_section([], layer=1, head=2).html
