"""`--precision auto`: bfloat16 only where the device runs it natively (emulated bfloat16 ran the
engine 4.7x slower than float32 on an AVX2-only CPU)."""

import pytest
import torch

from selfexplain import models
from selfexplain.errors import InputError
from selfexplain.models import native_bfloat16, resolve_precision
from tasks.request import RelabelRequest


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_device_and_explicit_names_stay(monkeypatch, native):
    monkeypatch.setattr(models, "native_bfloat16", lambda device="cpu": native)
    assert resolve_precision("auto") == ("bfloat16" if native else "float32")
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"
    # the product's request: no override means auto; an explicit one is kept
    assert RelabelRequest.build().config().precision == ("bfloat16" if native else "float32")
    assert RelabelRequest.build(overrides={"precision": "auto"}).config().precision == (
        "bfloat16" if native else "float32")
    assert RelabelRequest.build(overrides={"precision": "float32"}).config().precision == "float32"


def test_unknown_precision_is_one_line():
    with pytest.raises(InputError, match="unknown precision 'fp8': give auto, float32 or bfloat16"):
        resolve_precision("fp8")


def test_cpu_check_reads_torch_then_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    real_path = models.Path

    def fake_path(name):
        return cpuinfo if str(name) == "/proc/cpuinfo" else real_path(name)

    monkeypatch.setattr(models, "Path", fake_path)
    fresh = models._cpu_native_bfloat16.cache_clear  # read once per process: start each case anew
    cpuinfo.write_text("flags\t\t: fpu sse sse2 avx avx2 fma\n")
    fresh()
    assert native_bfloat16("cpu") is False
    cpuinfo.write_text("Features\t: fp asimd sve bf16 i8mm\n")  # Arm
    assert native_bfloat16("cpu") is False  # the first answer stands for the process
    fresh()
    assert native_bfloat16("cpu") is True
    cpuinfo.unlink()  # unreadable: assume emulated
    fresh()
    assert native_bfloat16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    fresh()
    assert native_bfloat16("cpu") is True
    fresh()  # leave no fake answer behind for later tests
