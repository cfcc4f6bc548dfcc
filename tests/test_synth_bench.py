"""SynthSAEBench glue: SAELens' generator and evaluator around our trainer, at a tiny size."""

import torch

from workbench.sae import SAEConfig, SparseAutoencoder
from workbench.sae.synth_bench import SAELENS_TOPK, SynthBenchConfig, as_saelens, evaluate, make_model, run_bench

TINY = SynthBenchConfig(
    num_features=96,
    hidden_dim=32,
    d_sae=48,
    hierarchy_roots=8,
    hierarchy_branching=3,
    correlation_rank=4,
    max_prob=0.3,
    min_prob=0.05,
    training_samples=16_384,
    batch_size=512,
    eval_samples=4096,
)


def test_the_true_dictionary_scores_mcc_one_through_to_saelens():
    synth = make_model(TINY)
    feats = synth.feature_dict.feature_vectors.detach().float()  # [F, d]
    unit = feats / feats.norm(dim=1, keepdim=True)
    sae = SparseAutoencoder(SAEConfig(d_in=TINY.hidden_dim, d_sae=TINY.num_features, k=8))
    with torch.no_grad():
        sae.W_dec.copy_(unit)
        sae.W_enc.copy_(unit)
    # a shuffled, sign-flipped copy of the truth is still the truth for MCC (Hungarian matching, |cos|)
    perm = torch.randperm(TINY.num_features, generator=torch.Generator().manual_seed(0))
    flipped = SparseAutoencoder(SAEConfig(d_in=TINY.hidden_dim, d_sae=TINY.num_features, k=8))
    with torch.no_grad():
        flipped.W_dec.copy_(-unit[perm])
    for s in (sae, flipped):
        out = evaluate(as_saelens(s), synth, TINY)
        assert out["mcc"] > 0.999 and out["uniqueness"] == 1.0
    random = SparseAutoencoder(SAEConfig(d_in=TINY.hidden_dim, d_sae=TINY.num_features, k=8), seed=3)
    assert evaluate(as_saelens(random), synth, TINY)["mcc"] < 0.7


def test_tiny_bench_trains_ours_and_saelens_on_the_same_samples():
    res = run_bench(TINY, wanted=lambda name: name in ("TopK + AuxK", SAELENS_TOPK), log=lambda row: None)
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"TopK + AuxK", SAELENS_TOPK}
    for r in rows.values():
        assert r["samples_drawn"] == TINY.training_samples  # same budget, counted as drawn
        assert r["sae_l0"] <= res["k"] + 1e-6  # TopK never exceeds k
        assert 0.0 < r["mcc"] <= 1.0
    assert abs(res["true_l0"] - rows["TopK + AuxK"]["true_l0"]) < 0.5  # train and eval samples agree
    assert rows["TopK + AuxK"]["mcc"] > 0.8  # trained, not left at its initialisation
