import json

import pytest
import torch

from workbench.activations import (
    ActivationStore,
    CachedSource,
    ModelSource,
    StoreConfig,
    TensorSource,
    cache_activations,
    capture,
    hook_dim,
    split_heads,
    validate_hook_name,
)
from workbench.corpus import windows


def _stream():
    return torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))


def test_unknown_hook_lists_close_matches(tiny_model):
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
        validate_hook_name(tiny_model, "blocks.1.hook_resid_pots")
    validate_hook_name(tiny_model, "blocks.1.mlp.hook_post")


def test_store_shapes_and_exact_resume(tiny_model):
    cfg = StoreConfig("blocks.0.hook_resid_post", batch_size=64, buffer_tokens=256, seq_len=16)
    src = ModelSource(tiny_model, _stream(), cfg, bos_token_id=256)
    store = ActivationStore(src, cfg.batch_size, seed=3)
    batches = [next(store).acts for _ in range(7)]  # crosses a chunk boundary (4 per chunk)
    assert all(b.shape == (64, 32) for b in batches)
    resumed = ActivationStore(src, cfg.batch_size, seed=3)
    partial = ActivationStore(src, cfg.batch_size, seed=3)
    for _ in range(5):
        next(partial)
    resumed.load_state_dict(partial.state_dict())
    assert torch.equal(next(resumed).acts, batches[5]) and torch.equal(next(resumed).acts, batches[6])
    # a chunk is a shuffle of the activations of its windows: no BOS rows, nothing duplicated
    chunk = torch.cat(batches[:4])
    assert torch.unique(chunk, dim=0).shape[0] == 256


