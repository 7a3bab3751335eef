"""Text for GPT: tokenizers, the corpus, an on-disk token cache, and batches.

The corpus is encoded once into ``train.bin`` / ``val.bin`` (uint16 token ids)
in a cache directory keyed by the input files and settings; later runs, and
every rank of a distributed run, memory-map those files instead of re-encoding.
Batches are random windows drawn from a generator seeded by (seed, step); each rank
takes its own slice of that global batch,
so any step's batch can be reproduced, which makes resuming exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ezpz_core.errors import ConfigError, DataError

#: Tokenizer kinds ``prepare`` accepts.
TOKENIZER_KINDS = ("char", "bpe")

# Bump when the cache layout or encoding changes, so old caches are not reused.
_CACHE_FORMAT = 1
# Written last into a cache directory; a directory without it is never reused.
_MARKER = "meta.json"
_TOKEN_DTYPE = np.uint16
# How much of a file resolve_corpus inspects to tell text from binary.
_SNIFF_BYTES = 8192

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer(Protocol):
    """What the pipeline and the model plugin need from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, path: PathLike) -> None: ...


def _code_points(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as an array, without a Python-level loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer:
    """One token per distinct character of the corpus, in code-point order.

    Tiny vocabularies make small models learn visibly in minutes, which is the point
    of the default text example.
    """

    kind = "char"

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise DataError("a char tokenizer's characters must be distinct; rebuild the cache")
        self.chars = chars
        codes = _code_points(chars).astype(np.int64)
        # Lookup table from code point to id (-1: not in the vocabulary), so encoding a
        # whole corpus is one vectorised gather.
        self._lut = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int64)
        self._lut[codes] = np.arange(len(codes), dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of ``text``: its sorted distinct characters."""
        return cls("".join(map(chr, np.unique(_code_points(text)).tolist())))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array (the fast path ``prepare`` uses)."""
        codes = _code_points(text).astype(np.int64)
        ids = np.full(len(codes), -1, dtype=np.int64)
        known = codes < len(self._lut)
        ids[known] = self._lut[codes[known]]
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            char = chr(int(codes[missing[0]]))
            raise DataError(
                f"character {char!r} is not in the tokenizer's {self.vocab_size}-character "
                "vocabulary; use only characters that occur in the training text"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return list(self.encode_array(text).tolist())

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        out = []
        for i in ids:
            index = int(i)
            if not 0 <= index < len(chars):
                raise DataError(f"token id {index} is outside the vocabulary 0..{len(chars) - 1}")
            out.append(chars[index])
        return "".join(out)

    def save(self, path: PathLike) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind, "chars": self.chars}))

    @classmethod
    def load(cls, path: PathLike) -> CharTokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, CharTokenizer):
            raise DataError(f"{path} holds a {tokenizer.kind!r} tokenizer, not a 'char' one")
        return tokenizer


class BpeTokenizer:
    """GPT-2's byte-level BPE through tiktoken (an optional dependency, imported lazily)."""

    kind = "bpe"

    def __init__(self, encoding: str = "gpt2") -> None:
        try:
            import tiktoken
        except ImportError as err:
            raise DataError(
                "the 'bpe' tokenizer needs tiktoken: pip install 'ezpz[bpe]' "
                "(or use the 'char' tokenizer)"
            ) from err
        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as err:
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise DataError(
                f"cannot load the tiktoken encoding {encoding!r} ({reason}); "
                "tiktoken downloads it on first use, so run once online or set "
                "TIKTOKEN_CACHE_DIR to a directory that has it"
            ) from err
        self.encoding = encoding

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        # encode_ordinary treats "<|endoftext|>" in the corpus as plain text instead of
        # raising, which is what arbitrary training text needs.
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._enc.decode([int(i) for i in ids]))

    def save(self, path: PathLike) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind, "encoding": self.encoding}))

    @classmethod
    def load(cls, path: PathLike) -> BpeTokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, BpeTokenizer):
            raise DataError(f"{path} holds a {tokenizer.kind!r} tokenizer, not a 'bpe' one")
        return tokenizer


