"""Training health (workbench/sae/health.py): every alarm fires on its planted failure, none on
healthy runs of three seeds, and the reported statistics match float64 references."""

import json
import math

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.runs import RunDir
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.health import (
    DENSITY_BINS,
    HealthConfig,
    HealthMonitor,
    density_histogram,
    max_decoder_cosine,
    probe,
)
from workbench.sae.selection import MutualChoice
from workbench.tasks import SuperpositionConfig, superposition_data

F, K, BATCH, STEPS = 192, 4, 256, 250
HEALTH = HealthConfig(every=25, warmup=50, probe_tokens=256)


@pytest.fixture(scope="module")
def data():
    return superposition_data(SuperpositionConfig(seed=0), 40_000)


class Planted(HealthMonitor):
    """A HealthMonitor whose `plant(step, sae)` breaks the SAE after each optimizer step."""

    def __init__(self, plant, cfg=HEALTH):
        super().__init__(cfg)
        self.plant = plant

    def observe(self, step, sae, x, res):
        with torch.no_grad():
            self.plant(step, sae)
        return super().observe(step, sae, x, res)


def _train(data, monitor, rule="topk", seed=0, lr=None, run=None):
    store = ActivationStore(TensorSource(data.acts, data.grads, chunk_size=20_000), BATCH, seed=seed)
    cfg = SAEConfig(d_in=32, d_sae=F, k=K, selection=rule, dead_tokens=20_000)
    train = SAETrainConfig(total_tokens=STEPS * BATCH, batch_size=BATCH, lr=lr, warmup_steps=20, seed=seed)
    train_sae(cfg, train, store, run, progress=False, monitor=monitor)
    return monitor


def _raised(monitor: HealthMonitor) -> set[str]:
    return {name for r in monitor.reports for name in r["alarms_active"]}


@pytest.mark.parametrize(("rule", "seed"), [("topk", 0), ("mutual_choice", 1), ("feature_choice", 2)])
def test_healthy_runs_raise_nothing(data, rule, seed):
    monitor = _train(data, HealthMonitor(HEALTH), rule, seed)
    assert len(monitor.reports) == STEPS // HEALTH.every
    assert _raised(monitor) == set()
    last = monitor.reports[-1]
    assert last["l0_target"] == K and abs(last["l0_infer"] - K) < 1.5
    assert 0.8 < last["scale_fit"] < 1.2 and last["max_dec_cos"] < HEALTH.dup_cosine


def _duplicate(step, sae):
    if step == 0:  # rows 10..19 become copies of rows 0..9, encoder and decoder
        for p in (sae.W_enc, sae.W_dec, sae.b_enc):
            p[10:20] = p[0:10]


def _always_on(step, sae):
    if step == 0:
        sae.b_enc[5] = 100.0


def _shrink(step, sae):  # an encoder weight decay of 3% a step: Adam cannot keep up, codes shrink
    sae.W_enc.mul_(0.97)


@pytest.mark.parametrize(
    ("name", "plant", "lr"),
    [
        ("duplicate_rows", _duplicate, None),
        ("always_on", _always_on, None),
        ("shrinkage", _shrink, None),
        ("lr_too_high", lambda step, sae: None, 30 * 2e-4 / math.sqrt(F / 16384)),
    ],
)
def test_planted_failure_raises_its_alarm(data, name, plant, lr):
    monitor = _train(data, Planted(plant), lr=lr)
    assert name in _raised(monitor)
    first = next(r for r in monitor.reports if name in r["alarms_active"])
    assert first["step"] + 1 > HEALTH.warmup


def test_frozen_threshold_raises_its_alarm(data, monkeypatch):
    monkeypatch.setattr(MutualChoice, "update_threshold", lambda self, sae, cols, vals: None)
    monitor = _train(data, HealthMonitor(HEALTH), "mutual_choice", 1)
    assert "frozen_threshold" in _raised(monitor)
    assert all(r["threshold_stalled"] for r in monitor.reports[1:])


