import pytest
import torch

from workbench.corpus import (ByteTokenizer, python_docs_corpus, text_files_corpus, unigram_entropy,
                              windows)


def test_python_docs_corpus_is_deterministic_and_split():
    a, b = python_docs_corpus(), python_docs_corpus()
    assert a.fingerprint() == b.fingerprint()
    n_train, n_val = len(a.text("train")), len(a.text("validation"))
    assert 1_000_000 < n_train + n_val < 2_500_000
    assert 0.04 < n_val / (n_train + n_val) < 0.2
    assert not set(a.train) & set(a.validation)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ** 2  # ünïcödé → ok"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.decode([tok.bos_token_id] + ids) == text
    with pytest.raises(ValueError, match="ids"):
        tok.decode([300])


def test_windows_reverse_scores_the_same_tokens():
    stream = torch.arange(100)
    fwd = windows(stream, 10, bos_token_id=999, n=4)
    bwd = windows(stream, 10, bos_token_id=999, n=4, reverse=True)
    assert (fwd[:, 0] == 999).all() and (bwd[:, 0] == 999).all()
    assert torch.equal(bwd[:, 1:], fwd[:, 1:].flip(-1))
    assert torch.equal(fwd[1, 1:], torch.arange(10, 20))


def test_unigram_entropy_of_uniform_stream():
    stream = torch.arange(256).repeat(4)
    assert unigram_entropy(stream, 257) == pytest.approx(torch.log(torch.tensor(256.0)).item())


def test_empty_corpus_gets_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="empty"):
        text_files_corpus([empty])
    with pytest.raises(FileNotFoundError, match="paths"):
        text_files_corpus([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(torch.arange(5), 10, bos_token_id=0)
