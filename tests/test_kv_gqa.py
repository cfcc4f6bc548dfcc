"""The KV-cache probes on a grouped-query-attention model with a BPE tokenizer (issue 28):
DuoAttention gates per KV head, expanded to query heads exactly as TransformerLens shares k and v
(a float64 reference), the trade-off and RazorAttention per KV head, passkey contexts tokenized as
whole strings, and exact passkey accuracy equal to greedy decoding."""

from __future__ import annotations

import os

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.corpus import ByteTokenizer
from workbench.gguf_model import _installed
from workbench.probes.attention_restrict import gate_hooks, kv_fraction, streaming_pattern
from workbench.probes.duo import passkey_accuracy, passkey_batch, passkey_hits
from workbench.probes.gqa import expand_kv, kv_scores, to_units
from workbench.probes.kv_data import DuoConfig, PasskeyConfig, RazorConfig, TradeoffConfig

L, H, G, V, T = 2, 4, 2, 24, 32


def _gqa(seed: int = 0, n_kv: int | None = G, dtype=torch.float32) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=L, d_model=16, n_heads=H, d_head=4, n_ctx=T, d_vocab=V, attn_only=True, n_key_value_heads=n_kv
    )
    return HookedTransformer(cfg).to(dtype).eval()


def test_expand_and_group_score_are_inverse_and_follow_the_groups():
    a = torch.tensor([[0.1, 0.9], [0.5, 0.2]], dtype=torch.float64)
    e = expand_kv(a, H)
    assert e.tolist() == [[0.1, 0.1, 0.9, 0.9], [0.5, 0.5, 0.2, 0.2]]
    assert torch.equal(kv_scores(e, G), a)
    q = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 6.0, 0.0]])  # per query head: the group's best
    assert kv_scores(q, G).tolist() == [[3.0, 2.0], [5.0, 6.0]]
    assert to_units(a, L, H, G).shape == (L, G) and to_units(q, L, H, G).shape == (L, G)
    with pytest.raises(ValueError, match=r"n_kv_heads=2"):
        to_units(torch.zeros(L, 3), L, H, G, "rankings['x']")


