"""``ezpz export``: plain weights out of a checkpoint, for use without ezpz."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ezpz_core.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="write a checkpoint's model weights as a plain state_dict",
        description="Write the model weights of a checkpoint (or of a run's latest "
                    "checkpoint) as a plain state_dict: .pt for torch.load, or .safetensors "
                    "with ezpz[safetensors].")
    parser.add_argument("source", help="a checkpoint directory or a run directory")
    parser.add_argument("--out", required=True, help="output file, .pt or .safetensors")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from ezpz_core import checkpoint

    source = Path(args.source)
    found = checkpoint.resolve(checkpoint.LATEST, source) if (source / "checkpoints").is_dir() \
        else checkpoint.resolve(source, None)
    if found is None:
        raise ConfigError(f"no complete checkpoint in {source}")
    export(checkpoint.load(found)["model"], Path(args.out))
    print(f"wrote {args.out} from {found}")
    return 0


def export(weights: dict[str, Any], out: Path) -> None:
    """Write ``weights`` atomically, as safetensors when ``out`` ends in ``.safetensors``."""
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ConfigError("writing .safetensors needs `pip install 'ezpz[safetensors]'`; "
                              "or export to a .pt file") from None
        # safetensors refuses tensors that share memory (tied embeddings): store copies.
        save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(tmp))
    else:
        import torch

        torch.save(weights, tmp)
    os.replace(tmp, out)
