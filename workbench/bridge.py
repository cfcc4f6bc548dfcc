"""A workbench HookedTransformer served as a TransformerLens `TransformerBridge`.

TransformerLens 4 drops `HookedTransformer`; its successor wraps a Hugging Face model. The models
the workbench trains (`models.ModelConfig`: LayerNorm, learned positions, biased attention and
MLP, ReLU or GELU, untied unembedding with a bias) are exactly GPT-2's architecture but for two
fields and one tensor: `activation_function="relu"`, `tie_word_embeddings=False`, and a bias on
the unembedding (`b_U`), which `GPT2LMHeadModel.lm_head` lacks. `to_transformers` therefore
builds a GPT-2 with a biased `lm_head` (the bridge calls the module, so the bias is used) and
copies every tensor; its logits equal the HookedTransformer's to float rounding (about 1e-6 in
float32, 1e-13 in float64; tests/test_bridge.py). `as_bridge` boots the bridge on it with
`enable_compatibility_mode(no_processing=True)`: the HookedTransformer hook names, and the raw
(unfolded, uncentred) weights the workbench's own models use, so a hook reads the same numbers on
either form. The bridge needs a Hugging Face tokenizer: `byte_tokenizer` is the byte tokenizer
(`corpus.ByteTokenizer`: bytes 0..255, BOS 256) as a `PreTrainedTokenizerFast` with the same ids.

Importing this module imports neither transformers nor TransformerLens (they load on first call).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

BYTE_BOS = "<bos>"  # corpus.ByteTokenizer's BOS (id 256) as a token string

# TransformerLens 3.x warns on every HookedTransformer(...) that the class goes in 4.0 (pyproject
# pins transformer-lens < 4). The workbench's own models are built as HookedTransformers on
# purpose: their weights and hook names are the HookedTransformer layout, and `as_bridge` below
# serves any of them as a TransformerBridge. So exactly that warning is silenced where the project
# builds one (models.new_model, pretrained.load_hub); tests that build their own get the same
# filter from pyproject.toml.
HOOKED_DEPRECATION = r"HookedTransformer(\.from_pretrained)? is deprecated and will be removed"


@contextmanager
def quiet_hooked_deprecation() -> Iterator[None]:
    """Silence TransformerLens 3.x's "HookedTransformer ... will be removed" warning, only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=HOOKED_DEPRECATION, category=DeprecationWarning)
        yield


def check_convertible(model: HookedTransformer) -> None:
    """Raise a ValueError naming the config field when `model` has no GPT-2 equivalent."""
    c = model.cfg
    wanted = {
        "normalization_type": (c.normalization_type, "LN"),
        "positional_embedding_type": (c.positional_embedding_type, "standard"),
        "attn_only": (c.attn_only, False),
        "gated_mlp": (c.gated_mlp, False),
        "act_fn": (c.act_fn, ("relu", "gelu", "gelu_new")),  # the same functions under the same names in HF
        "n_key_value_heads": (c.n_key_value_heads, None),
    }
    for name, (got, ok) in wanted.items():
        if got not in (ok if isinstance(ok, tuple) else (ok,)):
            raise ValueError(
                f"model.cfg.{name}={got!r}: only GPT-2-shaped models convert to a bridge (expected {ok!r})"
            )
    if c.d_head * c.n_heads != c.d_model:
        raise ValueError(f"model.cfg: d_head*n_heads={c.d_head * c.n_heads} must equal d_model={c.d_model}")


