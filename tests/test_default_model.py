"""The embedded default: the copy mix it is trained on, its shipped weights, and what it can show."""

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workbench import default_model as dm
from workbench.corpus import ByteTokenizer
from workbench.models import (
    DEFAULT_MODEL,
    DEFAULT_TRAIN,
    LMTrainConfig,
    TokenData,
    default_data,
    evaluate_lm,
    train_batch,
)
from workbench.runs import CheckpointError, load_tensors

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = dm.shipped_dir()


def _toy_data() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    return TokenData(
        torch.randint(0, 256, (5000,), generator=gen), torch.randint(0, 256, (1000,), generator=gen), ByteTokenizer()
    )


def _period_tail(row: list[int], lo: int, hi: int) -> int:
    """Length of the longest tail of `row` that repeats with some period in [lo, hi] (0 if none)."""
    best = 0
    for p in range(lo, hi + 1):
        n = 0
        while n + p < len(row) and row[-1 - n] == row[-1 - n - p]:
            n += 1
        best = max(best, n + p if n >= p else 0)
    return best


def test_copy_mix_plants_repeats_in_the_chosen_share_and_the_backward_model_sees_them_reversed():
    cfg = LMTrainConfig(batch_size=400, seq_len=64, copy_frac=0.5, copy_period=(4, 12), seed=3)
    data = _toy_data()  # uniform random bytes: a natural repeat of >= 8 tokens essentially never happens
    fwd = train_batch(data, cfg, step=7)
    tails = [_period_tail(r[1:].tolist(), 4, 12) for r in fwd]
    planted = sum(t >= 8 for t in tails)
    assert 160 <= planted <= 240  # Binomial(400, 0.5): far outside this is a wrong share
    repeated = fwd[torch.tensor(tails) >= 8][:, 1:]
    assert int(repeated[:, -8:].min()) >= 32 and int(repeated[:, -8:].max()) < 127  # printable segment tokens
    bwd = train_batch(data, replace(cfg, direction="backward"), step=7)
    assert torch.equal(bwd[:, 0], fwd[:, 0]) and torch.equal(bwd[:, 1:], fwd[:, 1:].flip(-1))
    mixed = torch.tensor(tails) >= 8
    plain = train_batch(data, replace(cfg, copy_frac=0.0), step=7)
    assert torch.equal(plain[~mixed], fwd[~mixed]) and not torch.equal(plain[mixed], fwd[mixed])  # text unchanged
    with pytest.raises(ValueError, match="copy_period"):
        train_batch(data, replace(cfg, copy_period=(4, 40)), step=0)


def test_shipped_files_match_manifest_and_data_readme():
    man = dm.manifest()
    readme = (ROOT / "data" / "README.md").read_text()
    listed = dict(re.findall(r"`([\w/.-]+\.(?:safetensors|jsonl|json))` \| `([0-9a-f]{64})`", readme))
    for root in (SHIPPED, dm.primes_dir()):
        files = dm.manifest(root)["files"]
        mine = {k.split("/", 1)[1]: v for k, v in listed.items() if k.startswith(root.name + "/")}
        assert set(mine) == set(files), f"data/README.md and {root.name}/manifest.json list different files"
        total = 0
        for rel, entry in files.items():
            data = (root / rel).read_bytes()
            total += len(data)
            assert hashlib.sha256(data).hexdigest() == entry["sha256"] == mine[rel], rel
        assert total <= 20 * 2**20  # the budget for shipped weights
    for seed in dm.DEFAULT_SEEDS:
        for direction in ("forward", "backward"):
            state = load_tensors(dm.run_dir(seed, direction) / "model.safetensors")
            assert state["embed.W_E"].shape == (DEFAULT_MODEL.d_vocab, DEFAULT_MODEL.d_model)
            assert state["blocks.1.mlp.W_in"].shape == (DEFAULT_MODEL.d_model, DEFAULT_MODEL.d_mlp)
            assert sum(k.endswith("attn.W_Q") for k in state) == DEFAULT_MODEL.n_layers
            cfg = json.loads((dm.run_dir(seed, direction) / "config.json").read_text())["config"]["train"]
            assert {
                **cfg,
                "checkpoint_steps": tuple(cfg["checkpoint_steps"]),
                "copy_period": tuple(cfg["copy_period"]),
                "copy_tokens": tuple(cfg["copy_tokens"]),
            } == {**DEFAULT_TRAIN.__dict__, "seed": seed, "direction": direction}
    assert man["model"] == DEFAULT_MODEL.__dict__


def test_train_default_builds_the_shipped_architecture(tmp_path):
    short = replace(DEFAULT_TRAIN, steps=2, batch_size=2, eval_every=2, eval_windows=2, checkpoint_steps=(0,))
    dm.train_default(tmp_path / "runs", seeds=(0,), jobs=1, train_cfg=short)
    man = dm.pack(tmp_path / "runs", tmp_path / "packed", eval_windows=2)
    built = load_tensors(tmp_path / "packed" / "seed0" / "forward" / "model.safetensors")
    shipped = load_tensors(dm.run_dir(0, "forward") / "model.safetensors")
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in shipped.items()}
    assert all(v.dtype == torch.bfloat16 for v in built.values() if v.is_floating_point())
    assert set(man["files"]) == {
        "seed0/forward/model.safetensors",
        "seed0/forward/config.json",
        "seed0/forward/metrics.jsonl",
        "seed0/forward/checkpoints/step_000000.safetensors",
        "seed0/backward/model.safetensors",
        "seed0/backward/config.json",
        "seed0/backward/metrics.jsonl",
    }


