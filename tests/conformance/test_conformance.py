"""pytest entry of the conformance vectors: every case on the CLI (native) and on the proxy-wasm filter in
the wasmtime harness, one test per case and host.

    .venv/bin/pytest tests/conformance            # builds what is missing (cargo), then ~15 s
    TXNGATE_CONFORMANCE_NO_BUILD=1 ...            # use target/ as it is

A host that is unavailable (the filter does not build, say) skips its tests with the build error; the
full table (and the Envoy / workerd hosts) is `python3 tests/conformance/run.py --hosts ...`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import fmt, run_conformance  # noqa: E402
from vectors import HOST_NAMES, MARK_NAMES, expected_triple, load_cases, load_policy  # noqa: E402

HOSTS = ["native", "harness"]
CASES = load_cases()


@pytest.fixture(scope="module")
def report():
    build = not os.environ.get("TXNGATE_CONFORMANCE_NO_BUILD")
    return run_conformance(HOSTS, build=build, log=lambda msg: None)


def test_vectors_cover_every_area_with_enough_cases():
    areas = Counter(c.area for c in CASES)
    assert len(CASES) >= 80, areas
    for area in ("token", "claims", "delegation", "binding", "mcp", "tools", "dryrun", "ratelimit", "tools_list", "keys"):
        assert areas[area] > 0, f"no case in area {area}"
    # Every algorithm, allowed and with a broken signature.
    for key in ("ed", "ec", "rsa"):
        recipes = [c for c in CASES if c.token and c.token.get("key") == key]
        assert any(c.expect["verdict"] == "allow" for c in recipes), key
        assert any(c.expect["reason"] == "token.signature" for c in recipes), key
    # Few policies: real Envoy and workerd restart per policy.
    assert len({c.policy for c in CASES}) <= 8
    for case in CASES:
        load_policy(case.policy)
        for host in case.hosts:
            assert host in MARK_NAMES


def test_every_reason_in_the_readme_table_is_covered_or_known_untestable():
    from vectors import known_reasons

    untestable = {
        # Store failures need a broken rate-limit store; store_full needs Envoy's bounded shared data.
        "ratelimit.store_error", "ratelimit.contention", "ratelimit.store_full",
        # Needs two issuers publishing the same kid from jwks_uri, which only a host that fetches can do.
        "token.kid_ambiguous",
    }
    covered = {c.expect["reason"] for c in CASES}
    missing = known_reasons() - covered - untestable
    assert not missing, f"reasons without a vector: {sorted(missing)}"


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_case(report, host, case_id):
    run = report.run_of(host)
    if run.unavailable:
        pytest.skip(f"{host} unavailable: {run.unavailable}")
    cell = run.cells[case_id]
    if cell.state == "na":
        pytest.skip(f"{host} cannot express {case_id}: {cell.why}")
    if cell.state == "fail":
        case = next(c for c in CASES if c.id == case_id)
        got = fmt(cell.outcome.triple()) if cell.outcome is not None and cell.outcome.verdict is not None else "no decision"
        pytest.fail(f"{case_id} on {host}: expected {fmt(expected_triple(case, cell.outcome))}, got {got}"
                    + (f" ({cell.why})" if cell.why else ""), pytrace=False)
