"""The text pipeline: tokenizers, corpus discovery, the token cache and batches."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ezpz_core.errors import ConfigError, DataError
from ezpz_models.gpt import data
from ezpz_models.gpt.data import (
    BpeTokenizer,
    CharTokenizer,
    EvalBatches,
    TextBatches,
    Tokenizer,
    check_length,
    default_corpus,
    eval_batches,
    load_tokenizer,
    prepare,
    resolve_corpus,
)

SHAKESPEARE = Path("/work/shared/data/text/tinyshakespeare.txt")
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — café ☕\n" * 40


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def bpe_or_skip() -> BpeTokenizer:
    pytest.importorskip("tiktoken")
    try:
        return BpeTokenizer()
    except DataError as err:
        pytest.skip(f"tiktoken's gpt2 encoding is unavailable offline: {err}")


# ----------------------------------------------------------------------------- tokenizers


def test_char_tokenizer_round_trip_and_vocab() -> None:
    tok: Tokenizer = CharTokenizer.from_text(TEXT)
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids == [tok.chars.index(c) for c in TEXT]
    assert tok.decode(ids) == TEXT
    assert tok.encode_array(TEXT).dtype == np.int64


def test_char_tokenizer_save_load(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(TEXT)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["kind"] == "char"
    for loaded in (load_tokenizer(path), CharTokenizer.load(path)):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.chars == tok.chars
        assert loaded.encode("question") == tok.encode("question")


def test_char_tokenizer_rejects_unknown_characters_and_ids() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as err:
        tok.encode("abz")
    assert "'z'" in one_line(err)
    with pytest.raises(DataError):
        tok.decode([0, 3])
    with pytest.raises(DataError):
        tok.decode([-1])


def test_char_encoding_handles_megabytes_of_wide_characters() -> None:
    text = (TEXT + "".join(chr(c) for c in range(32, 500))) * 1700
    assert len(text) > 5_000_000
    tok = CharTokenizer.from_text(text)
    ids = tok.encode_array(text)
    assert len(ids) == len(text)
    assert tok.decode(ids[:1000].tolist()) == text[:1000]


def test_bpe_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = bpe_or_skip()
    assert tok.vocab_size == 50257
    text = "Hello world <|endoftext|> café"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == "bpe"
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.json"), BpeTokenizer)


class FakeEncoding:
    """Byte-level stand-in for tiktoken's gpt2 encoding, which needs a download."""

    n_vocab = 50257

    def encode_ordinary(self, text: str) -> list[int]:
        return [b + 1000 for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 1000 for i in ids).decode()


def test_bpe_pipeline_with_a_stand_in_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("tiktoken")
    fake.get_encoding = lambda name: FakeEncoding()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    corpus = write(tmp_path / "text.txt", TEXT)
    prepared = prepare([corpus], tokenizer_kind="bpe", cache_dir=tmp_path / "cache")
    assert isinstance(prepared.tokenizer, BpeTokenizer)
    assert prepared.tokenizer.vocab_size == 50257
    assert prepared.cache_dir.name.startswith("bpe-")
    ids = [*prepared.train.tolist(), *prepared.val.tolist()]
    assert max(ids) > 1000 and prepared.tokenizer.decode(ids) == TEXT
    again = prepare([corpus], tokenizer_kind="bpe", cache_dir=tmp_path / "cache")
    assert again.reused and isinstance(again.tokenizer, BpeTokenizer)


def test_bpe_encoding_that_fails_to_load_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> None:
        raise ConnectionError("no network\nat all")

    fake = types.ModuleType("tiktoken")
    fake.get_encoding = offline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    with pytest.raises(DataError) as err:
        BpeTokenizer()
    assert "TIKTOKEN_CACHE_DIR" in one_line(err)


