"""The tracker's inline C math (edge_agent/tracking/trackmath.h), compiled and run on its own."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

HEADER_DIR = Path(__file__).resolve().parent.parent / "edge_agent" / "tracking"

PROGRAM = r"""
#include <stdio.h>
#include "trackmath.h"
int main(void)
{
    for (int i = 0; i <= 20000; i++) {
        double x = -1.0 + i / 10000.0;
        double a[4] = {0, 0, 10, 10}, b[4] = {x * 10, 2, x * 10 + 10, 12};
        printf("%.17g %.17g %.17g\n", x, acos_fast(x), box_iou(a, b));
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> np.ndarray:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("trackmath")
    (d / "t.c").write_text(PROGRAM)
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{HEADER_DIR}",
                    str(d / "t.c"), "-o", str(d / "t"), "-lm"], check=True)
    out = subprocess.run([str(d / "t")], check=True, capture_output=True, text=True).stdout
    return np.loadtxt(out.splitlines())


def test_acos_fast_is_within_2e8_of_acos(table):
    exact = np.array([math.acos(x) for x in table[:, 0]])
    assert np.max(np.abs(table[:, 1] - exact)) < 2.5e-8
    assert table[0, 1] == pytest.approx(math.pi, abs=1e-7) and table[-1, 1] == 0.0


def test_box_iou_of_a_sliding_box(table):
    x = table[:, 0] * 10  # b is a shifted by x (and 2 down): overlap (10 - |x|) x 8
    inter = np.clip(10 - np.abs(x), 0, None) * 8
    np.testing.assert_allclose(table[:, 2], inter / (200 - inter), atol=1e-12)
