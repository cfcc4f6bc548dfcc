from dataclasses import replace

import pytest
import torch

from workbench.corpus import ByteTokenizer, unigram_entropy
from workbench.models import (
    DEFAULT_TRAIN,
    LMTrainConfig,
    ModelConfig,
    TokenData,
    default_data,
    evaluate_lm,
    load_model,
    load_model_file,
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