def test_bpe_without_tiktoken_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(DataError) as err:
        BpeTokenizer()
    assert "pip install 'ezpz[bpe]'" in one_line(err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read tokenizer file"),
        ('{"kind": "wordpiece"}', "kind='wordpiece'"),
    ],
)
def test_load_tokenizer_errors(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        load_tokenizer(path)
    assert expected in one_line(err)


# ----------------------------------------------------------------------------- corpus


def test_default_corpus_is_the_stdlib() -> None:
    files = default_corpus()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 50
    assert files == sorted(files)
    assert all(f.parent == stdlib and f.suffix == ".py" and f.is_file() for f in files)
    assert resolve_corpus(None) == files


def test_default_corpus_prepares_and_writes_nothing_into_stdlib(tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def snapshot() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in stdlib.glob("*.py")}

    names_before = {p.name for p in stdlib.iterdir()}
    before = snapshot()
    prepared = prepare(default_corpus(), cache_dir=tmp_path / "cache")
    assert snapshot() == before
    assert {p.name for p in stdlib.iterdir()} == names_before
    assert prepared.cache_dir.parent == tmp_path / "cache"
    assert len(prepared.train) > 1_000_000
    assert prepared.tokenizer.vocab_size < 1000


def test_resolve_corpus_file_and_directory(tmp_path: Path) -> None:
    single = write(tmp_path / "one.txt", "hello\n")
    assert resolve_corpus(single) == [single]
    assert resolve_corpus(str(single)) == [single]

    root = tmp_path / "corpus"
    expected = [
        write(root / "a.txt", "a\n"),
        write(root / "b" / "c.md", "c\n"),
        write(root / "b" / "d" / "e.py", "e = 1\n"),
        write(root / "z.txt", "z\n"),
    ]
    write(root / ".hidden.txt", "secret\n")
    write(root / ".git" / "config", "[core]\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert resolve_corpus(root) == expected


def test_resolve_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        resolve_corpus(tmp_path / "missing")
    assert "does not exist" in one_line(err)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError) as err:
        resolve_corpus(tmp_path / "empty_dir")
    assert "no text files" in one_line(err)


# ----------------------------------------------------------------------------- prepare


def test_prepare_splits_by_fraction(tmp_path: Path) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    prepared = prepare([corpus], val_fraction=0.25, cache_dir=tmp_path / "cache")
    ids = prepared.tokenizer.encode(TEXT)
    n_train = int(len(ids) * 0.75)
    assert prepared.train.dtype == np.uint16 and prepared.val.dtype == np.uint16
    assert isinstance(prepared.train, np.memmap)
    assert prepared.train.tolist() == ids[:n_train]
    assert prepared.val.tolist() == ids[n_train:]
    assert not prepared.reused
    files = {p.name for p in prepared.cache_dir.iterdir()}
    assert files == {"train.bin", "val.bin", "tokenizer.json", "meta.json"}


def test_prepare_joins_files_with_newlines(tmp_path: Path) -> None:
    first = write(tmp_path / "a.txt", "abc")
    second = write(tmp_path / "b.txt", "def\n")
    prepared = prepare([first, second], val_fraction=0.5, cache_dir=tmp_path / "cache")
    ids = [*prepared.train.tolist(), *prepared.val.tolist()]
    assert prepared.tokenizer.decode(ids) == "abc\ndef\n"


def test_prepare_reuses_cache_without_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    first = prepare([corpus], cache_dir=tmp_path / "cache")

    def fail(*args: object) -> None:
        raise AssertionError("encoded again")

    monkeypatch.setattr(CharTokenizer, "encode_array", fail)
    monkeypatch.setattr(data, "_read_corpus", fail)
    second = prepare([corpus], cache_dir=tmp_path / "cache")
    assert second.reused and not first.reused
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(second.train, first.train)
    assert isinstance(second.tokenizer, CharTokenizer)


def test_prepare_cache_invalidated_by_changes(tmp_path: Path) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    cache = tmp_path / "cache"
    first = prepare([corpus], cache_dir=cache)

    write(corpus, TEXT + "More text, with new letters: XYZ.\n")
    edited = prepare([corpus], cache_dir=cache)
    assert not edited.reused and edited.cache_dir != first.cache_dir
    assert "X" in edited.tokenizer.decode(edited.val.tolist())

    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not prepare([corpus], cache_dir=cache).reused
    assert not prepare([corpus], val_fraction=0.2, cache_dir=cache).reused
    assert prepare([corpus], val_fraction=0.2, cache_dir=cache).reused


def test_cache_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    monkeypatch.setenv("EZPZ_CACHE_DIR", str(tmp_path / "env-cache"))
    assert prepare([corpus]).cache_dir.parent == tmp_path / "env-cache"
    monkeypatch.delenv("EZPZ_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_root() == tmp_path / "home" / ".cache" / "ezpz" / "text"
    assert data.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_crash_while_writing_leaves_nothing_reusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    cache = tmp_path / "cache"

    def crash(self: CharTokenizer, path: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(CharTokenizer, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare([corpus], cache_dir=cache)
    assert list(cache.iterdir()) == []
    assert not prepare([corpus], cache_dir=cache).reused


def test_incomplete_or_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    cache = tmp_path / "cache"
    good = prepare([corpus], cache_dir=cache)
    expected = good.train.tolist()
    folder = good.cache_dir
    del good

    (folder / "meta.json").unlink()
    rebuilt = prepare([corpus], cache_dir=cache)
    assert not rebuilt.reused and rebuilt.train.tolist() == expected
    del rebuilt

    (folder / "train.bin").write_bytes(b"\x00\x00")
    rebuilt = prepare([corpus], cache_dir=cache)
    assert not rebuilt.reused and rebuilt.train.tolist() == expected
    assert [p.name for p in cache.iterdir()] == [folder.name]


def test_shakespeare_prepares_to_65_characters(tmp_path: Path) -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    prepared = prepare(resolve_corpus(SHAKESPEARE), cache_dir=tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert prepared.tokenizer.vocab_size == 65
    assert len(prepared.train) + len(prepared.val) == len(text) == 1_115_394
    assert prepared.tokenizer.decode(prepared.train[:200].tolist()) == text[:200]
    check_length(prepared, block_size=256)


# ----------------------------------------------------------------------------- bad inputs


def test_empty_file_is_a_data_error(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError) as err:
        prepare([empty], cache_dir=tmp_path / "cache")
    assert str(empty) in one_line(err)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"text\x00\x01\x02more", "NUL"), (b"caf\xe9 latin-1\n", "not UTF-8")],
)
def test_binary_file_is_a_data_error(tmp_path: Path, payload: bytes, expected: str) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(payload)
    with pytest.raises(DataError) as err:
        prepare([write(tmp_path / "ok.txt", TEXT), blob], cache_dir=tmp_path / "cache")
    message = one_line(err)
    assert str(blob) in message and expected in message


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare([tmp_path / "nope.txt"], cache_dir=tmp_path / "cache")
    assert "nope.txt" in one_line(err)
    with pytest.raises(DataError):
        prepare([], cache_dir=tmp_path / "cache")


def test_too_short_text(tmp_path: Path) -> None:
    corpus = write(tmp_path / "short.txt", "abcdefghi\n" * 10)
    prepared = prepare([corpus], val_fraction=0.1, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as err:
        check_length(prepared, block_size=16)
    assert one_line(err) == (
        "text too short: 10 tokens in the validation split, need at least block_size+1=17; "
        "use more text or a smaller block_size"
    )
    check_length(prepared, block_size=9)
    with pytest.raises(DataError) as err:
        prepare([write(tmp_path / "tiny.txt", "\n")], cache_dir=tmp_path / "cache")
    assert "text too short" in one_line(err)


def test_vocabulary_too_large_for_uint16(tmp_path: Path) -> None:
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 72_000) if not 0xD800 <= c < 0xE000)
    corpus = write(tmp_path / "unicode.txt", chars)
    with pytest.raises(DataError) as err:
        prepare([corpus], cache_dir=tmp_path / "cache")
    assert "uint16" in one_line(err)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    corpus = write(tmp_path / "text.txt", TEXT)
    with pytest.raises(ConfigError) as err:
        prepare([corpus], tokenizer_kind="word", cache_dir=tmp_path)
    assert "tokenizer='word'" in one_line(err)
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError):
            prepare([corpus], val_fraction=fraction, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- batches


TOKENS = np.arange(5000, dtype=np.uint16)


def test_batches_are_shifted_windows() -> None:
    x, y = next(iter(TextBatches(TOKENS, batch_size=4, block_size=8, seed=1)))
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.int64))
    assert int(y.max()) < len(TOKENS)


