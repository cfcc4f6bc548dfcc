import pytest
import torch

from workbench.corpus import ByteTokenizer, python_docs_corpus, unigram_entropy, windows


def test_python_docs_corpus_is_deterministic_and_split():
    a, b = python_docs_corpus(), python_docs_corpus()
    assert a == b
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


def test_a_stream_shorter_than_a_window_gets_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(torch.arange(5), 10, bos_token_id=0)
    with pytest.raises(ValueError, match="stream: expected a 1-D"):
        windows(torch.zeros(2, 20, dtype=torch.long), 10, bos_token_id=0)


def test_load_corpus_reads_plain_jsonl_and_folders(tmp_path):
    import json

    from workbench.corpus import load_corpus

    paras = [f"paragraph {i} " + "word " * 20 for i in range(30)]
    plain = tmp_path / "notes.txt"
    plain.write_text("\n\n".join(paras), encoding="utf-8")
    c = load_corpus(plain)
    assert c.name == str(plain) and sorted(c.train + c.validation) == sorted(p.strip() for p in paras)
    assert c.validation and not set(c.train) & set(c.validation)

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"body": p, "id": i}) for i, p in enumerate(paras)) + "\n\n")
    assert sorted(
        load_corpus(rows, text_field="body").train + load_corpus(rows, text_field="body").validation
    ) == sorted(paras)

    folder = tmp_path / "src"
    (folder / "pkg" / ".hidden").mkdir(parents=True)
    (folder / "a.md").write_text("# Title\n\nsome markdown text")
    (folder / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (folder / "pkg" / "__init__.py").write_text("")  # empty files in a folder are skipped
    (folder / "pkg" / "data.csv").write_text("not,read")
    (folder / "pkg" / ".hidden" / "x.txt").write_text("not read either")
    docs = set(load_corpus(folder).train + load_corpus(folder).validation)
    assert docs == {"# Title", "some markdown text", "def f():\n    return 1"}


def test_own_text_errors_name_the_file(tmp_path):
    from workbench.corpus import corpus_stream, load_corpus

    latin = tmp_path / "folder" / "latin.txt"
    latin.parent.mkdir()
    (tmp_path / "folder" / "ok.txt").write_text("fine text " * 50)
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    for path in (latin, latin.parent):  # directly, and as one file of a folder
        with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8 text \(byte 3 is b'\\xe9'\)"):
            load_corpus(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_corpus(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing: the folder holds no non-empty"):
        load_corpus(tmp_path / "nothing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"txt": "two"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        load_corpus(bad)
    bad.write_text('{"text": "one"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        load_corpus(bad)
    short = tmp_path / "short.txt"
    short.write_text("a few words\n\nand a few more")
    corpus = load_corpus(short)
    with pytest.raises(
        ValueError,
        match=r"short.txt: its train split is \d+ tokens, shorter than one context "
        r"window of 128",
    ):
        corpus_stream(corpus, ByteTokenizer(), "train", 128)
    assert len(corpus_stream(corpus, ByteTokenizer(), "train", 5)) == len(corpus.text("train").encode())
    with pytest.raises(FileNotFoundError, match="corpus: .*missing"):
        load_corpus(tmp_path / "missing")