def load_tokenizer(path: PathLike) -> CharTokenizer | BpeTokenizer:
    """Read a tokenizer written by ``save``, whichever kind it is."""
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(
            f"tokenizer file {path} does not exist; run the data preparation again"
        ) from None
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read tokenizer file {path} ({err}); delete it and prepare again"
        ) from err
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char" and isinstance(spec.get("chars"), str):
        return CharTokenizer(spec["chars"])
    if kind == "bpe":
        return BpeTokenizer(str(spec.get("encoding", "gpt2")))
    raise DataError(
        f"tokenizer file {path} has kind={kind!r}; expected one of: {', '.join(TOKENIZER_KINDS)}"
    )


def _new_tokenizer(kind: str, text: str) -> CharTokenizer | BpeTokenizer:
    return CharTokenizer.from_text(text) if kind == "char" else BpeTokenizer()


# ----------------------------------------------------------------------------- corpus


def default_corpus() -> list[Path]:
    """This Python's own standard library (top-level ``*.py``), read in place.

    Every installation has it, it is a few MB of real text, and it needs no download,
    so ``ezpz train gpt`` works offline out of the box.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise DataError(
            f"found no *.py files in this Python's standard library ({stdlib}); "
            "pass a text file or directory as the data path instead"
        )
    return files


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _looks_like_text(path: Path) -> bool:
    """A NUL byte near the start is the usual sign of a binary file (images, .pyc, ...)."""
    try:
        with path.open("rb") as f:
            return b"\0" not in f.read(_SNIFF_BYTES)
    except OSError:
        return False


def resolve_corpus(path: PathLike | None) -> list[Path]:
    """The files to train on: the default corpus for None, a file as itself, or a
    directory's non-hidden text files (recursively, sorted so the order is stable)."""
    if path is None:
        return default_corpus()
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if root.is_dir():
        found: list[Path] = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not _is_hidden(d)]
            found.extend(Path(folder) / n for n in names if not _is_hidden(n))
        files = sorted(p for p in found if p.is_file() and _looks_like_text(p))
        if not files:
            raise DataError(f"directory {root} has no text files; add some or pass a file")
        return files
    if root.exists():
        raise DataError(f"data path {root} is neither a file nor a directory")
    raise DataError(f"data path {root} does not exist; pass an existing text file or directory")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    if b"\0" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes); pass UTF-8 text files only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (undecodable byte at offset {err.start}); "
            "convert it to UTF-8 or leave it out"
        ) from None
    return text.removeprefix("\ufeff")


def _read_corpus(paths: Sequence[Path]) -> str:
    """All files as one string; a newline is added where a file lacks a final one so the
    last line of one file does not run into the first line of the next."""
    parts = []
    for path in paths:
        text = _read_text(path)
        if text and not text.endswith("\n"):
            text += "\n"
        parts.append(text)
    corpus = "".join(parts)
    if not corpus:
        where = (
            f"{paths[0]} is empty"
            if len(paths) == 1
            else f"all {len(paths)} files (first: {paths[0]}) are empty"
        )
        raise DataError(f"no text to train on: {where}; pass files with some text")
    return corpus


# ----------------------------------------------------------------------------- cache


