"""benchmarks/sae_variants.py compares variants at one budget: every run (ours and SAELens'
trainer) draws exactly steps × batch tokens with the same k and dictionary, and a swept variant
reports the lr whose run had the lowest selection-split FVU."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from workbench.tasks import SuperpositionConfig


@pytest.fixture(scope="module")
def variants():
    path = Path(__file__).parent.parent / "benchmarks" / "sae_variants.py"
    spec = importlib.util.spec_from_file_location("sae_variants", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sae_variants"] = module  # dataclasses resolve their module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_every_variant_gets_the_same_budget_and_its_best_swept_lr(variants):
    budget = variants.Budget(steps=24, batch=256, k=3, d_sae=40, lrs=(1e-3, 6e-3), warmup_steps=5, dead_tokens=2_000)
    names = ("TopK + AuxK", "Mutual Choice + AuxK", variants.SAELENS)
    rows = variants.synthetic_table(SuperpositionConfig(d=12, n_features=20), budget, lambda n: n in names)
    assert [r["variant"] for r in rows] == list(names)
    for r in rows:
        assert (r["tokens"], r["steps"], r["batch"], r["k"], r["d_sae"]) == (24 * 256, 24, 256, 3, 40)
        assert r["sae"].cfg.k == 3 and r["sae"].cfg.d_sae == 40
        assert [s["lr"] for s in r["sweep"]] == [1e-3, 6e-3]
        assert r["lr"] == min(r["sweep"], key=lambda s: s["fvu_select"])["lr"]
        assert 0 < r["mmcs"] <= 1 and math.isfinite(r["fvu"])
    assert "each variant at its best lr of {0.001, 0.006}" in budget.describe()
    assert "one shared lr 0.002" in variants.Budget(10, 64, 2, 8, (2e-3,)).describe()


def test_a_run_that_draws_another_budget_is_refused(variants):
    budget = variants.Budget(steps=4, batch=64, k=2, d_sae=8, lrs=(1e-3,))

    def over_budget(lr):
        return None, budget.tokens + 64, 0.0

    with pytest.raises(RuntimeError, match="drew 320 training tokens, the budget is 256"):
        variants.best_of_sweep("TopK", over_budget, budget, [])