def test_single_window_data_uses_the_whole_array() -> None:
    x, y = TextBatches(TOKENS[:9], batch_size=2, block_size=8).batch(0)
    assert torch.equal(x[0], torch.arange(8)) and torch.equal(y[1], torch.arange(1, 9))


def test_batches_depend_only_on_seed_step_and_rank() -> None:
    def first(n: int, **kwargs: int) -> list[torch.Tensor]:
        stream = iter(TextBatches(TOKENS, batch_size=4, block_size=8, **kwargs))
        return [next(stream)[0] for _ in range(n)]

    same = first(3, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(same, first(3, seed=7), strict=True))
    assert not torch.equal(same[0], first(1, seed=8)[0])
    assert not torch.equal(first(1, seed=7, world_size=2)[0],
                           first(1, seed=7, rank=1, world_size=2)[0])
    assert not torch.equal(same[0], same[1])


def test_ranks_split_one_global_batch() -> None:
    whole = TextBatches(TOKENS, batch_size=6, block_size=8, seed=3).batch(5)[0]
    parts = [TextBatches(TOKENS, batch_size=3, block_size=8, seed=3, rank=r,
                         world_size=2).batch(5)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ConfigError, match="rank=2 must be in"):
        TextBatches(TOKENS, batch_size=3, block_size=8, rank=2, world_size=2)


