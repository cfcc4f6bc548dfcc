"""Text the workbench trains and evaluates on, and the tokenizers that turn it into ids.

The embedded corpus is English prose that ships with every CPython: the reference-manual topics
in `pydoc_data` and the docstrings of a fixed list of standard-library modules (about 1.4 MB).
It needs no download, and for a given Python version it is the same bytes on every machine.
The user's own text (`load_corpus`: a file, a .jsonl file or a folder) is the other source.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

# Modules whose docstrings join the corpus: importable everywhere, no side effects on import.
STDLIB_MODULES = """abc argparse array ast asyncio base64 bisect builtins calendar cmd code codecs collections
colorsys concurrent.futures configparser contextlib copy copyreg csv dataclasses datetime decimal difflib dis
doctest email email.message email.utils enum filecmp fileinput fnmatch fractions ftplib functools gettext glob
graphlib gzip hashlib heapq hmac html html.parser http.client http.cookies http.server imaplib importlib inspect
io ipaddress itertools json keyword linecache locale logging logging.handlers lzma mailbox math mimetypes
multiprocessing netrc numbers operator optparse os os.path pathlib pdb pickle pickletools pkgutil platform
plistlib poplib pprint profile pstats queue quopri random re reprlib sched secrets selectors shelve shlex shutil
signal smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable
sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize trace traceback tracemalloc
types typing unicodedata unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref
xml.dom.minidom xml.etree.ElementTree xml.sax zipfile zipimport zlib""".split()

MIN_DOC_CHARS = 60  # shorter docstrings are mostly signatures, not prose
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """A list of named documents split into train and validation by a hash of each name."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]

    def text(self, split: str = "train") -> str:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        return SEPARATOR.join(self.train if split == "train" else self.validation)


def _split(name: str, docs: dict[str, str], val_every: int) -> Corpus:
    # Identical texts (inherited docstrings, repeated paragraphs) would leak across the split.
    unique: dict[str, str] = {}
    for key in sorted(docs):
        unique.setdefault(docs[key], key)
    docs = {key: text for text, key in unique.items()}  # callers refuse empty sources before this
    train, val = [], []
    for key in sorted(docs):
        bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % val_every
        (val if bucket == 0 else train).append(docs[key])
    if not train or not val:  # tiny corpora: keep at least one document on each side
        ordered = [docs[k] for k in sorted(docs)]
        if len(ordered) < 2:
            raise ValueError(f"corpus {name!r} needs at least 2 documents to split, got {len(ordered)}")
        train, val = ordered[:-1], ordered[-1:]
    return Corpus(name, tuple(train), tuple(val))


def _docstrings(module_name: str) -> dict[str, str]:
    module = importlib.import_module(module_name)
    out = {}
    doc = inspect.getdoc(module)
    if doc and len(doc) >= MIN_DOC_CHARS:
        out[module_name] = doc
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) >= MIN_DOC_CHARS:
            out[f"{module_name}.{name}"] = doc
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") or not callable(member):
                    continue
                doc = inspect.getdoc(member)
                if doc and len(doc) >= MIN_DOC_CHARS:
                    out[f"{module_name}.{name}.{attr}"] = doc
    return out


def python_docs_corpus(val_every: int = 10) -> Corpus:
    """The embedded offline corpus: pydoc topics plus standard-library docstrings.

    Deterministic for a given Python version. About 1/`val_every` of the documents (chosen by
    a hash of their names, so adding a module does not reshuffle the rest) are validation.
    """
    from pydoc_data.topics import topics

    docs = {f"topic:{k}": v.strip() for k, v in topics.items() if v.strip()}
    for module_name in STDLIB_MODULES:
        try:
            # reading a docstring can touch a deprecated alias (typing.io, typing.re), which warns
            # in the caller's notebook or test run about something none of it uses
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                docs.update({f"doc:{k}": v for k, v in _docstrings(module_name).items()})
        except ImportError:  # e.g. a Python built without sqlite3 or ssl
            continue
    return _split("python-docs", docs, val_every)


TEXT_SUFFIXES = (".txt", ".md", ".py")  # what a --corpus folder contributes; other files are ignored


