"""Local Hugging Face folders, made here: tiny random GPT-2, GPT-NeoX (Pythia) and Llama (grouped-
query) models with a BPE tokenizer trained on the embedded corpus, saved with save_pretrained."""

import html
import json
import re
import shutil

import pytest
import torch

FAMILIES = ("gpt2", "neox", "llama")
TEXT = "The return value of the function is a list of strings, one for each line."


def _tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        [text],
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _hf_model(family: str, vocab: int):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    if family == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_positions=80, n_embd=32, n_layer=2, n_head=4, **common))
    if family == "neox":
        return tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(
                max_position_embeddings=80,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                **common,
            )
        )
    return tf.LlamaForCausalLM(
        tf.LlamaConfig(
            max_position_embeddings=80,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            **common,
        )
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from workbench.corpus import python_docs_corpus

    root = tmp_path_factory.mktemp("hf")
    text = python_docs_corpus().text("train")
    (root / "own.txt").write_text(text[:60_000])
    tok = _tokenizer(text[:60_000])
    out = {}
    for family in FAMILIES:
        _hf_model(family, len(tok)).save_pretrained(root / family)
        tok.save_pretrained(root / family)
        out[family] = root / family
    out["corpus"] = root / "own.txt"
    return out


def _reference(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval(),
        AutoTokenizer.from_pretrained(folder),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_model_matches_transformers(folders, family):
    from workbench.hub import load_model

    model, tok = load_model(str(folders[family]))
    ref, ref_tok = _reference(folders[family])
    assert tok.encode(TEXT) == ref_tok.encode(TEXT, add_special_tokens=False)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 32, len(ref_tok))
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(TEXT)])
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got, cache = model.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    assert (got.log_softmax(-1) - expected.logits.log_softmax(-1)).abs().max() < 1e-4
    # TransformerLens centres what each layer writes, so the residual matches up to its mean
    resid, hf_resid = cache["blocks.0.hook_resid_post"], expected.hidden_states[1]
    centred = (resid - resid.mean(-1, keepdim=True)) - (hf_resid - hf_resid.mean(-1, keepdim=True))
    assert resid.shape == (1, ids.shape[1], 32) and centred.abs().max() < 1e-4


@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_probe_hooks_on_a_folder_model(folders, family):
    """What the probes use: per-token loss, MLP ablation at mlp.hook_post, pattern replacement,
    and (Llama) the gated MLP's act(gate) through hook_pre."""
    from workbench.hub import load_model
    from workbench.probes.sparsity import hidden_activations

    model, tok = load_model(str(folders[family]))
    ref, _ = _reference(folders[family])
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(TEXT)])
    with torch.no_grad():
        logp = ref(ids).logits.log_softmax(-1)
        nll = -logp[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
        assert (model(ids, return_type="loss", loss_per_token=True)[0] - nll).abs().max() < 1e-4

        mlp = ref.transformer.h[0].mlp if family == "gpt2" else ref.model.layers[0].mlp
        down = mlp.c_proj if family == "gpt2" else mlp.down_proj
        handle = down.register_forward_pre_hook(lambda mod, args: (torch.zeros_like(args[0]),))
        ablated = ref(ids).logits.log_softmax(-1)
        handle.remove()
        got = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
        assert (got.log_softmax(-1) - ablated).abs().max() < 1e-4
        assert (ablated - logp).abs().max() > 1e-3  # the ablation is not a no-op

        def on_bos(pattern, hook):  # every query attends only to position 0
            new = torch.zeros_like(pattern)
            new[..., 0] = 1.0
            return new

        _, cache = model.run_with_cache(ids, names_filter="blocks.0.hook_attn_out")
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", on_bos)]):
            _, patched = model.run_with_cache(ids, names_filter="blocks.0.hook_attn_out")
        out = patched["blocks.0.hook_attn_out"][0]
        assert (out - out[:1]).abs().max() < 1e-5  # the replaced pattern is what the layer used
        assert (cache["blocks.0.hook_attn_out"][0] - out).abs().max() > 1e-3

        if family == "llama":
            seen = {}
            handle = mlp.act_fn.register_forward_hook(lambda mod, args, out: seen.setdefault("act", out))
            ref(ids)
            handle.remove()
            assert (hidden_activations(model, ids)[0][0] - seen["act"][0, 1:]).abs().max() < 1e-5


def test_bin_weights_load_the_same(folders, tmp_path):
    from safetensors.torch import load_file

    from workbench.hub import load_model

    folder = tmp_path / "bin"
    shutil.copytree(folders["gpt2"], folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    a, tok = load_model(str(folders["gpt2"]))
    b, _ = load_model(str(folder))
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(TEXT)])
    with torch.no_grad():
        assert torch.allclose(a(ids), b(ids), atol=1e-6)