def test_shipped_weights_give_the_recorded_held_out_loss():
    man, data = dm.manifest(), default_data()
    for key, recorded in man["val_loss"].items():
        seed, direction = key.split("/")
        model = dm.load_shipped(direction, int(seed[4:]))
        assert evaluate_lm(model, data, direction, man["val_windows"], DEFAULT_TRAIN.seq_len) == pytest.approx(
            recorded, abs=1e-5
        ), key
    assert man["val_loss"]["seed0/forward"] < 2.12  # better than the default it replaced


def test_missing_or_corrupt_shipped_weights_name_the_file_and_the_rebuild_command(tmp_path):
    root = tmp_path / "workbench-tiny"
    shutil.copytree(SHIPPED, root)
    target = dm.run_dir(0, "backward", root) / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"seed0/backward/model\.safetensors is corrupt.*train-default"):
        dm.load_shipped("backward", 0, root=root)
    target.unlink()
    with pytest.raises(FileNotFoundError, match=r"seed0/backward/model\.safetensors is missing.*train-default"):
        dm.load_shipped("backward", 0, root=root)
    (root / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing.*train-default"):
        dm.load_shipped("forward", 0, root=root)


def test_shipped_default_shows_retrieval_and_streaming_heads_and_lazier_neurons():
    """Issue 13's targets, on the model `load_model("workbench-tiny")` returns."""
    from workbench.corpus import windows
    from workbench.probes.heads import HeadRoleConfig, head_roles
    from workbench.probes.sparsity import activation_sparsity

    model = dm.load_shipped("forward", 0)
    gen = torch.Generator().manual_seed(1)
    r = torch.randint(32, 127, (32, 40), generator=gen)
    seqs = torch.cat([torch.full((32, 1), 256), r, r], dim=1)
    with torch.no_grad():
        second = model(seqs).argmax(-1)[:, 41:-1]  # predictions of r[1:] while reading the second copy
    assert float((second == seqs[:, 42:]).float().mean()) >= 0.9
    roles = head_roles(model, HeadRoleConfig(), bos=256)
    assert roles.copy_accuracy >= 0.9 and max(max(row) for row in roles.tl_scores["induction"]) >= 0.4
    cells = [(l, h) for l in range(2) for h in range(4)]
    assert any(
        roles.labels[l][h] == "retrieval" and roles.retrieval[l][h] >= 0.3 and roles.delta_loss[l][h] >= 0.5
        for l, h in cells
    )
    assert any(
        roles.labels[l][h] == "streaming" and roles.streaming[l][h] >= 0.7 and abs(roles.delta_loss[l][h]) <= 0.05
        for l, h in cells
    )
    data = default_data()
    val = windows(data.validation, 128, bos_token_id=256, n=32)
    final = activation_sparsity(model, val).active_frac
    init = activation_sparsity(dm.load_shipped("forward", 0, checkpoint_step=0), val).active_frac
    # Measured: 26.1% / 20.3% active against 48.5% / 49.5% at initialisation. Layer 1 is under half
    # of its initial share; layer 0 is at 54%, short of the aim (RESULTS.md says so).
    assert all(f <= 0.6 * i for f, i in zip(final, init)) and final[1] <= 0.5 * init[1], (final, init)


def test_pairs_and_shipped_weights_share_one_layout(tmp_path):
    """What train_pairs writes, pack ships and load_shipped reads back (bf16), all through
    models.pair_dir; the primes recipe is the shipped default's module's."""
    from workbench.models import ModelConfig, pair_dir, train_pairs

    assert dm.run_dir(2, "backward", tmp_path) == pair_dir(tmp_path, 2, "backward")
    assert dm.run_dir(0, "forward") == pair_dir(SHIPPED, 0, "forward")
    small = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=17)
    cfg = replace(dm.PRIMES_TRAIN, steps=2, seq_len=16, eval_every=2, eval_windows=2)
    data = dm.primes_data(n_train=300, n_val=100)
    pairs = train_pairs(small, cfg, data, tmp_path / "runs", seeds=(0, 3), progress=False)
    man = dm.pack(
        tmp_path / "runs", tmp_path / "packed", 2, model_cfg=small, data=data, seq_len=16, checkpoints_of=None
    )
    assert set(man["val_loss"]) == {"seed0/forward", "seed0/backward", "seed3/forward", "seed3/backward"}
    back = dm.load_shipped("backward", 3, tmp_path / "packed", model_cfg=small)
    assert torch.equal(back.W_E, pairs[1][1].W_E.to(torch.bfloat16).float())


def test_primes_recipe_lives_beside_the_default():
    """primes_data: 'p*q=r' lines, p < q primes below 100, r the product's digits reversed."""
    data = dm.primes_data(n_train=50, n_val=10)
    lines = bytes(data.train.tolist()).decode().strip().splitlines()
    assert len(lines) == 50 and data.tokenizer.bos_token_id == 256
    for line in lines:
        p, q, r = map(int, re.fullmatch(r"(\d\d)\*(\d\d)=(\d{4})", line).groups())
        assert p < q < 100 and all(n % k for n in (p, q) for k in range(2, n)) and int(str(r).zfill(4)[::-1]) == p * q
    assert dm.PRIMES_MODEL.n_ctx == dm.PRIMES_TRAIN.seq_len + 1  # BOS + one window