def test_alarms_reach_the_metrics_lines_once(data, tmp_path):
    run = RunDir(tmp_path / "run")
    _train(data, Planted(_always_on), run=run)
    lines = [json.loads(t) for t in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    health = [m for m in lines if "health" in m]
    assert [m["step"] for m in health] == list(range(HEALTH.every - 1, STEPS, HEALTH.every))
    alarms = [a["name"] for m in lines for a in m.get("alarms", [])]
    assert alarms.count("always_on") == 1  # raised when it starts, not at every report
    assert "threshold (" not in json.dumps(health[-1]["health"]["density_hist"])
    assert sum(health[-1]["health"]["density_hist"]["counts"]) + health[-1]["health"]["density_hist"]["never"] == F


def test_density_histogram_against_a_reference():
    counts = torch.tensor([0.0, 1.0, 10.0, 1000.0, 10_000.0, 0.0])
    h = density_histogram(counts, 10_000)
    assert h["never"] == 2 and len(h["counts"]) == DENSITY_BINS
    want = [0] * DENSITY_BINS
    for c in (1, 10, 1000, 10_000):  # log10 density -4, -3, -1, 0 (the last clipped into the top bin)
        want[min(int((math.log10(c / 10_000) + 7) / 0.25), DENSITY_BINS - 1)] += 1
    assert h["counts"] == want


def test_max_decoder_cosine_matches_the_full_matrix_in_chunks():
    torch.manual_seed(0)
    w = torch.randn(50, 8, dtype=torch.float64)
    w[7] = 3 * w[31]  # one exact duplicate direction
    w[12] = w[40] + 0.3 * torch.randn(8, dtype=torch.float64)
    wn = w / w.norm(dim=1, keepdim=True)
    full = wn @ wn.T
    full.fill_diagonal_(-1)
    for chunk in (1, 7, 64):
        best, near = max_decoder_cosine(w, 0.95, chunk)
        assert best == pytest.approx(float(full.max()), abs=1e-12)
        assert near == int((full.max(1).values > 0.95).sum())


def test_probe_scale_fit_reads_a_shrunk_reconstruction():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=8, k=7)).double().eval()
    with torch.no_grad():  # an identity code: x̂ = 0.5 x exactly for positive inputs
        sae.W_enc.copy_(torch.eye(8, dtype=torch.float64))
        sae.W_dec.copy_(0.5 * torch.eye(8, dtype=torch.float64))
    x = torch.rand(64, 8, dtype=torch.float64) + 0.1
    x[:, 7] = 0.0  # k = 7 of 8 latents: the eighth never needed
    out = probe(sae, x)
    assert out["scale_fit"] == pytest.approx(2.0, rel=1e-9)  # about b_dec = 0
    assert out["l2_ratio"] == pytest.approx(0.5, rel=1e-9)
    assert out["l0_infer"] == pytest.approx(7.0)


def test_config_names_the_field_it_refuses():
    with pytest.raises(ValueError, match="every"):
        HealthConfig(every=0)
    with pytest.raises(ValueError, match="dup_cosine"):
        HealthConfig(dup_cosine=1.5)


@pytest.mark.parametrize("off", [False, True])
def test_train_sae_on_the_command_line_reports_health_unless_told_not_to(tiny_model, tmp_path, off):
    from workbench.__main__ import main
    from workbench.activations import ModelSource, StoreConfig, cache_activations

    stream = torch.randint(0, 256, (6000,), generator=torch.Generator().manual_seed(1))
    cfg = StoreConfig("blocks.0.hook_resid_post", buffer_tokens=1024, seq_len=16)
    meta = {"hook_name": cfg.hook_name, "model": "tiny"}
    cache_activations(ModelSource(tiny_model, stream, cfg, 256), tmp_path / "c", 2, metadata=meta, progress=False)
    argv = ["train-sae", "--cache", str(tmp_path / "c"), "--d-sae", "64", "--k", "4", "--total-tokens", "3456"]
    argv += ["--batch-size", "16", "--no-eval", "--out", str(tmp_path / "run")] + (["--no-health"] if off else [])
    assert main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    health = [x for x in lines if "health" in x]
    assert (health == []) if off else (len(health) >= 2 and "density_hist" in health[-1]["health"])
