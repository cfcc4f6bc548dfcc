"""Sparse probing and absorption-style scores against planted ground truth."""

import json

import torch

from workbench.sae import SAEConfig, SparseAutoencoder
from workbench.sae.probing import ProbingConfig, absorption, byte_concepts, fit_logistic, sparse_probing, word_ends
from workbench.sae.saebench_json import read_eval_json, write_absorption_json, write_sparse_probing_json


def _hand_sae(W_enc: torch.Tensor, W_dec: torch.Tensor, k: int) -> SparseAutoencoder:
    F, d = W_dec.shape
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=F, k=k))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def _orthonormal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # rows orthonormal


def test_sparse_probing_finds_a_planted_direction_and_not_a_random_label():
    gen = torch.Generator().manual_seed(0)
    d, n = 32, 8000
    feats = _orthonormal(d, 1)
    active = torch.rand(n, d, generator=gen) < 0.1
    coef = active * (0.5 + torch.rand(n, d, generator=gen))
    x = coef @ feats + 0.01 * torch.randn(n, d, generator=gen)
    sae = _hand_sae(feats, feats, k=12)
    labels = {"planted": active[:, 5], "random": torch.rand(n, generator=gen) < 0.5}
    train = torch.arange(n) % 2 == 0
    res = sparse_probing(x, sae.encode, labels, train, ProbingConfig(ks=(1, 2, 5), n_per_class=300))
    assert res.sae_accuracy["planted"][1] >= 0.95
    assert res.llm_accuracy["planted"] >= 0.95
    assert res.sae_accuracy["random"][1] <= 0.6 and res.llm_accuracy["random"] <= 0.6
    assert res.n_train["planted"] == res.n_test["planted"] == 600  # balanced: 300 per class
    assert res.mean_accuracy()[1] == (res.sae_accuracy["planted"][1] + res.sae_accuracy["random"][1]) / 2


