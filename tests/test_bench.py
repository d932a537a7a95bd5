"""The benchmark's tooling runs: one second of each workload on a tiny load, so that bench/ cannot rot."""
import re
import shutil
import subprocess
import sys

import pytest
from support import ROOT, system_program

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not (shutil.which("wrk") and system_program("smtp-sink")),
                    reason="needs wrk and Postfix's smtp-sink (Debian packages; .ci/run installs them)")
def test_the_benchmark_runs_and_reports_its_table():
    result = subprocess.run([sys.executable, "-m", "bench.run", "--seconds", "1", "--repeats", "1",
                             "--connections", "2", "--posts", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if re.match(r"\| w[12] \|", line)]
    services = {(row[1].strip(), row[2].strip()) for row in rows if len(row) > 9}
    assert services == {(w, s) for w in ("w1", "w2") for s in ("A", "N", "H")}
    for row in rows:
        if len(row) > 9 and row[2].strip() == "A":
            answers, delivered = int(row[7]), int(row[8])
            assert answers > 0 and delivered == answers  # every answer of A was statusCode 0
    assert "| A |" in result.stdout and "of 1 |" in result.stdout  # w3 ran and was delivered
    assert "targets (" in result.stdout
