"""Peak accelerator throughput and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s. It compares runs across hardware
without caring how the time was spent, which is why the denominator must be the
dense (no 2:4 sparsity) bf16 tensor-core peak from the vendor's datasheet.

Values are per device *as PyTorch enumerates it*: an AMD MI250/MI250X shows up
as two devices (one per GCD) and an Intel Max 1550 as two devices (one per
stack, the default FLAT hierarchy), so those entries are half the card's figure.
"""

from __future__ import annotations

import re

_T = 1e12

#: Lower-case model name -> dense bf16 peak FLOP/s of one PyTorch device.
PEAK_BF16_FLOPS: dict[str, float] = {
    # NVIDIA Blackwell
    "gb200": 2500 * _T,
    "b200": 2250 * _T,
    "b100": 1750 * _T,
    # NVIDIA Hopper; a bare "h100" is the SXM part ("NVIDIA H100 80GB HBM3").
    "h100": 989 * _T,
    "h100 pcie": 756 * _T,
    "h100 nvl": 835 * _T,
    "h800": 989 * _T,
    "h200": 989 * _T,
    "h200 nvl": 835 * _T,
    "gh200": 989 * _T,
    "h20": 148 * _T,
    # NVIDIA Ampere
    "a100": 312 * _T,
    "a800": 312 * _T,
    "a40": 149.7 * _T,
    "a30": 165 * _T,
    "a10": 125 * _T,
    "a10g": 70 * _T,
    "rtx a6000": 154.8 * _T,
    "rtx 3090": 71 * _T,
    # NVIDIA Ada Lovelace
    "l4": 121 * _T,
    "l40": 181.05 * _T,
    "l40s": 362.05 * _T,
    "rtx 6000 ada": 364.25 * _T,
    "rtx 4090": 165.2 * _T,
    # AMD Instinct
    "mi100": 92.3 * _T,
    "mi210": 181 * _T,
    "mi250": 181 * _T,
    "mi250x": 191.5 * _T,
    "mi300a": 980.6 * _T,
    "mi300x": 1307.4 * _T,
    "mi325x": 1307.4 * _T,
    # Intel Data Center GPU Max ("Ponte Vecchio"): Xe cores x 8 XMX engines x 512 flop/clk
    # x clock. The 1550 has two stacks (838.9 per card, see the module docstring).
    "max 1100": 355.5 * _T,
    "max 1550": 419.4 * _T,
}


def _pattern(key: str) -> re.Pattern[str]:
    """Match ``key`` as a whole word so "a10" does not match "A100" nor "h200" "GH200"."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])")


# Longest names first, so "h100 pcie" wins over "h100" and "mi250x" over "mi250".
_MATCHERS: list[tuple[re.Pattern[str], float]] = [
    (_pattern(key), PEAK_BF16_FLOPS[key])
    for key in sorted(PEAK_BF16_FLOPS, key=lambda k: (-len(k), k))
]


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a device name such as ``torch.cuda.get_device_name()``.

    Matching is case-insensitive on whole words, most specific name first; an unknown
    device (a CPU, a laptop GPU) gives None so callers can simply omit MFU.
    """
    name = " ".join(device_name.lower().replace("-", " ").replace("_", " ").split())
    for pattern, flops in _MATCHERS:
        if pattern.search(name):
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_sec: float, device_name: str) -> float | None:
    """Model FLOPs utilisation of one device, as a fraction of its peak (0.4 = 40 %).

    ``tokens_per_sec`` must be the throughput of that one device (divide a global rate
    by the world size first). None when the device's peak is unknown.
    """
    if flops_per_token < 0 or tokens_per_sec < 0:
        raise ValueError(
            f"flops_per_token={flops_per_token} and tokens_per_sec={tokens_per_sec} "
            "must both be >= 0"
        )
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return flops_per_token * tokens_per_sec / peak