def test_ranks_split_global_batches(tiny_model):
    acts = torch.randn(512, 8)
    one = ActivationStore(TensorSource(acts), 128, seed=0)
    parts = [ActivationStore(TensorSource(acts), 128, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = next(one).acts
        assert torch.equal(torch.cat([next(p).acts for p in parts]), whole)


def test_captured_gradients_equal_autograd(tiny_model):
    tokens = torch.randint(0, 257, (3, 12))
    hook = "blocks.0.hook_resid_mid"
    acts, grads = capture(tiny_model, tokens, hook, with_grads=True)
    saved = {}

    def keep(act, hook):
        act.retain_grad()
        saved["a"] = act

    with tiny_model.hooks(fwd_hooks=[(hook, keep)]):
        loss = tiny_model(tokens, return_type="loss", loss_per_token=True).sum()
    loss.backward()
    torch.testing.assert_close(acts, saved["a"].detach())
    torch.testing.assert_close(grads, saved["a"].grad, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in tiny_model.parameters())  # capture restores the flags


def test_cache_round_trip_with_grads(tiny_model, tmp_path):
    cfg = StoreConfig("blocks.1.hook_resid_post", batch_size=32, buffer_tokens=128, seq_len=16, with_grads=True)
    src = ModelSource(tiny_model, _stream(), cfg, bos_token_id=256)
    cache_activations(src, tmp_path / "cache", n_chunks=3, progress=False)
    back = CachedSource(tmp_path / "cache")
    assert back.d == 32 and back.has_grads and back.n_tokens == 384
    for i in range(3):
        a, g, _ = src.chunk(i)
        b, h, _ = back.chunk(i)
        assert torch.equal(a, b) and torch.equal(g, h)
    live = ActivationStore(src, 32, seed=0)
    cached = ActivationStore(back, 32, seed=0)
    for _ in range(6):
        x, y = next(live), next(cached)
        assert torch.equal(x.acts, y.acts) and torch.equal(x.grads, y.grads)


def test_head_computes_chunk_zero_once_and_reads_only_its_rows(tiny_model, tmp_path):
    """train_sae's b_dec comes from store.head(): a live source's chunk 0 is computed once (then
    serves the first batches), a disk cache reads just the head rows, and batches are unchanged."""
    cfg = StoreConfig("blocks.1.hook_resid_post", batch_size=32, buffer_tokens=128, seq_len=16)
    src = ModelSource(tiny_model, _stream(), cfg, bos_token_id=256)
    calls = []
    chunk = src.chunk
    src.chunk = lambda i: calls.append(i) or chunk(i)
    store = ActivationStore(src, 32, seed=0)
    torch.testing.assert_close(store.head(20), chunk(0).acts[:20])
    batches = [next(store).acts for _ in range(5)]  # chunk 0 has 4 batches: chunk 1 follows
    assert calls == [0, 1]
    fresh = ActivationStore(ModelSource(tiny_model, _stream(), cfg, bos_token_id=256), 32, seed=0)
    assert all(torch.equal(a, next(fresh).acts) for a in batches)

    cache_activations(
        ModelSource(tiny_model, _stream(), cfg, bos_token_id=256), tmp_path / "c", n_chunks=2, progress=False
    )
    back = CachedSource(tmp_path / "c")
    back.chunk = None  # head() must not load a whole shard
    torch.testing.assert_close(ActivationStore(back, 32).head(500), chunk(0).acts)  # capped at the chunk


def test_bad_inputs_get_clear_errors(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="NaN"):
        TensorSource(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="grads"):
        TensorSource(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(FileNotFoundError, match="manifest"):
        CachedSource(tmp_path)
    with pytest.raises(ValueError, match="n_ctx"):
        ModelSource(tiny_model, _stream(), StoreConfig("blocks.0.hook_resid_post", seq_len=64), 256)


def test_hook_z_rows_are_one_per_token_with_the_heads_concatenated(default_models):
    """On the default's blocks.1.attn.hook_z: 128-wide rows (4 heads x 32), one per token, each the
    token's four head vectors side by side; pooling the heads gave 32-wide rows, four per token."""
    model = default_models[0]
    hook = "blocks.1.attn.hook_z"
    assert hook_dim(model, hook) == model.cfg.n_heads * model.cfg.d_head == 128
    cfg = StoreConfig(hook, batch_size=64, buffer_tokens=256, seq_len=16)
    src = ModelSource(model, _stream(), cfg, bos_token_id=256)
    rows = src.chunk(0).acts
    assert rows.shape == (256, 128)  # 16 windows x 16 tokens, BOS left out
    gen = torch.Generator().manual_seed(cfg.seed * 7_919)
    seqs = windows(_stream(), 16, bos_token_id=256, n=16, generator=gen)
    _, cache = model.run_with_cache(seqs, names_filter=hook)
    z = cache[hook][:, 1:]  # [16, 16, heads, d_head]
    for h in range(4):
        torch.testing.assert_close(rows[:, 32 * h : 32 * (h + 1)], z[:, :, h].reshape(-1, 32), rtol=0, atol=0)
    batch = next(ActivationStore(src, 64, seed=0)).acts
    assert batch.shape == (64, 128)
    assert all(any(torch.equal(r, q) for q in rows) for r in batch[:8])  # whole tokens, shuffled


def test_head_axis_gradients_and_cache_round_trip(tiny_model, tmp_path):
    """Gradients at hook_z are laid out like the activations (heads concatenated); a cache of hook_z
    records the token row layout and reads back as it was written."""
    tokens = torch.randint(0, 257, (2, 9))
    hook = "blocks.0.attn.hook_z"
    acts, grads = capture(tiny_model, tokens, hook, with_grads=True)
    saved = {}

    def keep(act, hook):
        act.retain_grad()
        saved["a"] = act

    with tiny_model.hooks(fwd_hooks=[(hook, keep)]):
        tiny_model(tokens, return_type="loss", loss_per_token=True).sum().backward()
    assert acts.shape == grads.shape == (2, 9, 32)
    torch.testing.assert_close(grads, saved["a"].grad.flatten(-2), rtol=1e-5, atol=1e-7)
    assert torch.equal(split_heads(acts, saved["a"].shape), saved["a"].detach())
    cfg = StoreConfig(hook, batch_size=32, buffer_tokens=64, seq_len=16)
    src = ModelSource(tiny_model, _stream(), cfg, bos_token_id=256)
    cache_activations(src, tmp_path / "z", n_chunks=1, metadata={"hook_name": hook}, progress=False)
    back = CachedSource(tmp_path / "z")
    assert back.d == 32 and torch.equal(back.chunk(0).acts, src.chunk(0).acts)


def test_pooled_head_caches_and_non_token_hooks_are_refused(tiny_model, tmp_path):
    """A cache written before the fix (no row layout, a head-axis hook) names why and how to redo it;
    an attention pattern has no row per token."""
    cfg = StoreConfig("blocks.0.attn.hook_z", batch_size=32, buffer_tokens=64, seq_len=16)
    src = ModelSource(tiny_model, _stream(), cfg, bos_token_id=256)
    cache_activations(src, tmp_path / "old", n_chunks=1, metadata={"hook_name": cfg.hook_name}, progress=False)
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["rows"]
    manifest["d"] = 8  # one head's width, as the pooled store wrote it
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"one row per attention head \(d=8.*cache-acts"):
        CachedSource(tmp_path / "old")
    with pytest.raises(ValueError, match="hook_pattern.*one row per token"):
        hook_dim(tiny_model, "blocks.0.attn.hook_pattern")