def test_gates_per_kv_head_match_a_float64_reference_of_the_shared_kv():
    """The gated z of every query head, against z computed by hand in float64 from the full scores
    and the KV head's values: query head h mixes with its KV head h // 2's gate and reads its v."""
    model = _gqa(dtype=torch.float64)
    tokens = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    gates = torch.tensor([[0.3, 0.8], [0.0, 1.0]], dtype=torch.float64)
    sink, window = 1, 4
    got = {}

    def grab(name):
        def f(t, hook):
            got[name] = t.detach().clone()

        return f

    grabs = [(f"blocks.0.attn.{n}", grab(n)) for n in ("hook_attn_scores", "hook_v", "hook_z")]
    with torch.no_grad(), model.hooks(fwd_hooks=[*gate_hooks(model, expand_kv(gates, H), sink, window), *grabs]):
        model(tokens)
    scores, v = got["hook_attn_scores"], got["hook_v"]  # [b, H, q, k], [b, k, G, d]
    assert v.shape[2] == G
    kpos, qpos = torch.arange(T)[None, :], torch.arange(T)[:, None]
    keep = (kpos < sink) | ((kpos > qpos - window) & (kpos <= qpos))
    causal = kpos <= qpos
    ref = torch.zeros_like(got["hook_z"])
    for h in range(H):
        s = scores[:, h]
        full = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
        stream = torch.softmax(s.masked_fill(~(keep & causal), float("-inf")), -1)
        a = gates[0, h // (H // G)]
        ref[:, :, h] = (a * full + (1 - a) * stream) @ v[:, :, h // (H // G)]
    torch.testing.assert_close(got["hook_z"], ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(streaming_pattern(scores, sink, window)[:, H - 1], stream, rtol=0, atol=1e-12)


def test_duo_gates_are_per_kv_head_and_shared_by_their_query_heads():
    from workbench.probes.duo import duo_gates

    model = _gqa()
    hay = torch.randint(0, V - 1, (2000,), generator=torch.Generator().manual_seed(0))
    cfg = DuoConfig(n_contexts=4, batch_size=2, steps=4, log_every=2, lam=0.5, lr=0.2, passkey=PasskeyConfig(seq_len=T))
    res = duo_gates(model, cfg, haystack=hay, bos=V - 1, progress=False)
    kv = torch.tensor(res.kv_alphas)
    assert kv.shape == (L, G) and (res.n_kv_heads, res.n_query_heads) == (L * G, L * H)
    assert torch.equal(torch.tensor(res.alphas), kv.repeat_interleave(H // G, 1))
    assert (kv < 1).any()  # the gates moved
    assert all(torch.tensor(t).shape == (L, H) for t in res.trajectory)
    mha = duo_gates(_gqa(n_kv=None), cfg, haystack=hay, bos=V - 1, progress=False)
    assert mha.kv_alphas == mha.alphas and mha.n_kv_heads == mha.n_query_heads == L * H


def test_tradeoff_ranks_kv_heads_and_counts_their_cache():
    from workbench.probes.kv_tradeoff import tradeoff_curve

    model = _gqa()
    hay = torch.randint(0, V - 1, (4000,), generator=torch.Generator().manual_seed(0))
    per_query = [[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 6.0, 0.0]]  # per KV head: [[3, 2], [5, 6]]
    cfg = TradeoffConfig(
        fractions=(0, 50, 100), sink=1, window=4, n_random=4, seq_len=T, n_needle=2, needle_len=4, n_passkey=4, n_text=2
    )
    res = tradeoff_curve(model, {"q": per_query}, cfg, bos=V - 1, haystack=hay, progress=False)
    assert (res.n_heads, res.n_kv_heads, res.n_query_heads) == (L * G, L * G, L * H)
    assert res.n_full == [0, 2, 4] and res.rankings["q"] == [[3.0, 2.0], [5.0, 6.0]]
    assert res.null_size[1] == 6  # C(4, 2): every pair of KV heads, exact
    short = min(T, 1 + 4)
    assert res.curves["q"]["kv_fraction"][1] == pytest.approx((2 * T + 2 * short) / (4 * T))
    keep = torch.tensor([[False, False, False, False], [True, True, True, True]])  # L1's two KV heads
    assert kv_fraction(keep, T, 1, 4, n_kv_heads=G) == pytest.approx(res.curves["q"]["kv_fraction"][1])


def test_razor_protects_whole_kv_groups():
    from workbench.probes.razor import razor_scores

    model = _gqa()
    res = razor_scores(model, RazorConfig(n_contexts=2, segment=8, repeats=3, min_score=0.0), bos=V - 1)
    prot = torch.tensor(res.protected)
    assert torch.equal(prot, torch.tensor(res.protected_kv).repeat_interleave(H // G, 1))
    assert (res.n_kv_heads, res.n_query_heads) == (L * G, L * H)
    ind = kv_scores(torch.tensor(res.induction), G)
    top = int(ind.flatten().argmax())
    assert res.protected_kv[top // G][top % G]  # the best group by induction is protected
    assert res.protected_share == pytest.approx(float(torch.tensor(res.protected_kv).double().mean()))


def test_byte_passkeys_are_the_whole_string_and_the_answer_decodes_to_the_key():
    tok = ByteTokenizer()
    hay = torch.tensor(tok.encode("the quick brown fox jumps over the lazy dog. " * 40))
    pk = PasskeyConfig(seq_len=120, needle_suffix=". Remember it. ")
    b = passkey_batch(5, pk, hay, bos=tok.bos_token_id, tokenizer=tok, seed=2, split="eval")
    assert b.tokens.shape == (5, 120)
    for row, pos, ans, at in zip(b.tokens.tolist(), b.answer_pos.tolist(), b.answer.tolist(), b.needle_pos.tolist()):
        text = tok.decode(row[1:])
        assert row == [tok.bos_token_id, *tok.encode(text)]
        key = tok.decode(ans)
        assert key.isdigit() and len(key) == 5 and sum(map(int, key)) % 2 == 1  # the "eval" split
        assert [row[p + 1] for p in pos] == ans and pos[-1] == len(row) - 2
        assert text.endswith(pk.question + key) and tok.decode(row[at:]).startswith(pk.needle_prefix + key)


def _smollm_tokenizer():
    from workbench.gguf_model import SMOLLM2

    if not _installed(SMOLLM2.package) and not os.environ.get("CI"):
        pytest.skip(f"{SMOLLM2.package} is not installed (./install.sh --real-model, or --test)")
    from transformers import AutoTokenizer

    from workbench.corpus import HFTokenizer
    from workbench.hub import gguf_folder

    return HFTokenizer(AutoTokenizer.from_pretrained(gguf_folder(SMOLLM2.name)))


@pytest.mark.real_model
def test_smollm_passkeys_are_tokenized_once_where_parts_would_differ():
    """Planted: encoding "…48213. Remember it. " and the filler after it part by part leaves a lone
    " " token that SmolLM2's BPE never makes inside the whole string (". Then" is ".", " Then")."""
    tok = _smollm_tokenizer()
    parts = [" The pass key is ", "48213", ". Remember it. ", "Then the docs say"]
    partwise = [t for p in parts for t in tok.encode(p)]
    assert partwise != tok.encode("".join(parts))  # the plant: part-wise tokens are not BPE's
    filler = " ".join(f"The function number {i} returns a list of values." for i in range(60))
    hay = torch.tensor(tok.encode(filler))
    pk = PasskeyConfig(seq_len=160, needle_suffix=". Remember it. ")
    b = passkey_batch(4, pk, hay, bos=tok.bos_token_id, tokenizer=tok, seed=0, split="fit")
    assert b.tokens.shape == (4, 160)
    for row, pos, ans in zip(b.tokens.tolist(), b.answer_pos.tolist(), b.answer.tolist()):
        text = tok.decode(row[1:])
        assert row[1:] == tok.encode(text)  # a tokenization the tokenizer makes
        key = tok.decode(ans)
        assert key.isdigit() and len(key) == 5 and sum(map(int, key)) % 2 == 0
        assert tok.decode([row[p + 1] for p in pos]) == key and text.endswith("The pass key is " + key)
        assert f"The pass key is {key}. Remember it." in text


def test_exact_accuracy_is_greedy_decoding():
    """A random model: half the contexts get the model's own greedy continuation as their answer
    (planted hits), the rest keep a random key. Per context, all answer tokens argmax under teacher
    forcing exactly when greedy decoding from the question gives the answer."""
    model = _gqa(seed=3)
    hay = torch.randint(0, V - 1, (2000,), generator=torch.Generator().manual_seed(0))
    b = passkey_batch(8, PasskeyConfig(seq_len=T, key_len=3), hay, bos=V - 1, vocab=V, seed=1)
    k, first = b.answer.shape[1], T - b.answer.shape[1]

    def greedy(prefix: torch.Tensor) -> torch.Tensor:
        out = prefix.clone()
        with torch.no_grad():
            for _ in range(k):
                out = torch.cat([out, model(out)[:, -1].argmax(-1, keepdim=True)], 1)
        return out[:, first:]

    tokens = b.tokens.clone()
    tokens[::2, first:] = greedy(tokens[::2, :first])
    b = b._replace(tokens=tokens, answer=tokens[:, first:])
    with torch.no_grad():
        hits = passkey_hits(model(b.tokens), b)
    decoded = greedy(b.tokens[:, :first])
    assert torch.equal(hits.all(-1), (decoded == b.answer).all(-1))
    assert hits[::2].all() and passkey_accuracy(model(b.tokens), b)[0] >= 0.5
