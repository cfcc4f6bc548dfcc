"""Token streams for language-model training and held-out measurement: a leaf the probes can read
without importing the trainer (`models.py` re-exports both names)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int

from .corpus import ByteTokenizer, Tokenizer, encode_corpus, python_docs_corpus


@dataclass
class TokenData:
    """A train and a validation token stream and the tokenizer that made them."""

    train: Int[torch.Tensor, " n_train"]  # 1-D token ids, documents joined
    validation: Int[torch.Tensor, " n_val"]  # held out: validation loss, probes
    tokenizer: Tokenizer = field(repr=False)  # its bos_token_id starts every window


def default_data() -> TokenData:
    """The embedded Python-docs corpus, byte-tokenized: what `workbench-tiny` was trained on."""
    corpus, tok = python_docs_corpus(), ByteTokenizer()
    return TokenData(encode_corpus(corpus, tok, "train"), encode_corpus(corpus, tok, "validation"), tok)