def _read_utf8(path: Path) -> str:
    """The file's text, or a ValueError naming the file and the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.start} is {data[e.start : e.start + 1]!r}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _paragraphs(path: Path, key: str) -> dict[str, str]:
    return {f"{key}:{i:06d}": block.strip() for i, block in enumerate(_read_utf8(path).split("\n\n")) if block.strip()}


def _jsonl_rows(path: Path, key: str, text_field: str) -> dict[str, str]:
    docs = {}
    for i, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{path}:{i}: expected an object with a string field {text_field!r} (text_field), found {found}"
            )
        if row[text_field].strip():
            docs[f"{key}:{i:08d}"] = row[text_field]
    return docs


def _file_docs(path: Path, key: str, text_field: str) -> dict[str, str]:
    return _jsonl_rows(path, key, text_field) if path.suffix == ".jsonl" else _paragraphs(path, key)


def load_corpus(path: str | Path, text_field: str = "text", val_every: int = 20) -> Corpus:
    """The user's own text (`--corpus`): a plain UTF-8 file (one document per paragraph), a
    `.jsonl` file (one document per line's `text_field`), or a folder whose .txt/.md/.py files
    (searched recursively, empty ones skipped) are read as plain text. Named after `path`, so
    every later error (too short for a window, ...) says which corpus it means."""
    path = Path(path)
    if path.is_file():
        docs = _file_docs(path, path.name, text_field)
        if not docs:
            raise ValueError(f"{path}: the file is empty (no text to train or evaluate on)")
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in TEXT_SUFFIXES + (".jsonl",)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        docs = {}
        for f in files:
            docs.update(_file_docs(f, str(f.relative_to(path)), text_field))
        if not docs:
            raise ValueError(f"{path}: the folder holds no non-empty {'/'.join(TEXT_SUFFIXES)}/.jsonl files")
    else:
        raise FileNotFoundError(f"corpus: {path} is neither a file nor a folder")
    if len(docs) < 2:  # one document cannot be split by documents: cut it in two halves instead
        ((key, text),) = docs.items()
        cut = text.rfind(" ", 0, int(len(text) * 0.9)) + 1 or int(len(text) * 0.9)
        docs = {f"{key}:a": text[:cut], f"{key}:b": text[cut:]}
    return _split(str(path), docs, val_every)


def corpus_stream(corpus: Corpus, tokenizer: Tokenizer, split: str, window: int) -> torch.Tensor:
    """`encode_corpus`, checked to hold at least one window of `window` tokens (BOS not included):
    a too-short own corpus fails here with its name, not deep inside the activation store."""
    stream = encode_corpus(corpus, tokenizer, split)
    if len(stream) < window:
        raise ValueError(
            f"corpus {corpus.name}: its {split} split is {len(stream)} tokens, shorter than one "
            f"context window of {window} tokens: give more text"
        )
    return stream


class Tokenizer(Protocol):
    """What the workbench needs of a tokenizer: ids in, ids out, and a BOS id."""

    vocab_size: int
    bos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_str(self, token_id: int) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 and BOS as 256: lossless, no training, no files."""

    vocab_size = 257
    bos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(i for i in ids if i != self.bos_token_id).decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        if token_id == self.bos_token_id:
            return "<bos>"
        ch = chr(token_id) if token_id < 128 else f"\\x{token_id:02x}"
        return {"\n": "\\n", "\t": "\\t", " ": "␣"}.get(ch, ch)


class HFTokenizer:
    """Adapts a Hugging Face tokenizer (e.g. a pretrained TransformerLens model's) to `Tokenizer`."""

    def __init__(self, hf_tokenizer):
        self.tok = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        bos = hf_tokenizer.bos_token_id
        self.bos_token_id = bos if bos is not None else hf_tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def token_str(self, token_id: int) -> str:
        return self.tok.decode([int(token_id)])


def encode_corpus(corpus: Corpus, tokenizer: Tokenizer, split: str = "train") -> torch.Tensor:
    """The whole split as one 1-D int64 token stream (documents joined by a blank line)."""
    ids = tokenizer.encode(corpus.text(split))
    if not ids:
        raise ValueError(f"corpus {corpus.name!r} split {split!r} encodes to no tokens")
    return torch.from_numpy(np.asarray(ids, dtype=np.int64))


def windows(
    stream: torch.Tensor,
    length: int,
    *,
    bos_token_id: int,
    reverse: bool = False,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cut a token stream into [n, length + 1] sequences: BOS followed by `length` tokens.

    Without a generator the windows are consecutive and non-overlapping (validation); with one
    they start at random offsets (training). `reverse` flips each window *before* BOS is put in
    front, so forward and backward models score exactly the same tokens.
    """
    if stream.ndim != 1:
        raise ValueError(f"stream: expected a 1-D token tensor, got shape {tuple(stream.shape)}")
    if len(stream) < length:
        raise ValueError(f"stream has {len(stream)} tokens, fewer than one window of {length}")
    if generator is None:
        count = len(stream) // length if n is None else min(n, len(stream) // length)
        starts = torch.arange(count) * length
    else:
        if n is None:
            raise ValueError("n: random windows need a count")
        starts = torch.randint(0, len(stream) - length + 1, (n,), generator=generator)
    seqs = stream[starts[:, None] + torch.arange(length)]  # [n, length]
    if reverse:
        seqs = seqs.flip(-1)
    bos = torch.full((len(seqs), 1), bos_token_id, dtype=seqs.dtype)
    return torch.cat([bos, seqs], dim=1)


def unigram_entropy(stream: torch.Tensor, vocab_size: int) -> float:
    """Entropy in nats/token of the stream's unigram distribution: the loss of a model that
    ignores context; any model that learned something ends well below it."""
    counts = torch.bincount(stream, minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())
