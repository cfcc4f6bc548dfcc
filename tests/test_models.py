from dataclasses import replace

import pytest
import torch

from workbench.corpus import ByteTokenizer, unigram_entropy
from workbench.hub import load_model
from workbench.models import (
    DEFAULT_TRAIN,
    LMTrainConfig,
    ModelConfig,
    TokenData,
    checkpoint_files,
    checkpoint_name,
    default_data,
    evaluate_lm,
    load_model_file,
    pair_dir,
    pair_dirs,
    pair_seeds,
    save_model,
    train_batch,
    train_lm,
)
from workbench.runs import CheckpointError, RunDir, atomic_torch_save, load_state

from .conftest import TINY_KW

TINY = ModelConfig(**TINY_KW)


def _toy_data() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    return TokenData(
        torch.randint(0, 256, (5000,), generator=gen), torch.randint(0, 256, (1000,), generator=gen), ByteTokenizer()
    )


TOY_TRAIN = LMTrainConfig(
    steps=6, batch_size=4, seq_len=16, warmup_steps=2, eval_every=3, eval_windows=4, checkpoint_steps=(0, 3)
)


def test_backward_model_sees_reversed_windows():
    data = _toy_data()
    fwd = train_batch(data, TOY_TRAIN, step=5)
    bwd = train_batch(data, replace(TOY_TRAIN, direction="backward"), step=5)
    assert torch.equal(fwd[:, 0], bwd[:, 0])  # BOS stays first
    assert torch.equal(bwd[:, 1:], fwd[:, 1:].flip(-1))


def test_resumed_training_equals_uninterrupted(tmp_path):
    data = _toy_data()
    straight = train_lm(TINY, TOY_TRAIN, data, RunDir(tmp_path / "a"), progress=False)
    run_b = RunDir(tmp_path / "b")
    train_lm(TINY, TOY_TRAIN, data, run_b, stop_after=3, progress=False)
    assert not run_b.file("model.safetensors").exists()
    resumed = train_lm(TINY, TOY_TRAIN, data, run_b, progress=False)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    steps = [m["step"] for m in run_b.metrics()]
    assert steps == list(range(6))  # no step logged twice after the resume
    assert run_b.file("checkpoints/step_000003.safetensors").exists()


def test_checkpoint_round_trip_and_corruption(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path, TINY)
    loaded = load_model_file(path, TINY)
    tokens = torch.randint(0, 257, (2, 8))
    assert torch.equal(tiny_model(tokens), loaded(tokens))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model_file(path, TINY)
    junk = tmp_path / "checkpoint.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state(junk, kind="workbench-lm")
    atomic_torch_save(junk, {"kind": "workbench-sae", "x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="expected a 'workbench-lm'"):
        load_state(junk, kind="workbench-lm")


def test_pretrained_offline_error_points_to_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="workbench-tiny"):
        load_model("gpt2")


def test_pair_layout_is_one_function(tmp_path):
    """pair_dir spells root/seed{s}/{direction}; pair_dirs and pair_seeds read the same layout."""
    assert pair_dir(tmp_path, 3, "backward") == tmp_path / "seed3" / "backward"
    assert pair_dirs(tmp_path, (0, 2)) == [
        (pair_dir(tmp_path, s, "forward"), pair_dir(tmp_path, s, "backward")) for s in (0, 2)
    ]
    for s in (10, 2):
        pair_dir(tmp_path, s, "forward").mkdir(parents=True)
    (tmp_path / "seedling").mkdir()  # not a seed folder
    (tmp_path / "seed7").write_text("a file, not a folder")
    assert pair_seeds(tmp_path) == [2, 10]  # numeric order, not "10" < "2"
    with pytest.raises(ValueError, match="direction must be 'forward' or 'backward', got 'sideways'"):
        pair_dir(tmp_path, 0, "sideways")


def test_checkpoint_files_lists_what_train_lm_kept(tmp_path):
    cfg = LMTrainConfig(steps=6, batch_size=2, seq_len=16, eval_every=3, eval_windows=2, checkpoint_steps=(0, 4))
    train_lm(TINY, cfg, _toy_data(), RunDir(tmp_path), progress=False)
    found = checkpoint_files(tmp_path)
    assert found == [
        (0, tmp_path / checkpoint_name(0)),
        (4, tmp_path / checkpoint_name(4)),
        (6, tmp_path / "model.safetensors"),
    ]
    assert checkpoint_files(tmp_path / "empty") == []


@pytest.mark.slow
def test_default_models_learn_well_below_unigram_entropy(default_models):
    data = default_data()
    entropy = unigram_entropy(data.validation, data.tokenizer.vocab_size)
    fwd, bwd = default_models
    loss_f = evaluate_lm(fwd, data, "forward", 128, DEFAULT_TRAIN.seq_len)
    loss_b = evaluate_lm(bwd, data, "backward", 128, DEFAULT_TRAIN.seq_len)
    print(f"unigram entropy {entropy:.3f} nats; forward {loss_f:.3f}, backward {loss_b:.3f}")
    assert entropy > 3.0
    assert loss_f < entropy - 0.8 and loss_b < entropy - 0.8


def test_train_pairs_layout_seeds_and_reuse(tmp_path, monkeypatch):
    """One pair per seed in pair_dir's layout, each run recording its seed and direction; a second
    call trains nothing and returns the same weights; a folder of another seed is refused."""
    import workbench.models as models
    from workbench.models import train_pairs

    cfg = LMTrainConfig(steps=4, batch_size=4, seq_len=16, warmup_steps=1, checkpoint_steps=(), eval_every=2)
    pairs = train_pairs(TINY, cfg, _toy_data(), tmp_path, seeds=(0, 1), progress=False)
    for s, (fwd_dir, bwd_dir) in zip((0, 1), pair_dirs(tmp_path, (0, 1))):
        for d, folder in (("forward", fwd_dir), ("backward", bwd_dir)):
            train = RunDir(folder).read_config()["config"]["train"]
            assert (train["seed"], train["direction"]) == (s, d)
    assert not torch.equal(pairs[0][0].W_E, pairs[1][0].W_E)  # the seed sets the initialisation
    assert not torch.equal(pairs[0][0].W_E, pairs[0][1].W_E)  # same init, reversed batches
    calls = []
    monkeypatch.setattr(models, "train_lm", lambda *a, **k: calls.append(a))
    again = train_pairs(TINY, cfg, _toy_data(), tmp_path, seeds=(0, 1), progress=False)
    assert calls == [] and torch.equal(again[1][1].W_E, pairs[1][1].W_E)
    (tmp_path / "seed9").symlink_to(tmp_path / "seed0")  # seed 0's folders offered as seed 9's
    with pytest.raises(ValueError, match="seed=0, direction=forward; expected seed=9"):
        train_pairs(TINY, cfg, _toy_data(), tmp_path, seeds=(9,), progress=False)
    with pytest.raises(ValueError, match="distinct and non-empty"):
        train_pairs(TINY, cfg, _toy_data(), tmp_path, seeds=(1, 1))