@dataclass(frozen=True, eq=False)
class PreparedText:
    """The encoded corpus: memory-mapped token ids and the tokenizer that made them."""

    train: np.memmap
    val: np.memmap
    tokenizer: CharTokenizer | BpeTokenizer
    cache_dir: Path
    #: True when an existing cache was reused rather than encoded now.
    reused: bool


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """Where prepared text lives: the argument, else ``$EZPZ_CACHE_DIR``, else
    ``~/.cache/ezpz/text``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("EZPZ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ezpz" / "text"


def _cache_key(paths: Sequence[Path], kind: str, val_fraction: float) -> str:
    """A digest of what determines the encoded bytes; a changed size or mtime of any
    file changes it, so edited data is never served from a stale cache."""
    files = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"data file {path} does not exist") from None
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror or err}") from err
        files.append([str(path), st.st_size, st.st_mtime_ns])
    spec = {"format": _CACHE_FORMAT, "kind": kind, "val_fraction": val_fraction, "files": files}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _write_durably(path: Path, data: bytes) -> None:
    """Write and fsync, so the marker can only be on disk after the data it vouches for."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _open_cache(folder: Path) -> PreparedText | None:
    """The cache in ``folder`` if it is complete and consistent, else None."""
    try:
        meta = json.loads((folder / _MARKER).read_text())
        n_train, n_val = int(meta["n_train"]), int(meta["n_val"])
        tokenizer_spec = json.loads((folder / "tokenizer.json").read_text())
        sizes_ok = (
            meta["format"] == _CACHE_FORMAT
            and isinstance(tokenizer_spec, dict)
            and (folder / "train.bin").stat().st_size == n_train * np.dtype(_TOKEN_DTYPE).itemsize
            and (folder / "val.bin").stat().st_size == n_val * np.dtype(_TOKEN_DTYPE).itemsize
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not sizes_ok or n_train == 0 or n_val == 0:
        return None
    return PreparedText(
        train=np.memmap(folder / "train.bin", dtype=_TOKEN_DTYPE, mode="r"),
        val=np.memmap(folder / "val.bin", dtype=_TOKEN_DTYPE, mode="r"),
        tokenizer=load_tokenizer(folder / "tokenizer.json"),
        cache_dir=folder,
        reused=True,
    )


def _publish(staging: Path, final: Path) -> None:
    """Move a finished staging directory into place in one rename.

    If ``final`` already exists it is either a complete cache from a concurrent run
    (keep it) or the leftover of an older layout (replace it).
    """
    try:
        os.replace(staging, final)
    except OSError:
        if _open_cache(final) is not None:
            return
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)


