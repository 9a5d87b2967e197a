"""`edge-agent bench tracker` runs on the shared MOT data and reports every data set."""

from __future__ import annotations

import re

from edge_agent.cli import main


def test_bench_tracker_prints_real_and_synthetic_rows(mot_dir, capsys):
    rc = main(["bench", "tracker", "--mot-dir", str(mot_dir), "--frames", "30", "--repeat", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| MOT")]
    assert len(rows) == 3, out
    assert "MOT15 real" in rows[0] and "SYNTHETIC" in rows[1] and "SYNTHETIC" in rows[2]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) > 0 and float(cells[2]) > 0
        assert float(re.sub(",", "", cells[3])) > 0


def test_bench_tracker_bad_arguments(tmp_path, capsys):
    assert main(["bench", "tracker", "--mot-dir", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "tracker", "--mot-dir", str(tmp_path)]) == 2
    assert "no MOT15" in capsys.readouterr().err
