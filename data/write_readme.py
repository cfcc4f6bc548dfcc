"""Writes data/README.md from the two manifests (run from the repository root after `train-default` packs):

python data/write_readme.py "WALL TIME OF THE DEFAULT" "WALL TIME OF THE PRIMES PAIRS"
"""

import json
import sys
from pathlib import Path

root = Path("data/workbench-tiny")
man = json.loads((root / "manifest.json").read_text())
walltime = sys.argv[1] if len(sys.argv) > 1 else "?"
primes_wall = sys.argv[2] if len(sys.argv) > 2 else "?"
pman = json.loads((Path("data/arrow-primes") / "manifest.json").read_text())
m, t = man["model"], man["train"]
lines = (
    [
        "# data/",
        "",
        "## `workbench-tiny/`: the embedded default, shipped",
        "",
        '`load_model("workbench-tiny")` loads these files; nothing is trained on first start. Three seeds of',
        "a forward/backward pair, each pair identical but for direction (the backward model reads every",
        "training window reversed, BOS first), so the arrow-of-time probe can put a seed-level interval on",
        "its gap. Seed 0 forward is the model every notebook, widget and the viewer open; its training",
        "checkpoints are shipped too (sparsity and head formation over training).",
        "",
        f"- **Architecture**: TransformerLens `HookedTransformer`, {m['n_layers']} layers, d_model {m['d_model']}, "
        f"{m['n_heads']} heads, d_mlp {m['d_mlp']}, {m['act_fn']} MLPs, LayerNorm, n_ctx {m['n_ctx']}, byte vocabulary "
        f"({m['d_vocab']} = 256 bytes + BOS). Stored as bfloat16 ({man['storage']}); loaded as float32.",
        "- **Text**: `workbench.corpus.python_docs_corpus()`: pydoc topics and docstrings of about 150 "
        "standard-library",
        "  modules of the running CPython (about 1.1 MB of training text, 0.1 MB held out, split by document).",
        f"- **Mix**: {int(100 * t['copy_frac'])}% of each batch's windows end in one random segment of printable bytes "
        f"(length {t['copy_period'][0]}-{t['copy_period'][1]}, random start, at least two periods) repeated to the "
        "window's end; the rest is plain text. The mix is what forms induction (retrieval) heads at this size "
        "(`LMTrainConfig.copy_frac`; benchmarks/RESULTS.md says what it changed).",
        f"- **Training**: {t['steps']} AdamW steps of {t['batch_size']} windows of {t['seq_len']} bytes, lr {t['lr']} "
        f"(warm-up {t['warmup_steps']}, cosine to 10%), weight decay {t['weight_decay']}, clip {t['grad_clip']}, "
        "seed s for both initialisation and batch order.",
        f"- **Rebuild**: `python -m workbench train-default` (trains all six into `runs/workbench-tiny` two at a time, "
        f"one thread each, then packs them here with a new manifest). Wall time on 2 cores: {walltime}.",
        f"- **Held-out loss** (nats/byte on the first {man['val_windows']} validation windows, each model in its own "
        "direction, measured on the packed bf16 weights; `tests/test_default_model.py` checks it):",
        "",
        "| model | held-out loss |",
        "|---|---|",
    ]
    + [f"| {k} | {v:.5f} |" for k, v in sorted(man["val_loss"].items())]
    + [
        "",
        "",
        "## `arrow-primes/`: the arrow probe's primes×product pairs, shipped",
        "",
        "Three seed pairs (same layout and manifest) of the small model the arrow-of-time probe trains on",
        "`p*q=r` lines with primes below 100 and the product's digits reversed (forward is multiplication,",
        "backward factorisation): `workbench.default_model.PRIMES_MODEL` (2 layers, d_model 64, 4 heads, d_mlp 256,",
        "ReLU, n_ctx 65) trained with `PRIMES_TRAIN` (600 steps of 32 windows of 64 bytes, lr 3e-3) on",
        "`primes_data()` (20,000 generated lines, seed 0; validation 2,000 lines, seed 1). Six models take about",
        "5 minutes on one core, too long for the demo's first start, so they are shipped.",
        f"Rebuild: `python -m workbench train-default --primes` (about {primes_wall}).",
        "",
        "| model | held-out loss (nats/byte, 256 windows) |",
        "|---|---|",
    ]
    + [f"| {k} | {v:.5f} |" for k, v in sorted(pman["val_loss"].items())]
    + [
        "",
        "## Files",
        "",
        "sha256 of every shipped file; `tests/test_default_model.py` checks each against this table and the",
        "folder's manifest.json.",
        "",
        "| file | sha256 | bytes |",
        "|---|---|---|",
    ]
    + [
        f"| `{folder}/{k}` | `{v['sha256']}` | {v['bytes']:,} |"
        for folder, mm in (("workbench-tiny", man), ("arrow-primes", pman))
        for k, v in sorted(mm["files"].items())
    ]
    + [""]
)
Path("data/README.md").write_text("\n".join(lines))
print(
    "wrote data/README.md",
    sum(v["bytes"] for v in man["files"].values()),
    sum(v["bytes"] for v in pman["files"].values()),
    "bytes",
)
