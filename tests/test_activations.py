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
    validate_hook_name,
)


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
        a, g = src.chunk(i)
        b, h = back.chunk(i)
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