def test_logistic_probe_matches_a_float64_newton_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, 3, dtype=torch.float64, generator=gen) * torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64)
    y = (x @ torch.tensor([1.0, -0.3, 4.0], dtype=torch.float64) + 0.5 * torch.randn(400, generator=gen)) > 0
    probe = fit_logistic(x, y, l2=0.0, max_iter=200)
    # Newton's method on the unpenalised mean cross-entropy in the raw features
    X = torch.cat([x, torch.ones(400, 1, dtype=torch.float64)], 1)
    beta = torch.zeros(4, dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(X @ beta)
        beta = beta - torch.linalg.solve((X.T * (p * (1 - p))) @ X, X.T @ (p - y.double()))
    assert torch.allclose(probe.w, beta[:3], rtol=1e-4, atol=1e-5)
    assert abs(probe.b - float(beta[3])) < 1e-4


def _hierarchy(n: int, seed: int, parent_alone: float = 0.6, n_children: int = 20):
    """Orthonormal directions: parent P (row 0), children (rows 1..n_children), distractors. A
    sample holds the parent (alone with prob parent_alone, else with one child: the parent is
    active whenever a child is) with prob 0.3, and two random distractors."""
    gen = torch.Generator().manual_seed(seed)
    d = 64
    dirs = _orthonormal(d, seed + 10)
    n_dis = d - 1 - n_children
    has_parent = torch.rand(n, generator=gen) < 0.3
    child = torch.where(
        torch.rand(n, generator=gen) < parent_alone, -1, torch.randint(0, n_children, (n,), generator=gen)
    )
    child[~has_parent] = -1
    x = has_parent[:, None] * dirs[0]
    x = x + (child >= 0)[:, None] * dirs[1 + child.clamp_min(0)]
    dis = torch.randint(0, n_dis, (n, 2), generator=gen)
    x = x + dirs[1 + n_children + dis].sum(1) * (0.5 + torch.rand(n, 1, generator=gen))
    return x, has_parent, dirs, n_children


def _hierarchy_saes(dirs: torch.Tensor, n_children: int):
    """Two hand-built TopK SAEs for `_hierarchy` data: one whose child latents have absorbed the
    parent direction (they fire with it and the parent latent stays silent), one without."""
    P, C, D = dirs[0], dirs[1 : 1 + n_children], dirs[1 + n_children :]
    k = 6
    clean = _hand_sae(dirs, dirs, k)
    enc = dirs.clone()
    enc[0] = P - 1.5 * C.sum(0)  # the parent latent is pushed below 0 wherever a child is active
    dec = dirs.clone()
    dec[1 : 1 + n_children] = (C + P) / 2**0.5  # a child latent reconstructs child + parent
    enc[1 : 1 + n_children] = C * 2**0.5
    absorbing = _hand_sae(enc, dec, k)
    assert D.shape[0] > 0
    return absorbing, clean


def test_absorption_is_high_where_a_child_latent_absorbed_its_parent_and_zero_without():
    x, parent, dirs, n_children = _hierarchy(12_000, seed=0)
    absorbing, clean = _hierarchy_saes(dirs, n_children)
    # the absorbing SAE still reconstructs the data: it is a valid dictionary, just a different one
    assert torch.allclose(absorbing.decode(absorbing.encode(x)), x, atol=1e-4)
    first = torch.where(parent, 0, -1)  # concept "a" = the parent feature
    train = torch.arange(len(x)) % 2 == 0
    cfg = ProbingConfig()
    hi = absorption(x, absorbing.encode, absorbing.W_dec.detach(), first, train, cfg, letters="a").letters[0]
    lo = absorption(x, clean.encode, clean.W_dec.detach(), first, train, cfg, letters="a").letters[0]
    assert hi.main_latents == [0] and lo.main_latents == [0]
    # planted: 40% of parent positives carry a child, whose latent absorbed the parent
    assert abs(hi.full_absorption_rate - 0.4) < 0.05, hi
    assert hi.mean_absorption_fraction > 0.35
    assert lo.full_absorption_rate < 0.02 and lo.mean_absorption_fraction < 0.02, lo
    assert hi.num_probe_true_positives > 0.95 * int((parent & ~train).sum())


def test_byte_concepts_and_word_ends_on_known_text():
    text = 'Call f("a b") now. Then\n>>> x = 1\n    y'
    tokens = torch.tensor([[256] + list(text.encode())])
    c = {k: v[0, 1:].tolist() for k, v in byte_concepts(tokens).items()}
    at = lambda name, s: [c[name][i] for i in range(len(text)) if text[i] == s]  # noqa: E731
    i_a = text.index("a b")
    assert c["string_literal"][i_a] and c["string_literal"][i_a + 2] and not c["string_literal"][text.index("now")]
    assert c["in_parentheses"][i_a] and not c["in_parentheses"][text.index("now")]
    assert c["python_code"][text.index("x =")] and not c["python_code"][text.index("Then")]
    assert c["python_code"][text.index("y")] and c["indentation"][text.index("y") - 1]
    assert at("uppercase", "C") == [True] and at("digit", "1") == [True]
    assert c["line_start"][text.index(">>>")] and c["after_sentence_end"][text.index(". Then") + 1]
    assert c["word_start"][text.index("now")] and not c["word_start"][text.index("now") + 1]
    ends, first = word_ends(tokens)
    words = [(i, chr(97 + int(first[0, i]))) for i in ends[0].nonzero().squeeze(1).tolist()]
    # "Call" starts at position 1 (it may have begun before the window); "y" runs into the end
    assert [tokens[0, i].item() for i, _ in words] == [ord(ch) for ch in "fabwnx"]
    assert [w for _, w in words] == list("fabntx")


def test_saebench_json_round_trip(tmp_path):
    x, parent, dirs, n_children = _hierarchy(4000, seed=1)
    absorbing, _ = _hierarchy_saes(dirs, n_children)
    train = torch.arange(len(x)) % 2 == 0
    res = absorption(
        x, absorbing.encode, absorbing.W_dec.detach(), torch.where(parent, 0, -1), train, ProbingConfig(), letters="a"
    )
    path = write_absorption_json(res, tmp_path / "absorption.json", sae_cfg=absorbing.cfg, model_name="toy")
    out = read_eval_json(path)
    raw = json.loads(path.read_text())
    assert raw["eval_type_id"] == "absorption_first_letter"
    m = raw["eval_result_metrics"]["mean"]
    assert m["mean_full_absorption_score"] == res.mean_full_absorption()
    assert raw["eval_result_details"][0]["first_letter"] == "a"
    assert raw["eval_result_details"][0]["num_split_features"] == 1
    assert out["eval_result_unstructured"]["caveat"].startswith("absorption-style")
    sp = sparse_probing(x, absorbing.encode, {"parent": parent}, train, ProbingConfig(ks=(1, 2), n_per_class=300))
    raw = json.loads(write_sparse_probing_json(sp, tmp_path / "sp.json", sae_cfg=absorbing.cfg).read_text())
    assert raw["eval_type_id"] == "sparse_probing"
    assert raw["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] == sp.mean_accuracy()[1]
    assert raw["eval_result_metrics"]["llm"]["llm_test_accuracy"] == sp.mean_llm_accuracy()
    assert raw["eval_result_details"][0]["dataset_name"] == "parent"


def test_run_evals_round_trip_and_the_shared_figure(tmp_path):
    from workbench.figures.evals import usefulness_figure, usefulness_html
    from workbench.sae.probing import SAEEvals
    from workbench.sae.saebench_json import read_run_evals, write_run_evals

    x, parent, dirs, n_children = _hierarchy(4000, seed=2)
    absorbing, _ = _hierarchy_saes(dirs, n_children)
    train = torch.arange(len(x)) % 2 == 0
    cfg = ProbingConfig(ks=(1, 2), n_per_class=300)
    ev = SAEEvals(
        sparse_probing(x, absorbing.encode, {"parent": parent, "child0": x @ dirs[1] > 0.5}, train, cfg),
        absorption(x, absorbing.encode, absorbing.W_dec.detach(), torch.where(parent, 0, -1), train, cfg, letters="a"),
    )
    assert read_run_evals(tmp_path) is None  # not computed: the viewer and widget say so
    assert "not computed" in usefulness_html(None) and usefulness_figure(None).layout.annotations
    write_run_evals(tmp_path, ev, sae_cfg=absorbing.cfg, cfg=cfg)
    back = read_run_evals(tmp_path)
    assert back["sparse_probing"]["sae_accuracy"]["parent"]["1"] == ev.sparse_probing.sae_accuracy["parent"][1]
    assert (tmp_path / "saebench_absorption_first_letter.json").exists()
    fig = usefulness_figure(back)
    lines = {t.name: t for t in fig.data if t.type == "scatter" and t.name}
    assert list(lines["parent"].y) == [ev.sparse_probing.sae_accuracy["parent"][k] for k in (1, 2)]
    bars = [t for t in fig.data if t.type == "bar"][0]
    assert list(bars.x) == ["a"] and bars.y[0] == ev.absorption.letters[0].full_absorption_rate
    assert "absorption-style" in usefulness_html(back) and "16k latents" in usefulness_html(back)


def test_demo_sae_run_page_shows_the_panel(tiny_demo):
    from starlette.testclient import TestClient

    from workbench.sae.saebench_json import read_eval_json, read_run_evals
    from workbench.viewer.server import create_app

    ev = read_run_evals(tiny_demo / "sae-topk")
    assert ev is not None and ev["sparse_probing"]["tasks"]
    assert read_eval_json(tiny_demo / "sae-topk" / "saebench_sparse_probing.json")["eval_type_id"] == "sparse_probing"
    page = TestClient(create_app(tiny_demo), base_url="http://127.0.0.1").get("/run/sae-topk").text
    assert 'id="usefulness"' in page and "absorption-style" in page and "16k latents" in page
    mean_k1 = ev["sparse_probing"]["mean_accuracy"]["1"]
    assert f"k=1: {mean_k1:.3f}" in page


def test_hook_activations_read_hook_z_as_one_row_per_token(tiny_model):
    """Sparse probing feeds the SAE what it was trained on: a hook_z row holds a token's heads side
    by side (head h at columns [h·d_head, (h+1)·d_head)), never [n_heads, d_head] per token."""
    from workbench.sae.probing import hook_activations

    hook = "blocks.1.attn.hook_z"
    tokens = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(0))
    rows = hook_activations(tiny_model, hook, tokens, batch_size=2)  # two forward passes
    _, cache = tiny_model.run_with_cache(tokens, names_filter=hook)
    z = cache[hook]
    assert rows.shape == (3, 9, 4 * 8)
    for h in range(4):
        torch.testing.assert_close(rows[..., h * 8 : (h + 1) * 8], z[:, :, h], rtol=1e-5, atol=1e-6)
    resid = hook_activations(tiny_model, "blocks.0.hook_resid_post", tokens)
    assert resid.shape == (3, 9, 32)  # a hook without a head axis passes unchanged
