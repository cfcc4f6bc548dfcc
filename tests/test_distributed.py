"""Two gloo processes under torchrun train the same SAE as one process, in both layouts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.__main__ import main as cli
from workbench.activations import ActivationStore, CachedSource, TensorSource, cache_activations
from workbench.runs import RunDir, load_tensors
from workbench.sae import load_sae, train_sae
from workbench.sae.selection import topk_mask
from workbench.tasks import SuperpositionConfig, superposition_data

from .dist_worker import BATCH, CASES, GROWN, RESUMED, STEPS, STOP_AT, D, configs, name, store, tie_scores

WORKER = Path(__file__).with_name("dist_worker.py")


def torchrun(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    data = superposition_data(SuperpositionConfig(d=D, n_features=48, mean_active=3.0, seed=3), 2048)
    out = tmp_path_factory.mktemp("cache")
    # two shards of 8 batches: 12 steps cross a shard boundary
    cache_activations(
        TensorSource(data.acts, data.grads, chunk_size=1024),
        out,
        2,
        progress=False,
        metadata={"hook_name": "synthetic", "model": "superposition"},
    )
    return out


@pytest.fixture(scope="module")
def two_ranks(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    sae_cfg, train = configs(GROWN)  # a one-process checkpoint for the two ranks to resume
    train_sae(
        sae_cfg, train, store(cache, train), RunDir(out / ("grown-" + name(GROWN))), stop_after=STOP_AT, progress=False
    )
    torchrun(str(WORKER), str(cache), str(out), cwd=out)
    return out


def _single(cache: Path, case: tuple, folder: Path) -> RunDir:
    sae_cfg, train = configs(case)
    train_sae(sae_cfg, train, store(cache, train), RunDir(folder), progress=False)
    return RunDir(folder)


def _assert_same_run(a: Path, b: Path) -> None:
    """Same float64 weights (to summation-order noise) and the same losses at every step."""
    wa, wb = load_tensors(a / "sae.safetensors"), load_tensors(b / "sae.safetensors")
    assert wa.keys() == wb.keys() and wa["W_dec"].dtype == torch.float64
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-9, rtol=1e-9), key
    ma, mb = RunDir(a).metrics(), RunDir(b).metrics()
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb):
        for key in ("loss", "fvu", "aux", "l0", "dead_frac", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-9, abs=1e-12), (x["step"], key)


@pytest.mark.parametrize("case", CASES, ids=name)
def test_two_ranks_equal_one_process(cache, two_ranks, tmp_path, case):
    one = _single(cache, case, tmp_path / "one")
    _assert_same_run(one.path, two_ranks / name(case))
    metrics = one.metrics()
    assert max(m["dead_frac"] for m in metrics) > 0 and max(m["aux"] for m in metrics) > 0  # aux loss ran
    assert metrics[-1]["fvu"] < metrics[0]["fvu"]


@pytest.mark.parametrize("case", RESUMED, ids=name)
def test_two_rank_checkpoint_resumes_on_one_process(cache, two_ranks, tmp_path, case):
    run = tmp_path / "resumed"
    shutil.copytree(two_ranks / ("resumed-" + name(case)), run)
    assert not (run / "sae.safetensors").exists()  # the 2-rank run stopped at its checkpoint
    _single(cache, case, run)
    _assert_same_run(run, _single(cache, case, tmp_path / "uninterrupted").path)


def test_one_process_checkpoint_resumes_on_two_ranks(cache, two_ranks, tmp_path):
    grown = two_ranks / ("grown-" + name(GROWN))
    assert [m["step"] for m in RunDir(grown).metrics()] == list(range(STEPS))  # no step logged twice
    _assert_same_run(grown, _single(cache, GROWN, tmp_path / "uninterrupted").path)


def test_merged_selection_breaks_ties_like_one_process(two_ranks):
    got = torch.load(two_ranks / "ties.pt", weights_only=True)
    tokens, latents = tie_scores()
    assert torch.equal(got["per_token"], topk_mask(tokens, 7))
    assert torch.equal(got["flat"], topk_mask(tokens.reshape(1, -1), 30).view_as(tokens))
    assert torch.equal(got["per_latent"], topk_mask(latents, torch.arange(40) % 9))


def test_ranks_read_disjoint_rows_of_a_cache(cache):
    """Rank r reads only its slice of each global batch; together the ranks read each row once."""
    one = ActivationStore(CachedSource(cache), BATCH, seed=0)
    ranks = [ActivationStore(CachedSource(cache), BATCH, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):  # crosses into the second shard
        whole = next(one).acts
        parts = [next(s).acts for s in ranks]
        assert torch.equal(torch.cat(parts), whole)
    for s in ranks:  # what a rank holds of a chunk: its rows only
        assert len(s._chunk.acts) == 1024 // 2


def test_torchrun_command_line_equals_one_process(cache, tmp_path):
    flags = [
        "train-sae",
        "--cache",
        str(cache),
        "--d-sae",
        "64",
        "--k",
        "4",
        "--selection",
        "mutual_choice",
        "--total-tokens",
        str(10 * BATCH),
        "--batch-size",
        str(BATCH),
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--dead-tokens",
        str(2 * BATCH),
        "--log-every",
        "1",
        "--dtype",
        "float64",
    ]
    torchrun("-m", "workbench", *flags, "--parallel", "latent", "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert cli(flags + ["--out", str(tmp_path / "one")]) == 0
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert load_sae(tmp_path / "two").cfg.hook_name == "synthetic"


def test_layout_errors(cache):
    sae_cfg, train = configs(CASES[0])
    bad = ActivationStore(CachedSource(cache), BATCH, rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank 1 of 2"):
        train_sae(sae_cfg, train, bad, progress=False)
    with pytest.raises(ValueError, match="parallel='pipeline'"):
        train_sae(
            sae_cfg, type(train)(**{**train.__dict__, "parallel": "pipeline"}), store(cache, train), progress=False
        )


def test_sharded_init_equals_one_process_rows():
    """A rank draws only the init blocks its latents lie in, and gets one process's rows."""
    from workbench.sae.model import INIT_BLOCK, init_rows

    F = 2 * INIT_BLOCK + 100  # three blocks, the last one short
    whole = init_rows(F, 8, seed=5, rows=slice(0, F))
    assert torch.allclose(whole.norm(dim=1), torch.ones(F))
    for rows in (slice(0, F // 2), slice(F // 2, F), slice(INIT_BLOCK - 3, INIT_BLOCK + 3), slice(F - 1, F)):
        assert torch.equal(init_rows(F, 8, seed=5, rows=rows), whole[rows])


def test_latent_layout_needs_divisible_dictionary():
    from workbench.sae.parallel import Layout

    assert Layout("latent", 2, 4).latent_slice(64) == slice(32, 48)
    assert Layout("data", 1, 4).latent_slice(64) == slice(0, 64)  # data parallel holds every latent
    with pytest.raises(ValueError, match="d_sae=64 must be divisible by the 3 ranks"):
        Layout("latent", 0, 3).latent_slice(64)
