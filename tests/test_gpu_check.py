"""benchmarks/gpu_check.sh's CPU dry run: every family trains in bf16, is killed with SIGTERM
mid-training, resumes past the kill and takes an FID snapshot; the Markdown table has a row
of numbers per family. Slow: twelve Python starts (each imports torch) take most of its ~3
minutes on the 2-core dev box."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from animegen.models import registry

REPO = Path(__file__).resolve().parents[1]
FAMILIES = registry.names()  # the script trains every registered family (the test-only one too)


@pytest.mark.slow
def test_cpu_dry_run_writes_a_row_of_numbers_per_family(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=900)
    lines = (out / "table.md").read_text().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:])}
    assert sorted(rows) == sorted(FAMILIES)
    for family, row in rows.items():
        assert row["family"] == family and row["precision"] == "bf16"
        killed, rc = row["killed at step (rc)"].split()
        assert rc == "(143)"  # SIGTERM: stopped with a checkpoint
        assert int(row["resumed to step"]) > int(killed)  # the resumed run trained on
        for column in ("img/s", "peak MB", "wall s"):
            assert float(row[column]) > 0
        assert float(row["FID"].split()[0]) > 0 and row["FID"].endswith("(4)")
