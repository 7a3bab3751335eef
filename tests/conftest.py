"""Shared fixtures: generated MNIST files, throwaway plugin distributions, env hygiene."""

from __future__ import annotations

import os
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LEAKY = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous():
    """A leaked MASTER_PORT once stalled a gloo rendezvous for 30 minutes: fail fast instead."""
    before = {k: os.environ.get(k) for k in LEAKY}
    yield
    after = {k: os.environ.get(k) for k in LEAKY}
    assert before == after, f"test leaked distributed variables: {after}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Keep tests off the user's caches and plugin settings."""
    for name in ("EZPZ_DISABLE_PLUGIN_AUTOLOAD", "EZPZ_LOAD_PLUGINS", "EZPZ_BLOCK_PLUGINS",
                 "EZPZ_DATA_DIR", "TORCH_DEVICE", "TORCH_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EZPZ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision's MNIST reads."""
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def learnable_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose label decides where a bright square sits: easy, but not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        r, c = 3 + row * 12 + rng.integers(0, 3), 1 + col * 5 + rng.integers(0, 2)
        images[i, r:r + 6, c:c + 4] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A small MNIST in torchvision's layout: 512 training and 128 test images."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 512, 1), ("t10k", 128, 2)):
        images, labels = learnable_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_distribution(site: Path, name: str, version: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> Path:
    """An installed distribution as importlib.metadata sees one: dist-info plus modules."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ezpz]\n{lines}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a throwaway plugin distribution for this test (and its subprocesses)."""
    site = tmp_path / "site"

    def install(name: str, version: str, entry_points: dict[str, str],
                modules: dict[str, str]) -> Path:
        make_distribution(site, name, version, entry_points, modules)
        monkeypatch.syspath_prepend(str(site))
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        monkeypatch.setenv("PYTHONPATH", path)
        for module in modules:
            sys.modules.pop(module, None)
        return site

    return install


def toy_loaders(n: int, batch: int, eval_batch: int) -> tuple[DataLoader, DataLoader]:
    """A small learnable 3-class problem on 8 features, for tests of callbacks."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=generator)
    data = TensorDataset(x, x[:, :3].argmax(dim=1))
    return DataLoader(data, batch_size=batch), DataLoader(data, batch_size=eval_batch)


def toy_model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class Crash:
    """Fails the fit at one step, as a crash would."""

    def __init__(self, step: int) -> None:
        self.at = step

    @ezpz.hookimpl
    def on_step_end(self, step: int) -> None:
        if step == self.at:
            raise RuntimeError(f"simulated crash at step {step}")
