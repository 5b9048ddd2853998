"""scripts/step_memory.py: the high-water readings it rests on, and a run on a small batch (Linux only)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "step_memory.py"
spec = importlib.util.spec_from_file_location("step_memory_script", SCRIPT)
step_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_memory)


def test_high_water_mark_resets_to_the_resident_set_and_sees_a_transient():
    standing = step_memory.start_measuring()
    transient = torch.ones(96 * 2**20 // 4)  # 96 MiB, touched, then freed
    del transient
    assert step_memory.high_water_bytes() - standing > 64 * 2**20
    again = step_memory.start_measuring()
    assert step_memory.high_water_bytes() - again < 64 * 2**20


def test_prints_a_plain_and_a_smart_row_per_rep(capsys):
    step_memory.main(["--task", "sts", "--batch_size", "4", "--examples", "40", "--reps", "1"])
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == ["plain", "smart"]
