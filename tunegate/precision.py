"""Which device and dtype the matmuls run in: one rule for training, evaluation and benchmarks.

`auto` means bf16 where the hardware computes it natively (CUDA with bf16; CPUs with
AVX512-BF16 or AMX) and fp32 elsewhere. The CPU kinds this project runs on differ: on one with
AMX a bf16 matmul measured 1,070 GFLOP/s against 159 in fp32, while on an AVX2-only CPU bf16 is
emulated and QLoRA trained 7 tokens/s in bf16 against 143 in fp32 (README, "Training").

No job can choose its CPU, so the detection can be overridden with the environment variable
`TUNEGATE_CPU_BF16`: `off` makes `auto` behave as on a CPU without native bf16, `on` as on one
with it (bf16 then runs emulated where the CPU lacks it: correct, only slow). The test suite
uses both to run each dtype's path on any machine.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV_CPU_BF16 = "TUNEGATE_CPU_BF16"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86; on arm64 the kernel reports `bf16`
DTYPES = ("auto", "bfloat16", "float16", "float32")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (empty where /proc is not Linux's)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def detected_cpu_bf16() -> bool:
    """True when this CPU has bf16 instructions (not counting oneDNN's emulation on AVX512)."""
    flags = cpu_flags()
    return any(f in flags for f in BF16_FLAGS) or (
        platform.machine() in ("aarch64", "arm64") and "bf16" in flags
    )


def native_cpu_bf16() -> bool:
    """Whether `auto` treats this CPU as having native bf16: detection, or the override."""
    setting = os.environ.get(ENV_CPU_BF16, "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{ENV_CPU_BF16}={setting!r}: use auto, on or off")
    if setting != "auto":
        return setting == "on"
    return detected_cpu_bf16()


def cpu_kind() -> str:
    """One line naming the CPU and its bf16 support, for benchmark tables and reports."""
    flags = sorted(f for f in cpu_flags() if f in BF16_FLAGS or f.startswith(("amx", "avx512f")))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if detected_cpu_bf16() else "no native bf16"
    override = os.environ.get(ENV_CPU_BF16, "auto")
    forced = "" if override == "auto" else f", {ENV_CPU_BF16}={override}"
    return f"{name} ({bf16}: {' '.join(flags) or 'no avx512/amx flags'}{forced})"


def pick_device() -> str:
    """CUDA when there is one; the pipeline is built to run on a laptop CPU too."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """The dtype matmuls run in: the configured one, or for `auto` the fastest one here."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if native_cpu_bf16() else torch.float32


def dtype_problem(setting: str, device: str) -> str | None:
    """Why `setting` cannot run on `device` (a config error), or None when it can.

    fp16 on CPU has no fast kernels and overflows where bf16 does not; bf16 on a CPU without
    bf16 instructions runs emulated at a small fraction of fp32's speed.
    """
    if setting not in DTYPES:
        return f"unknown dtype {setting!r}: use one of {', '.join(DTYPES)}"
    if device != "cpu" or setting in ("auto", "float32"):
        return None
    if setting == "float16":
        return "float16 on the CPU: use bfloat16 (with native bf16), float32 or auto"
    if not native_cpu_bf16():
        return (
            f"bfloat16 on a CPU without native bf16 ({cpu_kind()}): it would run emulated, far "
            f"slower than float32; use auto or float32 (or set {ENV_CPU_BF16}=on to force it)"
        )
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bfloat16`, as recorded in manifests, cache keys and reports."""
    return str(dtype).removeprefix("torch.")
