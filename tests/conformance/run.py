#!/usr/bin/env python3
"""txngate cross-host conformance: the same request gets the same verdict, status and reason everywhere.

    python3 tests/conformance/run.py                         # native and harness
    python3 tests/conformance/run.py --hosts native,harness,envoy,worker
    python3 tests/conformance/run.py --cases 'token.*,mcp.batch*'
    python3 tests/conformance/run.py --list                  # the cases per area, nothing run

Prints a table case x host (✓, ✗, n/a (why)), every disagreement spelt out (expected vs got), the time per
host, and a closing line `N passed, N failed, N skipped`. Exit 0 when nothing failed, 1 on any
disagreement (or, with --require-all, an unavailable host), 2 when the vectors or the CLI are unusable. See docs/conformance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hosts import Harness, Host, Native, Pending, cli_path, ensure_cli  # noqa: E402
from vectors import (  # noqa: E402
    HOST_NAMES, ROOT, Case, Minter, Outcome, VectorError, check_reply, check_rpc, expected_reply, expected_triple,
    load_cases,
)

DEFAULT_HOSTS = "native,harness"
#: Hosts the runner can run: the vector hosts plus `envoy-hybrid` (Envoy's jwt_authn verifies signatures, the
#: filter the rest; it takes the vectors' `envoy` markers, see envoy_hybrid_host.py).
RUN_HOSTS = (*HOST_NAMES, "envoy-hybrid")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def make_host(name: str, build: bool) -> Host:
    if name == "native":
        return Native(build)
    if name == "harness":
        return Harness(build)
    if name == "envoy":
        try:
            from envoy_host import Envoy
        except ImportError as e:
            return Pending("envoy", f"adapter cannot load: {e} (run with {VENV_PYTHON})")
        return Envoy(build)
    if name == "envoy-hybrid":
        try:
            from envoy_hybrid_host import EnvoyHybrid
        except ImportError as e:
            return Pending("envoy-hybrid", f"adapter cannot load: {e} (run with {VENV_PYTHON})")
        return EnvoyHybrid(build)
    if name == "worker":
        try:
            from worker_host import Worker
        except ImportError as e:
            return Pending("worker", f"adapter cannot load: {e}")
        return Worker(build)
    raise SystemExit(f"unknown host {name!r} (hosts: {', '.join(RUN_HOSTS)})")


@dataclass
class Cell:
    state: str  # "pass", "fail", "na"
    why: str = ""
    outcome: Outcome | None = None


@dataclass
class HostRun:
    host: str
    unavailable: str | None = None
    note: str | None = None
    seconds: float = 0.0
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Report:
    cases: list[Case]
    runs: list[HostRun]

    def counts(self) -> Counter:
        c: Counter = Counter()
        for run in self.runs:
            for cell in run.cells.values():
                c[cell.state] += 1
        return c

    def failures(self) -> list[tuple[Case, str, Cell]]:
        by_id = {c.id: c for c in self.cases}
        return [(by_id[i], r.host, cell) for r in self.runs for i, cell in r.cells.items() if cell.state == "fail"]

    def run_of(self, host: str) -> HostRun | None:
        return next((r for r in self.runs if r.host == host), None)


def judge(case: Case, outcome: Outcome, reason_aliases: dict[str, set[str]] | None = None) -> Cell:
    if outcome.error and outcome.verdict is None:
        return Cell("fail", outcome.detail or "error", outcome)
    got, expected = outcome.triple(), expected_triple(case, outcome)
    # A host may give one documented reason in place of others (hybrid: jwt_authn refused, the filter cannot
    # know why); verdict and status must still be equal.
    aliased = bool(reason_aliases) and got[:2] == expected[:2] and expected[2] in (reason_aliases or {}).get(got[2], ())
    if got != expected and not aliased:
        return Cell("fail", "", outcome)
    if outcome.error:
        return Cell("fail", outcome.detail or "", outcome)
    if outcome.response is not None and not outcome.response[0]:
        return Cell("fail", outcome.response[1], outcome)
    rpc = check_rpc(case, outcome) or (check_reply(case, outcome) if expected[0] == "deny" and expected_reply(case) else None)
    if rpc:
        return Cell("fail", rpc, outcome)
    return Cell("pass", f"reason {got[2]}" if aliased and got != expected else "", outcome)


def run_host(host: Host, cases: list[Case], minter: Minter, log) -> HostRun:
    run = HostRun(host.name)
    t0 = time.monotonic()
    why = host.prepare()
    if why:
        run.unavailable = why
        for case in cases:
            run.cells[case.id] = Cell("na", "unavailable")
        run.seconds = time.monotonic() - t0
        return run
    run.note = getattr(host, "note", None)
    by_policy: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        marked = next((case.hosts[m] for m in getattr(host, "marks", (host.name,)) if case.hosts.get(m)), None)
        if marked:
            run.cells[case.id] = Cell("na", marked)
            continue
        cannot = host.cannot_express(case)
        if cannot:
            run.cells[case.id] = Cell("fail", f"{cannot}, and the vector does not mark it (\"hosts\": {{\"{host.name}\": \"why\"}})")
            continue
        by_policy[case.policy].append(case)
    try:
        run_policies(host, by_policy, run, minter, log)
    finally:
        host.close()
    run.seconds = time.monotonic() - t0
    return run


def run_policies(host: Host, by_policy: dict[str, list[Case]], run: HostRun, minter: Minter, log) -> None:
    for policy, group in by_policy.items():
        log(f"[{host.name}] policy {policy}: {len(group)} cases")
        try:
            host.start(group[0].policy_path)
        except Exception as e:  # noqa: BLE001 - a host that cannot start on a policy fails its cases
            for case in group:
                run.cells[case.id] = Cell("fail", f"host did not start with policy {policy}: {e}")
            continue
        try:
            outcomes = host.decide_many(group, minter)
        finally:
            host.stop()
        for case in group:
            outcome = outcomes.get(case.id) or Outcome.failure("no outcome")
            run.cells[case.id] = judge(case, outcome, getattr(host, "reason_aliases", None))


def run_conformance(hosts: list[str], pattern: str | None = None, build: bool = True, log=None,
                    vectors: Path | None = None) -> Report:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cases = load_cases(pattern, vectors) if vectors else load_cases(pattern)
    err = ensure_cli(build)
    if err:
        raise VectorError(f"the CLI is needed to mint tokens: {err}")
    minter = Minter(cli_path())
    runs = []
    for name in hosts:
        host = make_host(name, build)
        log(f"[{name}] preparing")
        runs.append(run_host(host, cases, minter, log))
        if runs[-1].unavailable:
            log(f"[{name}] unavailable: {runs[-1].unavailable.splitlines()[0]}")
    return Report(cases, runs)


# -------------------------------------------------------------------------------------------------
# Printing
# -------------------------------------------------------------------------------------------------


def fmt(triple) -> str:
    verdict, status, reason = triple
    return f"{verdict} {status} {reason}"


def cell_text(cell: Cell) -> str:
    if cell.state == "pass":
        if cell.outcome is not None and cell.outcome.response_unchecked:
            return "✓ (request only)"
        return f"✓ ({cell.why})" if cell.why else "✓"
    if cell.state == "fail":
        return "✗"
    return f"n/a ({cell.why})"


def print_report(report: Report, out=sys.stdout) -> None:
    hosts = [r.host for r in report.runs]
    id_width = max([len(c.id) for c in report.cases] + [4])
    widths = {}
    for run in report.runs:
        texts = [cell_text(c) for c in run.cells.values()] if not run.unavailable else ["n/a (unavailable)"]
        widths[run.host] = max([len(run.host)] + [len(t) for t in texts])
    print(f"{'case':<{id_width}}  " + "  ".join(f"{h:<{widths[h]}}" for h in hosts), file=out)
    print("-" * (id_width + 2 + sum(widths[h] + 2 for h in hosts)), file=out)
    area = None
    for case in report.cases:
        if case.area != area:
            area = case.area
            print(f"# {area}", file=out)
        row = []
        for run in report.runs:
            cell = run.cells.get(case.id)
            text = "n/a (unavailable)" if run.unavailable else (cell_text(cell) if cell else "?")
            row.append(f"{text:<{widths[run.host]}}")
        print(f"{case.id:<{id_width}}  " + "  ".join(row).rstrip(), file=out)
    print(file=out)

    for run in report.runs:
        if run.unavailable:
            print(f"host {run.host}: unavailable — {run.unavailable}", file=out)
        elif run.note:
            print(f"host {run.host}: {run.note}", file=out)
    notes = sorted({(r.host, c.outcome.response_unchecked) for r in report.runs for c in r.cells.values()
                    if c.outcome is not None and c.outcome.response_unchecked})
    for host, why in notes:
        print(f"host {host}: tools/list response filtering not checked ({why}); only the request decision is checked", file=out)

    failures = report.failures()
    if failures:
        print(f"\n{len(failures)} disagreement(s) with the vectors:", file=out)
        for case, host, cell in failures:
            o = cell.outcome
            print(f"✗ {case.id} on {host} ({case.file}, policy {case.policy})", file=out)
            print(f"    expected: {fmt(expected_triple(case, o))}", file=out)
            if o is not None and o.verdict is not None:
                print(f"    got:      {fmt(o.triple())}", file=out)
                diff = [n for n, a, b in zip(("verdict", "status", "reason"), expected_triple(case, o), o.triple()) if a != b]
                if diff:
                    print(f"    differs:  {', '.join(diff)}", file=out)
            if cell.why:
                for i, line in enumerate(cell.why.splitlines()):
                    print(f"    {'detail:  ' if i == 0 else '         '} {line}", file=out)
    cross = cross_host(report)
    if cross:
        print(f"\n{len(cross)} case(s) where hosts disagree with each other:", file=out)
        for case_id, seen in cross:
            print(f"  {case_id}: " + "; ".join(f"{h}: {fmt(t)}" for h, t in seen), file=out)

    print(file=out)
    for run in report.runs:
        ran = sum(1 for c in run.cells.values() if c.state != "na")
        state = "unavailable" if run.unavailable else f"{ran} cases"
        print(f"time {run.host}: {run.seconds:.1f} s ({state})", file=out)
    c = report.counts()
    line = f"{c['pass']} passed, {c['fail']} failed"
    if c["na"]:
        line += f", {c['na']} skipped"
    print(line, file=out)


def cross_host(report: Report) -> list[tuple[str, list[tuple[str, tuple]]]]:
    out = []
    for case in report.cases:
        seen = []
        for run in report.runs:
            cell = run.cells.get(case.id)
            if cell and cell.outcome is not None and cell.outcome.verdict is not None:
                # A host without an upstream decides the request only (`expect_reply` is not its to give).
                if expected_reply(case) is not None and cell.outcome.response_unchecked is not None:
                    continue
                seen.append((run.host, cell.outcome.triple()))
        if len({t for _, t in seen}) > 1:
            out.append((case.id, seen))
    return out


def print_list(cases: list[Case]) -> None:
    areas = Counter(c.area for c in cases)
    for case in cases:
        marks = "".join(f"  [{h}: {why}]" for h, why in case.hosts.items())
        print(f"{case.id:<48} {fmt(case.expected()):<40} {case.policy}{marks}")
    print()
    for area, n in areas.items():
        print(f"{area}: {n}")
    print(f"total: {len(cases)} cases, policies: {', '.join(sorted({c.policy for c in cases}))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default=DEFAULT_HOSTS, help=f"comma-separated, among {','.join(RUN_HOSTS)} (default {DEFAULT_HOSTS})")
    parser.add_argument("--cases", default=None, help="comma-separated id globs (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--require-all", action="store_true", help="exit 1 when a requested host is unavailable")
    parser.add_argument("--no-build", action="store_true", help="use the built binaries as they are (no cargo build)")
    parser.add_argument("--vectors", type=Path, default=None, help="another directory of vector files (policies and keys stay tests/vectors/)")
    parser.add_argument("--json", type=Path, default=None, help="also write every cell's outcome here")
    args = parser.parse_args(argv)
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    for h in hosts:
        if h not in RUN_HOSTS:
            parser.error(f"unknown host {h!r} (hosts: {', '.join(RUN_HOSTS)})")
    try:
        if args.list:
            print_list(load_cases(args.cases, args.vectors) if args.vectors else load_cases(args.cases))
            return 0
        report = run_conformance(hosts, args.cases, build=not args.no_build, vectors=args.vectors)
    except VectorError as e:
        print(f"conformance: {e}", file=sys.stderr)
        return 2
    if not report.cases:
        print(f"conformance: no case matches {args.cases!r}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=1))
    if report.counts()["fail"]:
        return 1
    if args.require_all and any(r.unavailable for r in report.runs):
        return 1
    return 0


def to_json(report: Report) -> dict:
    return {
        "hosts": {r.host: {"unavailable": r.unavailable, "seconds": round(r.seconds, 2),
                           "cells": {i: {"state": c.state, "why": c.why,
                                         "got": list(c.outcome.triple()) if c.outcome else None}
                                     for i, c in r.cells.items()}}
                  for r in report.runs},
        "counts": dict(report.counts()),
    }


def reexec_in_venv(argv: list[str]) -> None:
    """Envoy and workerd adapters use the project venv (httpx, cryptography for mTLS certificates)."""
    wants = any(h in (argv_hosts(argv) or []) for h in ("envoy", "envoy-hybrid", "worker"))
    if wants and VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() \
            and not os.environ.get("TXNGATE_CONFORMANCE_NO_REEXEC"):
        os.environ["TXNGATE_CONFORMANCE_NO_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])


def argv_hosts(argv: list[str]) -> list[str] | None:
    for i, a in enumerate(argv):
        if a == "--hosts" and i + 1 < len(argv):
            return argv[i + 1].split(",")
        if a.startswith("--hosts="):
            return a.split("=", 1)[1].split(",")
    return None


if __name__ == "__main__":
    reexec_in_venv(sys.argv[1:])
    sys.exit(main())