def prepare(
    files: Sequence[PathLike],
    tokenizer_kind: str = "char",
    val_fraction: float = 0.1,
    cache_dir: PathLike | None = None,
) -> PreparedText:
    """Encode ``files`` once into a train/validation split on disk, or reuse that.

    The first ``1 - val_fraction`` of the tokens are for training, the rest for
    validation. The cache is built in a hidden staging directory and renamed into
    place with its marker already inside, so an interrupted run never leaves a
    directory that a later run would trust.
    """
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise ConfigError(
            f"tokenizer={tokenizer_kind!r} must be one of: {', '.join(TOKENIZER_KINDS)}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    if not files:
        raise DataError("no data files given; pass a text file or directory")
    paths = [Path(f).expanduser().resolve() for f in files]
    root = cache_root(cache_dir)
    final = root / f"{tokenizer_kind}-{_cache_key(paths, tokenizer_kind, val_fraction)}"

    cached = _open_cache(final)
    if cached is not None:
        return cached

    text = _read_corpus(paths)
    tokenizer = _new_tokenizer(tokenizer_kind, text)
    if tokenizer.vocab_size > np.iinfo(_TOKEN_DTYPE).max + 1:
        raise DataError(
            f"vocabulary of {tokenizer.vocab_size} tokens does not fit the uint16 token "
            "cache (at most 65536); use the 'bpe' tokenizer or less varied text"
        )
    ids = tokenizer.encode_array(text)
    n_train = int(len(ids) * (1.0 - val_fraction))
    n_val = len(ids) - n_train
    if n_train == 0 or n_val == 0:
        raise DataError(
            f"text too short: {len(ids)} tokens cannot be split into training and "
            f"validation with val_fraction={val_fraction}; use more text"
        )

    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    except OSError as err:
        raise DataError(
            f"cannot write the token cache under {root} ({err.strerror or err}); "
            "set EZPZ_CACHE_DIR to a writable directory"
        ) from err
    try:
        _write_durably(staging / "train.bin", ids[:n_train].astype(_TOKEN_DTYPE).tobytes())
        _write_durably(staging / "val.bin", ids[n_train:].astype(_TOKEN_DTYPE).tobytes())
        tokenizer.save(staging / "tokenizer.json")
        meta: dict[str, Any] = {
            "format": _CACHE_FORMAT,
            "tokenizer": tokenizer_kind,
            "vocab_size": tokenizer.vocab_size,
            "val_fraction": val_fraction,
            "n_train": n_train,
            "n_val": n_val,
            "files": [str(p) for p in paths],
        }
        _write_durably(staging / _MARKER, json.dumps(meta, indent=1).encode())
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    prepared = _open_cache(final)
    if prepared is None:
        raise DataError(f"the token cache in {final} vanished while preparing; run again")
    return dataclasses.replace(prepared, reused=False)


def check_length(prepared: PreparedText, block_size: int) -> None:
    """Fail early, before a model is built, if a split cannot hold one training window."""
    need = block_size + 1
    for split, data in (("training", prepared.train), ("validation", prepared.val)):
        if len(data) < need:
            raise DataError(
                f"text too short: {len(data)} tokens in the {split} split, need at least "
                f"block_size+1={need}; use more text or a smaller block_size"
            )


# ----------------------------------------------------------------------------- batches


def _mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several integers; hashing keeps nearby (seed, step, rank)
    triples from giving correlated streams and never collides by arithmetic."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _check_windows(data: np.ndarray, batch_size: int, block_size: int, what: str) -> None:
    _positive("batch_size", batch_size)
    _positive("block_size", block_size)
    if len(data) < block_size + 1:
        raise DataError(
            f"text too short: {len(data)} tokens in the {what} data, need at least "
            f"block_size+1={block_size + 1}; use more text or a smaller block_size"
        )


def _windows(data: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets: the windows shifted by one position."""
    offsets = starts[:, None] + np.arange(block_size + 1)
    chunk = torch.from_numpy(np.asarray(data[offsets], dtype=np.int64))
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class TextBatches:
    """Endless training batches ``(x, y)`` of shape (batch_size, block_size), int64.

    Batch ``step`` depends only on (seed, step, rank), never on what was drawn before,
    so setting ``start_step`` on a resumed run continues exactly where it stopped. It is
    rank ``rank``'s slice of one global batch of ``batch_size * world_size`` windows, so
    each rank sees different windows and any number of ranks with the same global batch
    trains on the same data.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        _check_windows(data, batch_size, block_size, "training")
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    @property
    def start_step(self) -> int:
        """The step of the first batch the next ``iter()`` yields."""
        return self._start_step

    @start_step.setter
    def start_step(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"start_step={value!r} must be an integer >= 0")
        self._start_step = value

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The batch for ``step`` (what iteration yields at that step)."""
        generator = torch.Generator().manual_seed(_mix_seed("train", self.seed, step))
        starts = torch.randint(
            len(self.data) - self.block_size, (self.batch_size * self.world_size,),
            generator=generator,
        )
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _windows(self.data, mine.numpy(), self.block_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class EvalBatches:
    """A fixed list of validation batches: the windows are chosen once, so every
    evaluation of a run measures the loss on exactly the same tokens."""

    def __init__(
        self, data: np.ndarray, n_batches: int, batch_size: int, block_size: int, seed: int = 0
    ) -> None:
        _positive("n_batches", n_batches)
        _check_windows(data, batch_size, block_size, "validation")
        self.data = data
        self.block_size = block_size
        generator = torch.Generator().manual_seed(_mix_seed("eval", seed))
        self._starts = torch.randint(
            len(data) - block_size, (n_batches, batch_size), generator=generator
        ).numpy()

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return _windows(self.data, self._starts[index], self.block_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in range(len(self)):
            yield self[index]


def eval_batches(
    data: np.ndarray, n_batches: int, batch_size: int, block_size: int, seed: int = 0
) -> EvalBatches:
    """``n_batches`` fixed validation batches; iterating twice gives identical tensors."""
    return EvalBatches(data, n_batches, batch_size, block_size, seed)