def _gpt2_state(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """HookedTransformer state-dict names and layouts -> GPT-2's (Conv1D weights are [in, out];
    Q, K, V are concatenated along the output axis, heads outermost)."""
    import einops

    out = {
        "transformer.wte.weight": sd["embed.W_E"],
        "transformer.wpe.weight": sd["pos_embed.W_pos"],
        "transformer.ln_f.weight": sd["ln_final.w"],
        "transformer.ln_f.bias": sd["ln_final.b"],
        "lm_head.weight": sd["unembed.W_U"].T,
        "lm_head.bias": sd["unembed.b_U"],
    }
    for layer in range(n_layers):
        tl, hf = f"blocks.{layer}.", f"transformer.h.{layer}."
        qkv = [einops.rearrange(sd[f"{tl}attn.W_{x}"], "n d h -> d (n h)") for x in "QKV"]
        out |= {
            f"{hf}ln_1.weight": sd[f"{tl}ln1.w"],
            f"{hf}ln_1.bias": sd[f"{tl}ln1.b"],
            f"{hf}ln_2.weight": sd[f"{tl}ln2.w"],
            f"{hf}ln_2.bias": sd[f"{tl}ln2.b"],
            f"{hf}attn.c_attn.weight": torch.cat(qkv, dim=1),
            f"{hf}attn.c_attn.bias": torch.cat([sd[f"{tl}attn.b_{x}"].flatten() for x in "QKV"]),
            f"{hf}attn.c_proj.weight": einops.rearrange(sd[f"{tl}attn.W_O"], "n h d -> (n h) d"),
            f"{hf}attn.c_proj.bias": sd[f"{tl}attn.b_O"],
            f"{hf}mlp.c_fc.weight": sd[f"{tl}mlp.W_in"],
            f"{hf}mlp.c_fc.bias": sd[f"{tl}mlp.b_in"],
            f"{hf}mlp.c_proj.weight": sd[f"{tl}mlp.W_out"],
            f"{hf}mlp.c_proj.bias": sd[f"{tl}mlp.b_out"],
        }
    return out


def to_transformers(model: HookedTransformer, bos_token_id: int = 256) -> GPT2LMHeadModel:
    """The same network as a transformers `GPT2LMHeadModel` (eval mode, the model's dtype and
    device), with a biased `lm_head` carrying `b_U`. Dropout is 0 everywhere."""
    import transformers as tf

    check_convertible(model)
    c = model.cfg
    config = tf.GPT2Config(
        vocab_size=c.d_vocab,
        n_positions=c.n_ctx,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        n_inner=c.d_mlp,
        activation_function=c.act_fn,
        layer_norm_epsilon=c.eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=bos_token_id,
    )
    dtype = next(model.parameters()).dtype
    hf = tf.GPT2LMHeadModel(config)
    hf.lm_head = torch.nn.Linear(c.d_model, c.d_vocab, bias=True)
    hf = hf.to(dtype)
    missing, unexpected = hf.load_state_dict(_gpt2_state(model.state_dict(), c.n_layers), strict=False)
    stray = [k for k in missing if not k.endswith(".attn.bias")]  # GPT-2's causal-mask buffer
    if stray or unexpected:
        raise RuntimeError(f"GPT-2 conversion left tensors unset {stray[:3]} or unknown {unexpected[:3]}")
    return hf.to(next(model.parameters()).device).eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """`corpus.ByteTokenizer` as a Hugging Face tokenizer: byte b is id b, "<bos>" is id 256.

    Byte-level pre-tokenization (GPT-2's printable stand-in for each byte) and a BPE with no
    merges, so every byte is its own token; no regex split, so no text is merged or dropped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # bytes GPT-2 shows as themselves
    moved = [b for b in range(256) if b not in keep]
    stand_in = {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(moved)}
    vocab = {stand_in[b]: b for b in range(256)} | {BYTE_BOS: 256}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BYTE_BOS, eos_token=BYTE_BOS)
    # TransformerLens rebuilds a tokenizer from `name_or_path` unless it already adds BOS; the
    # workbench passes token ids (BOS placed by `corpus.windows`), so the flag changes nothing here.
    tok.init_kwargs.update(name_or_path="workbench-byte", add_bos_token=True)
    return tok


def as_bridge(model: HookedTransformer, name: str = "workbench-tiny", tokenizer=None) -> TransformerBridge:
    """`model` as a TransformerBridge over `to_transformers(model)`, in compatibility mode without
    weight processing (HookedTransformer hook names, the same activations at every hook)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = to_transformers(model)
    device = str(next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=tokenizer or byte_tokenizer(), device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    return bridge.eval()
