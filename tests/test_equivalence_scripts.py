"""benchmarks/{forward,backward,grad}_equivalence.py: they run on this machine's backends (on a CPU
only the reference), every row passes, the JSON holds the rows, and a backend that is wrong makes
the script fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flash_dmattn

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PACKAGE_PARENT = Path(flash_dmattn.__file__).resolve().parent.parent  # the package under test (a wheel or python/)


@pytest.mark.parametrize("script", ["forward_equivalence.py", "backward_equivalence.py", "grad_equivalence.py"])
def test_script_passes_on_the_cpu_reference(script, tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--device", "cpu", "--json", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 16 and all(r["ok"] for r in rows)
    assert "0 failed" in res.stdout
    measured = [r for r in rows if "max_abs" in r]
    assert measured and all(r["max_abs"] > 0 for r in measured), "errors of exactly 0 mean nothing was compared"


def test_a_wrong_backend_fails_the_script(monkeypatch, capsys):
    sys.path.insert(0, str(BENCH))
    import equivalence

    right = equivalence._FUNCS["reference"]

    def off_by_two_percent(*args, **kwargs):
        out, lse = right(*args, **kwargs)
        return out * 1.02, lse

    monkeypatch.setitem(equivalence._FUNCS, "reference", off_by_two_percent)
    args = equivalence.parser("test").parse_args(["--quick", "--device", "cpu", "--backends", "reference"])
    assert equivalence.run("forward", args) == 1
    lines = capsys.readouterr().out.splitlines()
    outs = [ln for ln in lines if "| out |" in ln]
    lses = [ln for ln in lines if "| lse |" in ln]
    assert outs and all("FAIL" in ln for ln in outs), "a 2% error in out must fail every case"
    assert lses and all(ln.endswith("| ok |") for ln in lses), "the untouched lse must still pass"
