"""One dtype rule for training and evaluation, and the switch that makes either CPU kind's
path testable on any machine."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.config import ConfigError, check_runnable, parse_config
from tunegate.precision import (
    ENV_CPU_BF16,
    cpu_kind,
    detected_cpu_bf16,
    dtype_problem,
    native_cpu_bf16,
    resolve_dtype,
)

pytestmark = pytest.mark.unit


def test_auto_follows_the_cpu_kind(cpu_bf16):
    expected = torch.bfloat16 if cpu_bf16 == "on" else torch.float32
    assert native_cpu_bf16() is (cpu_bf16 == "on")
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == torch.float32  # an explicit dtype is kept


def test_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setenv(ENV_CPU_BF16, "auto")
    assert native_cpu_bf16() is detected_cpu_bf16()
    kind = cpu_kind()
    assert ("no native bf16" in kind) is not detected_cpu_bf16()
    monkeypatch.setenv(ENV_CPU_BF16, "sometimes")
    with pytest.raises(ValueError, match="auto, on or off"):
        native_cpu_bf16()


@pytest.mark.parametrize(
    ("setting", "device", "bf16", "problem"),
    [
        ("auto", "cpu", "off", None),
        ("float32", "cpu", "off", None),
        ("bfloat16", "cpu", "on", None),
        ("bfloat16", "cpu", "off", "without native bf16"),
        ("float16", "cpu", "on", "float16 on the CPU"),
        ("float16", "cuda", "off", None),
    ],
)
def test_dtypes_the_device_cannot_run_are_refused(monkeypatch, setting, device, bf16, problem):
    monkeypatch.setenv(ENV_CPU_BF16, bf16)
    found = dtype_problem(setting, device)
    assert (found is None) if problem is None else (problem in found)


def config_with(tmp_path, train_dtype: str, eval_dtype: str = "auto"):
    return parse_config(
        {
            "workspace": str(tmp_path / "ws"),
            "data": {"sources": [{"path": "x.jsonl"}]},
            "train": {"compute_dtype": train_dtype},
            "eval": {"compute_dtype": eval_dtype},
        },
        root=tmp_path,
    )


def test_check_runnable_names_the_key_and_the_device(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CPU_BF16, "off")
    with pytest.raises(ConfigError) as caught:
        check_runnable(config_with(tmp_path, "float16", "bfloat16"), "cpu")
    keys = dict(caught.value.problems)
    assert set(keys) == {"train.compute_dtype", "eval.compute_dtype"}
    assert all("(device: cpu)" in why for why in keys.values())
    check_runnable(config_with(tmp_path, "auto"), "cpu")  # auto always runs


def test_validate_refuses_bf16_on_a_cpu_without_it(monkeypatch, tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    path = tmp_path / "p.yaml"
    path.write_text("data: {sources: [{path: x.jsonl}]}\ntrain: {compute_dtype: bfloat16}\n")
    monkeypatch.setenv(ENV_CPU_BF16, "off")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "train.compute_dtype" in result.output and "device: cpu" in result.output
    monkeypatch.setenv(ENV_CPU_BF16, "on")
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0