def test_start_step_resumes_exactly() -> None:
    full = TextBatches(TOKENS, batch_size=4, block_size=8, seed=3)
    stream = iter(full)
    history = [next(stream)[0] for _ in range(6)]

    resumed = TextBatches(TOKENS, batch_size=4, block_size=8, seed=3, start_step=4)
    stream = iter(resumed)
    assert torch.equal(next(stream)[0], history[4])
    assert torch.equal(next(stream)[0], history[5])

    full.start_step = 2
    assert torch.equal(next(iter(full))[0], history[2])
    assert torch.equal(full.batch(5)[0], history[5])
    with pytest.raises(ConfigError):
        full.start_step = -1


def test_text_batches_are_infinite_and_validate_sizes() -> None:
    batches = TextBatches(TOKENS, batch_size=2, block_size=4)
    with pytest.raises(TypeError):
        len(batches)  # type: ignore[arg-type]
    stream = iter(batches)
    for _ in range(100):
        next(stream)
    with pytest.raises(ConfigError):
        TextBatches(TOKENS, batch_size=0, block_size=4)
    with pytest.raises(DataError) as err:
        TextBatches(TOKENS[:8], batch_size=1, block_size=8)
    assert "need at least block_size+1=9" in one_line(err)


def test_eval_batches_are_fixed() -> None:
    batches = eval_batches(TOKENS, n_batches=5, batch_size=3, block_size=8, seed=0)
    assert isinstance(batches, EvalBatches)
    assert len(batches) == 5
    first, second = list(batches), list(batches)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(y1, x1 + 1)
    assert torch.equal(batches[2][0], first[2][0])
    again = eval_batches(TOKENS, n_batches=5, batch_size=3, block_size=8, seed=0)
    assert torch.equal(again[4][0], first[4][0])
    other = eval_batches(TOKENS, n_batches=5, batch_size=3, block_size=8, seed=1)
    assert not torch.equal(other[0][0], first[0][0])
    assert len({tuple(x[:, 0].tolist()) for x, _ in first}) > 1


def test_prepared_text_feeds_batches(tmp_path: Path) -> None:
    prepared = prepare([write(tmp_path / "text.txt", TEXT)], cache_dir=tmp_path / "cache")
    x, y = TextBatches(prepared.train, batch_size=2, block_size=16).batch(0)
    assert int(x.max()) < prepared.tokenizer.vocab_size
    text = prepared.tokenizer.decode(x[0].tolist() + y[0, -1:].tolist())
    assert text in TEXT
    val = eval_batches(prepared.val, n_batches=2, batch_size=2, block_size=16)
    assert val[0][0].shape == (2, 16)
