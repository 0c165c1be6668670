"""Schema fuzzing: schemathesis generates requests from docs/openapi.json, valid and malformed, for every
route (the legacy /server/panda form routes included: the document declares their form bodies), sends them
to a real gateway (ledger, projector, broker, database) and holds every answer to the document.

Asserted, for every generated request: no 5xx; the status code, content type, headers and body are the
ones the document declares for that route; a request that violates the document is refused with a 4xx
(whose declared body carries the reason); a method the route does not have is 405 with ``Allow``; a route
the document says needs a token refuses a request without one (or with a bad one).
Not asserted: that every schema-valid request is accepted (the document cannot say that a PandaID must
exist or that ``jobs`` must hold 126 JobSpec values).

Deterministic: derandomized generation (the fixed seed of schemathesis' deterministic mode), no example
database, one worker. The default number of examples per operation keeps the run to a minute or two; search
harder with e.g. ``PANDAES_FUZZ_EXAMPLES=300 PANDAES_FUZZ_SEED=7 PANDAES_FUZZ_LOG=/tmp/fuzz.txt pytest -n 0
tests/integration/test_fuzz_openapi.py`` (a seed makes the search random, reproducible from that seed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_support import auth_headers, start_system

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
EXAMPLES = int(os.environ.get("PANDAES_FUZZ_EXAMPLES", "8"))
#: unset: derandomized generation (the same requests every run); set: a random search from this seed
SEED = os.environ.get("PANDAES_FUZZ_SEED")
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "unsupported_method", "missing_required_header", "ignored_auth")
#: per request: generous, a loaded machine may take seconds to answer a dispatch or a submit
REQUEST_TIMEOUT = 60

#: the whole run: 80-95 s alone on a loaded machine, far more while the rest of the suite runs beside it
BUDGET = max(1100, 25 * EXAMPLES)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUDGET + 100)]


def test_every_route_answers_as_the_openapi_document_says(cfg, background, tmp_path):
    system = start_system(cfg, background)
    system.activated_jobs(2)
    # every role, so that the role gate lets each request reach its handler
    headers = auth_headers(cfg, "fuzzer", ("admin", "production", "pilot"))
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
           "run", str(ROOT / "docs" / "openapi.json"), "--url", system.url,
           "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
           "--max-examples", str(EXAMPLES), *(["--seed", SEED] if SEED else ["--generation-deterministic"]),
           "--workers", "1", "--request-timeout", str(REQUEST_TIMEOUT), "--request-retries", "0",
           "--continue-on-failure", "--no-color", "--output-truncate", "false"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=BUDGET)
    output = run.stdout + run.stderr
    if os.environ.get("PANDAES_FUZZ_LOG"):   # the whole report, for a long local search
        Path(os.environ["PANDAES_FUZZ_LOG"]).write_text(output)
    generated = re.search(r"Test cases:\s+(\d+) generated", output)
    # it ran to its summary, over every operation of the document (not, say, none of them)
    assert generated and "Tested: " in output, output[-5000:]
    assert int(generated[1]) >= 20 * len(json.loads((ROOT / "docs" / "openapi.json").read_text())["paths"]), \
        output[-5000:]
    assert run.returncode == 0, _digest(output)


def _digest(output: str, width: int = 300, most: int = 40000) -> str:
    """The failures section with every line cut to ``width`` (a failing request can be megabytes long)."""
    start = output.find("FAILURES")
    lines = [line if len(line) <= width else line[:width] + " …" for line in output[max(start, 0):].splitlines()]
    text = "\n".join(lines)
    return text if len(text) <= most else text[:most // 2] + "\n…\n" + text[-most // 2:]
