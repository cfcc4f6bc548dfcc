"""The width ladder (workbench.sae.ladder): planted parents found by decoder cosine and by co-firing,
the co-firing statistics against a float64 pair-by-pair reference, the file round trip, the figure
and the viewer's API on a run folder."""

import json

import pytest
import torch

from workbench.figures.ladder import ladder_tree
from workbench.runs import CONFIG_FILE
from workbench.sae import SAEConfig, SparseAutoencoder
from workbench.sae.ladder import LADDER_META_FILE, Ladder, cofire_stats, match_rung, prefix_ladder, separate_ladder
from workbench.sae.planted import PlantedTreeConfig, planted_tree, sample
from workbench.viewer import ladder as viewer_ladder
from workbench.viewer.store import ApiError, RunStore

TREE = PlantedTreeConfig(n_parents=4, n_children=3, n_other=8, d=24, p_parent=0.25, p_other=0.08)


def _sae(W_enc, W_dec, **kw):
    F, d = W_dec.shape
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=F, k=F - 1, **kw)).eval()
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.fill_(-0.1)  # a feature that is off reads ±1e-8 of rounding: not a firing
    return sae


def _matryoshka_like(noise=0.5):
    """Latents: the 4 parents, then their 12 children, then the 8 others. Each latent reads its own
    planted feature; a child's decoder is its parent's direction plus `noise` × its own."""
    tree = planted_tree(TREE)
    D = tree.directions
    dec = D.clone()
    dec[tree.child] = D[tree.parent] + noise * D[tree.child]
    return tree, _sae(D, dec, matryoshka="fixed", matryoshka_widths=(4, 16))


def test_each_child_of_a_matryoshka_like_dictionary_is_matched_to_its_parent():
    tree, sae = _matryoshka_like()
    data = sample(TREE, tree, 4000, seed=3)
    lad = prefix_ladder(sae, data.acts)
    assert lad.widths == (4, 16, 24) and lad.kind == "prefixes"
    kids = lad.rungs[0]
    assert kids.child.tolist() == list(range(4, 16)) and kids.parent_width == 4
    assert torch.equal(kids.cos_parent, tree.parent) and torch.equal(kids.cofire_parent, tree.parent)
    assert torch.allclose(kids.cos, torch.full((12,), 1 / 1.25**0.5), atol=1e-5)
    assert torch.equal(kids.given, torch.ones(12))  # a child never fires without its parent
    assert lad.parent_of(16, 9) == (int(tree.parent[5]), pytest.approx(float(kids.cos[5])))
    assert lad.parent_of(4, 2) is None and lad.parent_of(24, 3) is None  # a root; below rung 2's band
    # the others (rung 2) are independent: their best co-firing parent shares few firings
    assert lad.rungs[1].given.max() < 0.5


def test_separate_saes_are_matched_the_same_way():
    torch.manual_seed(0)
    small = torch.nn.functional.normalize(torch.randn(6, 10), dim=1)
    planted = torch.randint(0, 6, (20,))
    wide = small[planted] + 0.1 * torch.randn(20, 10)
    acts = torch.randn(300, 10)
    lad = separate_ladder([_sae(small, small), _sae(wide, wide)], acts, ["s", "w"])
    assert lad.kind == "separate" and lad.widths == (6, 20) and lad.sources == ("s", "w")
    assert torch.equal(lad.rungs[0].cos_parent, planted)
    with pytest.raises(ValueError, match="increasing width"):
        separate_ladder([_sae(wide, wide), _sae(small, small)], acts)


def test_cofire_picks_the_superset_not_the_dense_latent():
    """Children fire on 40% of their parent's rows and, as noise, on 2% of all rows; a dense latent
    fires on every row. The share of the child's firings (given) names the dense latent; Ochiai does not."""
    gen = torch.Generator().manual_seed(0)
    N, P = 5000, 5
    parents = torch.rand(N, P, generator=gen) < 0.2
    parents[:, 0] = True  # latent 0: dense
    planted = torch.tensor([1, 1, 2, 3, 3, 4, 4, 4])
    pick = torch.rand(N, len(planted), generator=gen) < 0.4
    children = (parents[:, planted] & pick) | (torch.rand(N, len(planted), generator=gen) < 0.02)
    W = torch.randn(len(planted), 7)
    rung = match_rung(W, torch.randn(P, 7), children, parents)
    assert torch.equal(rung.cofire_parent, planted)
    _, given = cofire_stats(children, parents)
    assert (given.argmax(1) == 0).all()  # the statistic the ladder does not rank by picks the dense one