def test_bad_folders_name_the_file_and_field(folders, tmp_path):
    from workbench.hub import load_model
    from workbench.pretrained import ModelFolderError

    def broken(name, edit=None, drop=()):
        folder = tmp_path / name
        shutil.copytree(folders["gpt2"], folder)
        for f in drop:
            (folder / f).unlink()
        if edit:
            cfg = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**cfg, **edit}))
        return str(folder)

    with pytest.raises(ModelFolderError, match=r"bert/config.json: field 'architectures' is \['BertForMaskedLM'\]"):
        load_model(broken("bert", {"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(ModelFolderError, match="notok: no tokenizer files"):
        load_model(broken("notok", drop=("tokenizer.json",)))
    with pytest.raises(
        ModelFolderError,
        match=r"wide/model.safetensors: tensor transformer.wte.weight has shape "
        r"\[400, 32\].*\[500, 32\] \(field vocab_size=500\)",
    ):
        load_model(broken("wide", {"vocab_size": 500}))
    with pytest.raises(ModelFolderError, match="noweights: no weights"):
        load_model(broken("noweights", drop=("model.safetensors",)))
    with pytest.raises(RuntimeError, match="save_pretrained"):  # neither a folder nor a reachable hub name
        load_model(str(tmp_path / "no-such-folder"))


@pytest.mark.parametrize("family", FAMILIES)
def test_sae_on_a_folder_model_through_cli_and_viewer(folders, tmp_path, family):
    from starlette.testclient import TestClient

    from workbench.__main__ import main
    from workbench.figures.sae import contexts_html
    from workbench.hub import model_for_run
    from workbench.pretrained import load_tokenizer
    from workbench.sae.evaluate import FeatureTable, features_matching
    from workbench.viewer.server import create_app

    out = tmp_path / "runs" / f"sae-{family}"
    assert (
        main(
            [
                "train-sae",
                "--model",
                str(folders[family]),
                "--corpus",
                str(folders["corpus"]),
                "--hook",
                "blocks.0.hook_resid_post",
                "--d-sae",
                "64",
                "--k",
                "4",
                "--total-tokens",
                "2048",
                "--batch-size",
                "1024",
                "--buffer-tokens",
                "4096",
                "--eval-windows",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_source"] == {
        "source": "hf-folder",
        "model": str(folders[family].resolve()),
        "tokenizer": str(folders[family].resolve()),
    }
    assert cfg["corpus"] == str(folders["corpus"].resolve())
    model, tok = model_for_run(out)
    assert model.cfg.d_vocab == 400 and tok.encode(TEXT) == load_tokenizer(folders[family]).encode(TEXT)
    results = json.loads((out / "results.json").read_text())
    table = FeatureTable.load(out / "features.safetensors")
    assert table.tokens.shape == (8, model.cfg.n_ctx) and int(table.tokens.max()) >= 257  # BPE ids, not bytes

    client = TestClient(create_app(out.parent), base_url="http://127.0.0.1")  # the viewer checks Host
    page = client.get(f"/run/{out.name}")
    assert page.status_code == 200 and f"<th>fvu</th><td>{results['fvu']:.4g}</td>" in page.text
    f = int(table.density.argmax())
    got = client.get(f"/api/run/{out.name}/feature/{f}").json()["contexts_html"]
    assert got == contexts_html(table, f, tok)
    spans = re.findall(r'title="[^"]*">([^<]*)</span>', got)
    assert any(len(html.unescape(s)) > 1 for s in spans)  # multi-character BPE tokens, decoded by the run's own
    word = tok.token_str(int(table.tokens[0, 1]))
    found = client.get(f"/api/run/{out.name}/search", params={"q": word}).json()["features"]
    assert found == features_matching(table, tok.encode(word))


def test_cache_acts_on_own_text_then_train_from_the_cache(folders, tmp_path):
    from workbench.__main__ import main
    from workbench.activations import CachedSource

    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache-acts",
                "--model",
                str(folders["llama"]),
                "--corpus",
                str(folders["corpus"]),
                "--hook",
                "blocks.1.hook_resid_post",
                "--tokens",
                "2048",
                "--shard-tokens",
                "1024",
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    meta = CachedSource(cache).manifest["metadata"]
    assert (meta["model"], meta["corpus"]) == (str(folders["llama"].resolve()), str(folders["corpus"].resolve()))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train-sae",
                "--cache",
                str(cache),
                "--d-sae",
                "64",
                "--k",
                "4",
                "--total-tokens",
                "2048",
                "--batch-size",
                "1024",
                "--no-eval",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_source"]["model"] == str(folders["llama"].resolve()) and cfg["config"]["sae"]["d_in"] == 32
    assert cfg["corpus"] == str(folders["corpus"].resolve()) and not (out / "results.json").exists()
    with pytest.raises(ValueError, match="own.txt: its train split is .* shorter than one context window"):
        short = tmp_path / "own.txt"
        short.write_text("too short\n\nfor a window")
        main(
            [
                "cache-acts",
                "--model",
                str(folders["llama"]),
                "--corpus",
                str(short),
                "--hook",
                "blocks.1.hook_resid_post",
                "--tokens",
                "1024",
                "--shard-tokens",
                "1024",
                "--out",
                str(tmp_path / "c2"),
            ]
        )


@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_duo_gates_read_hidden_states_on_a_folder_model(folders, family):
    """DuoAttention's distance is taken on hidden states, not logits, on a TransformerBridge too (its
    forward ignores `stop_at_layer`): the states after the final norm equal transformers' last hidden
    state, and a short optimisation runs and moves the gates."""
    from workbench.hub import load_model
    from workbench.probes.duo import DuoConfig, PasskeyConfig, _state_hook, _states, duo_gates

    model, tok = load_model(str(folders[family]))
    ref, _ = _reference(folders[family])
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(TEXT)])
    with torch.no_grad():
        h = _states(model, ids, _state_hook(model, "paper"))
        assert h.shape == (1, ids.shape[1], 32)
        assert (h - ref(ids, output_hidden_states=True).hidden_states[-1]).abs().max() < 1e-4
        assert _states(model, ids, _state_hook(model, "relative")).shape == (1, ids.shape[1], 32)
    stream = torch.tensor(tok.encode((folders["corpus"]).read_text()[:20_000]))
    cfg = DuoConfig(n_contexts=4, batch_size=2, steps=3, passkey=PasskeyConfig(seq_len=80))
    res = duo_gates(model, cfg, haystack=stream, bos=tok.bos_token_id, tokenizer=tok, progress=False)
    assert len(res.alphas) == 2 and min(min(r) for r in res.alphas) < 1.0


def test_a_gguf_run_reads_its_tokenizer_without_loading_the_model(folders, tmp_path, monkeypatch):
    """A GGUF model's record has its own source, so tokenizer_for_run reads the converted folder's
    tokenizer files and no weights (planted: the gpt2 folder stands for the converted one); a run
    recorded before, as a TransformerLens name, reads the same way."""
    from workbench import hub
    from workbench.pretrained import ModelFolderError, load_tokenizer
    from workbench.runs import RunDir

    name = "smollm2-135m-instruct-q4"
    assert hub.model_record(name) == {"source": "gguf", "model": name, "tokenizer": name}
    asked = []
    monkeypatch.setattr(hub, "gguf_folder", lambda n: asked.append(n) or folders["gpt2"])

    def no_weights(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hub, "load_pretrained", no_weights)
    expected = load_tokenizer(folders["gpt2"]).encode(TEXT)
    old = {"source": "transformer-lens", "model": name, "tokenizer": name}
    for rec in (hub.model_record(name), old):
        run = RunDir(tmp_path / rec["source"])
        (run.path / "config.json").write_text(json.dumps({"kind": "sae", "config": {}, "model_source": rec}))
        assert hub.tokenizer_for_run(run.path).encode(TEXT) == expected
    assert asked == [name, name]
    with pytest.raises(AssertionError, match="the model was loaded"):  # the model itself: from the same folder
        hub.model_for_run(tmp_path / "gguf")
    assert asked == [name] * 3
    rec = {"source": "gguf", "model": "smollm9-q2", "tokenizer": "smollm9-q2"}
    (tmp_path / "gguf" / "config.json").write_text(json.dumps({"kind": "sae", "model_source": rec}))
    for read in (hub.tokenizer_for_run, hub.model_for_run):
        with pytest.raises(ModelFolderError, match=r"gguf/config.json: the run's GGUF model 'smollm9-q2' is not one"):
            read(tmp_path / "gguf")
