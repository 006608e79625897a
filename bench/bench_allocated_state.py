"""CPU per call of allocation.services.allocated_state and _closing (intake's), against another
version of allocation/services.py, interleaved round by round. No database.

Run: .venv/bin/python bench/bench_allocated_state.py --before PATH [--rounds 5] [--calls 20000]

PATH: e.g. ``git show d4ef5c1:allocation/services.py > /tmp/services_before.py``. Three states:
a provider without caps, one with caps that stays open after the lead, one that the lead brings
to its daily cap (which computes when it opens again: a twentieth of the calls). Both versions
must return equal values on each before anything is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from datetime import UTC, datetime

import common

sys.path.insert(0, str(common.APP_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")

import django

django.setup()

import allocation.services as after  # noqa: E402
from providers.routing import Routing, Usage  # noqa: E402


def closed(value: object) -> object:
    """_closing's answer in one shape: (reason, until). Before 2026-12-07 evening it was a dict
    for the write's JSON parameter, {"id", "reason", "at" (ISO text)}."""
    if isinstance(value, dict):
        at = value["at"]
        return value["reason"], datetime.fromisoformat(at) if at else None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="another allocation/services.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("services_before", args.before)
    before = importlib.util.module_from_spec(spec)
    sys.modules["services_before"] = before  # dataclasses look their module up
    spec.loader.exec_module(before)

    now = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    plain = after.LockedProvider(
        1, "p", True, 100, 1, Routing(timezone="Europe/Oslo"), Usage(), True, "", None
    )
    states = {
        "no caps": (plain, args.calls),
        "caps, stays open": (
            dataclasses.replace(plain, routing=Routing(timezone="Europe/Oslo", daily_cap=10**6)),
            args.calls,
        ),
        "cap reached": (
            dataclasses.replace(plain, routing=Routing(timezone="Europe/Oslo", daily_cap=1)),
            args.calls // 20,
        ),
    }
    for label, (state, _) in states.items():
        old = before.allocated_state(before.LockedProvider(**vars(state)), now)
        assert vars(old) == vars(after.allocated_state(state, now)), label
        assert closed(before._closing(state, now)) == closed(after._closing(state, now)), label
    timings: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for function in ("allocated_state", "_closing"):
            for version, module in (("before", before), ("after", after)):
                run = getattr(module, function)
                for label, (state, calls) in states.items():
                    start = time.process_time()
                    for _ in range(calls):
                        run(state, now)
                    per_call = (time.process_time() - start) / calls
                    timings.setdefault((function, label, version), []).append(per_call)
    print("| function | state | before µs | after µs | after / before |")
    print("|---|---|---|---|---|")
    for function in ("allocated_state", "_closing"):
        for label in states:
            old = statistics.median(timings[(function, label, "before")]) * 1e6
            new = statistics.median(timings[(function, label, "after")]) * 1e6
            print(f"| {function} | {label} | {old:.2f} | {new:.2f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