def test_cofire_stats_equal_a_float64_pair_by_pair_reference():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(200, 7, generator=gen) < 0.3
    b = torch.rand(200, 5, generator=gen) < 0.5
    a[:, 3] = False  # a child that never fires
    b[:, 2] = False  # a parent that never fires
    ochiai, given = cofire_stats(a, b)
    for c in range(7):
        for p in range(5):
            both = sum(float(a[n, c] and b[n, p]) for n in range(200))
            nc, np_ = float(a[:, c].sum()), float(b[:, p].sum())
            want_o = both / (nc * np_) ** 0.5 if nc and np_ else 0.0
            want_g = both / nc if nc else 0.0
            assert ochiai[c, p].item() == pytest.approx(want_o, rel=1e-13, abs=0)
            assert given[c, p].item() == pytest.approx(want_g, rel=1e-13, abs=0)
    rung = match_rung(torch.randn(7, 3), torch.randn(5, 3), a, b)
    assert rung.cofire_parent[3] == -1 and rung.given[3] == 0 and rung.child_density[3] == 0
    with pytest.raises(ValueError, match="same"):
        cofire_stats(a, b[:10])


def test_ladder_round_trips_through_its_files(tmp_path):
    tree, sae = _matryoshka_like()
    lad = prefix_ladder(sae, sample(TREE, tree, 1000, seed=4).acts, source="run-a")
    lad.save(tmp_path)
    back = Ladder.load(tmp_path)
    assert (back.kind, back.widths, back.n_rows, back.sources) == (lad.kind, lad.widths, 1000, ("run-a",))
    for r, s in zip(lad.rungs, back.rungs):
        assert r.width == s.width and r.parent_width == s.parent_width
        for a, b in zip(r[2:], s[2:]):
            assert torch.equal(a, b)
    meta = json.loads((tmp_path / LADDER_META_FILE).read_text())
    (tmp_path / LADDER_META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        Ladder.load(tmp_path)


def test_tree_figure_links_every_child_to_its_planted_parent():
    tree, sae = _matryoshka_like()
    lad = prefix_ladder(sae, sample(TREE, tree, 1000, seed=5).acts)
    fig = ladder_tree(lad, by="cofire")
    trace = fig.data[0]
    parent_of = dict(zip(trace.ids, trace.parents))
    for c, p in zip(tree.child.tolist(), tree.parent.tolist()):
        assert parent_of[f"16:{c}"] == f"4:{p}"
    assert parent_of["4:0"] == "" and len(trace.ids) == 24  # roots, and every latent once
    with pytest.raises(ValueError, match="by="):
        ladder_tree(lad, by="jaccard")


def test_viewer_api_reads_the_ladder_and_names_what_is_wrong(tmp_path):
    tree, sae = _matryoshka_like()
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG_FILE).write_text(json.dumps({"kind": "sae", "config": {}}))
    store = RunStore(tmp_path)
    with pytest.raises(ApiError, match="python -m workbench.sae.ladder") as e:
        viewer_ladder.ladder(store, "run", {})
    assert e.value.status == 404
    prefix_ladder(sae, sample(TREE, tree, 1000, seed=6).acts).save(run)
    out = viewer_ladder.ladder(store, "run", {"width": "16", "latent": "9"})
    assert out["widths"] == [4, 16, 24] and out["latent"] == {"width": 16, "latent": 9}
    assert out["parent"]["cos"]["latent"] == int(tree.parent[5])
    assert "data" in out["figure"]
    root = viewer_ladder.ladder(store, "run", {"width": "4", "latent": str(int(tree.parent[5]))})
    assert 9 in [c["latent"] for c in root["children"]]
    for bad, msg in (({"width": "5"}, "width"), ({"by": "x"}, "by"), ({"width": "16", "latent": "99"}, "latent")):
        with pytest.raises(ApiError, match=msg) as e:
            viewer_ladder.ladder(store, "run", bad)
        assert e.value.status in (400, 404)
    html = viewer_ladder.ladder_section("run<x>", Ladder.load(run))
    assert "run&lt;x&gt;" in html or "run\\u003cx\\u003e" in html
