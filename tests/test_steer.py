"""Interventions and their measured effect on planted truth (workbench.steer).

A one-layer float64 toy HookedTransformer whose unembedding gets one unit direction v written into
token TARGET's column, and an SAE whose latent ALIGNED decodes to v: that latent must have the top
output score, steering along it must raise p(TARGET) at every step of c, the orthogonal rescale
with c = 1 must be the identity, zero-ablating a latent must equal the splice without it."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.sae import SAEConfig
from workbench.sae.model import SparseAutoencoder
from workbench.steer import directions as dr
from workbench.steer.curves import SteerEvaluator, monotone
from workbench.steer.data import SteerCurve
from workbench.steer.effects import ablation_effect, generate, kl_div, logprobs, target_logprob
from workbench.steer.intervene import Intervention, apply_rows, hooks, random_direction

D, V, TARGET, ALIGNED, HOOK = 16, 10, 7, 3, "blocks.0.hook_resid_post"


def toy_model(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=D,
        n_ctx=12,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=V,
        act_fn="relu",
        normalization_type=None,
        dtype=torch.float64,
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.W_U[:, TARGET] += 5.0 * planted_direction()
    return model.eval()


def planted_direction() -> torch.Tensor:
    return random_direction(D, 123, torch.float64)


def toy_sae() -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=8, k=2, hook_name=HOOK)).double()
    with torch.no_grad():
        sae.W_dec[ALIGNED] = planted_direction()
        sae.W_enc[ALIGNED] = planted_direction()
    return sae.eval()


@pytest.fixture(scope="module")
def model():
    return toy_model()


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, V - 1, (6, 10), generator=g)
    t[:, 0] = V - 1  # BOS
    return t


def test_aligned_latent_has_the_top_output_score(model, tokens):
    sae = toy_sae()
    s = dr.output_scores(model, sae, tokens, k=1, targets={"t": [TARGET]})
    assert int(s.score.argmax()) == ALIGNED
    assert int(s.top_tokens[ALIGNED, 0]) == TARGET
    assert int(s.target_rise["t"].argmax()) == ALIGNED


def test_output_score_fast_path_equals_the_hooked_forward(model, tokens, monkeypatch):
    sae = toy_sae()
    fast = dr.output_scores(model, sae, tokens, k=3, chunk=3)
    monkeypatch.setattr(dr, "_rest_of_model", lambda m, h: None)
    hooked = dr.output_scores(model, sae, tokens, k=3, chunk=5)
    torch.testing.assert_close(fast.score, hooked.score, rtol=1e-9, atol=1e-9)


def test_steering_raises_the_target_monotonically(model, tokens):
    v = planted_direction()
    p = []
    for c in (0.0, 0.5, 1, 2, 4, 8, 16):
        lp = logprobs(model, tokens, hooks(Intervention("add", HOOK, strength=c, direction=v)))
        p.append(float(lp[:, 1:, TARGET].exp().mean()))
    assert monotone(p) and p[-1] > 0.99 > p[0]
    ev = SteerEvaluator(model, tokens, tokens.flip(0), {"t": [TARGET]})
    curve = ev.curve(HOOK, v, (1, 2, 4), "t", "v")
    assert curve.strengths[0] == 0 and curve.kl[0] == 0 and monotone(curve.gain) and monotone(curve.kl)
    assert curve.gain[-1] > 1


@pytest.mark.parametrize("hook", [HOOK, "blocks.0.hook_mlp_out", "blocks.0.attn.hook_z", "blocks.0.hook_resid_pre"])
def test_orthogonal_rescale_with_c_one_is_the_identity(model, tokens, hook):
    d = 16 if hook != "blocks.0.attn.hook_z" else 4 * 4
    iv = Intervention("rescale", hook, strength=1.0, direction=random_direction(d, 5, torch.float64))
    assert torch.equal(logprobs(model, tokens, hooks(iv)), logprobs(model, tokens))


def test_rescale_cap_add_on_rows():
    h = torch.randn(20, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = 3.0 * planted_direction()
    u = v / v.norm()
    gone = apply_rows(Intervention("rescale", HOOK, strength=0.0, direction=v), h)
    torch.testing.assert_close(gone @ u, torch.zeros(20, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(gone, h - (h @ u)[:, None] * u)  # the orthogonal part is kept
    twice = apply_rows(Intervention("rescale", HOOK, strength=2.0, direction=v), h)
    torch.testing.assert_close(twice @ u, 2 * (h @ u))
    capped = apply_rows(Intervention("cap", HOOK, strength=0.1, direction=v), h)
    torch.testing.assert_close(capped @ u, (h @ u).clamp(max=0.1))
    added = apply_rows(Intervention("add", HOOK, strength=0.5, direction=v), h)
    torch.testing.assert_close(added - h, (0.5 * v).expand_as(h))


def test_zero_ablation_of_a_latent_equals_the_splice_without_it(model, tokens):
    sae = toy_sae()

    def splice(keep_error):
        def hook(act, hook):
            rows = act.clone()
            x = rows[:, 1:].reshape(-1, D)
            z = sae.encode(x)
            z0 = z.clone()
            z0[:, ALIGNED] = 0
            out = sae.decode(z0) + ((x - sae.decode(z)) if keep_error else 0)
            rows[:, 1:] = out.reshape(rows[:, 1:].shape)
            return rows

        return [(HOOK, hook)]

    for keep in (False, True):
        iv = Intervention("zero", HOOK, latent=ALIGNED, keep_error=keep)
        torch.testing.assert_close(logprobs(model, tokens, hooks(iv, sae)), logprobs(model, tokens, splice(keep)))
    # with the error kept, a latent set to what it already is changes nothing
    z = sae.encode(torch.zeros(1, D, dtype=torch.float64))
    same = Intervention("clamp", HOOK, latent=0, strength=float(z[0, 0].detach()))
    x = torch.zeros(3, D, dtype=torch.float64)
    torch.testing.assert_close(apply_rows(same, x, sae), x)


def test_mean_ablations(model, tokens):
    sae = toy_sae()
    mean = torch.arange(D, dtype=torch.float64)
    rows = apply_rows(Intervention("mean", HOOK, mean=mean), torch.zeros(4, D, dtype=torch.float64))
    assert torch.equal(rows, mean.expand(4, -1))
    a = logprobs(model, tokens, hooks(Intervention("mean", HOOK, latent=2, mean=0.7), sae))
    b = logprobs(model, tokens, hooks(Intervention("clamp", HOOK, latent=2, strength=0.7), sae))
    assert torch.equal(a, b)


def test_kl_of_a_distribution_with_itself_is_zero(model, tokens):
    lp = logprobs(model, tokens)
    assert torch.equal(kl_div(lp, lp), torch.zeros(lp.shape[:2], dtype=lp.dtype))
    ev = SteerEvaluator(model, tokens, tokens, {"t": [TARGET]})
    gains, kl = ev.measure(hooks(Intervention("rescale", HOOK, strength=1.0)))
    assert kl == 0.0 and gains["t"] == 0.0
    q = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    p = torch.tensor([[0.9, 0.1]], dtype=torch.float64).log()
    assert float(kl_div(p, q)) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert float(target_logprob(p, [0, 1])) == pytest.approx(0.0)


def test_random_direction_is_deterministic_by_seed(model, tokens):
    a = logprobs(model, tokens, hooks(Intervention("add", HOOK, strength=2.0, seed=4)))
    b = logprobs(model, tokens, hooks(Intervention("add", HOOK, strength=2.0, seed=4)))
    c = logprobs(model, tokens, hooks(Intervention("add", HOOK, strength=2.0, seed=5)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ablation_splits_where_the_latent_fires(model, tokens):
    sae = toy_sae()
    eff = ablation_effect(model, sae, tokens, ALIGNED)
    assert eff.n_fires + eff.n_quiet == tokens.shape[0] * (tokens.shape[1] - 2)
    # the hook is the last residual stream: a quiet position sees no change at all
    assert eff.n_fires > 0 and eff.loss_change_quiet == 0.0 and eff.loss_change_fires != 0.0


def test_diff_of_means_recovers_a_planted_shift():
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(4, 9, D, generator=g, dtype=torch.float64)
    labels = torch.rand(4, 9, generator=g) > 0.5
    v = planted_direction()
    shifted = rows + labels[..., None] * v
    valid = torch.ones(4, 9, dtype=torch.bool)
    torch.testing.assert_close(
        dr.diff_of_means(shifted, labels, valid) - dr.diff_of_means(rows, labels, valid), v, rtol=0, atol=1e-12
    )
    tok = torch.tensor([[9, 1, 5, 1]])
    assert dr.next_token_in(tok, [1]).tolist() == [[True, False, True, False]]
    with pytest.raises(ValueError, match="both classes"):
        dr.diff_of_means(rows, torch.zeros(4, 9, dtype=torch.bool))


def test_generation_greedy_and_seeded(model, tokens):
    prompt = tokens[0, :3]
    assert generate(model, prompt, 5) == generate(model, prompt, 5)
    pushed = generate(model, prompt, 5, hooks(Intervention("add", HOOK, strength=40.0, direction=planted_direction())))
    assert pushed == [TARGET] * 5
    s1 = generate(model, prompt, 8, temperature=1.0, seed=3)
    assert s1 == generate(model, prompt, 8, temperature=1.0, seed=3)


def test_gain_at_matched_kl_interpolates():
    c = SteerCurve("x", None, 1.0, [0, 1, 2, 3], [0.0, 1.0, 2.0, 2.5], [0.0, 0.2, 0.4, 1.0])
    assert c.gain_at(0.1) == pytest.approx(0.5)
    assert c.gain_at(0.7) == pytest.approx(2.25)
    assert math.isnan(c.gain_at(2.0))


def test_bad_interventions_name_the_field():
    with pytest.raises(ValueError, match="kind="):
        Intervention("steer", HOOK)
    with pytest.raises(ValueError, match="latent"):
        Intervention("clamp", HOOK)
    with pytest.raises(ValueError, match="latent=1"):
        Intervention("add", HOOK, latent=1)
    with pytest.raises(ValueError, match="mean"):
        Intervention("mean", HOOK)
    with pytest.raises(ValueError, match="direction: 3 wide"):
        apply_rows(Intervention("add", HOOK, direction=torch.ones(3)), torch.zeros(2, D))
    with pytest.raises(ValueError, match="needs the SAE"):
        apply_rows(Intervention("zero", HOOK, latent=1), torch.zeros(2, D))


def test_last_position_only_leaves_earlier_predictions_alone(model, tokens):
    iv = Intervention("add", HOOK, strength=3.0, direction=planted_direction(), positions="last")
    lp, clean = logprobs(model, tokens, hooks(iv)), logprobs(model, tokens)
    assert torch.equal(lp[:, :-1], clean[:, :-1]) and not torch.equal(lp[:, -1], clean[:, -1])
