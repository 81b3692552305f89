"""Instructions per saga under valgrind: a figure the machine's noise cannot move.

Wall-clock rates on a shared VM drift by a factor of two within minutes, which
hides a 5% change. Valgrind's callgrind counts the instructions the interpreter
executes instead: the same code gives the same count, run after run (to within
about 2% between runs: garbage collection and hash seeds vary).

For each implementation of `bench_orchestrator.py` (hand-written, the "hand +
log" floor that does only the work sagaflow's guarantees require, sagaflow and
python-cqrs, if the ``bench`` extra is installed) it runs the
happy or failure path twice, with ``--base`` and ``--base + --sagas`` sagas, and
divides the difference by ``--sagas``: start-up and imports cancel out.

Run:  .venv/bin/python benchmarks/bench_instructions.py [--path happy|failure|both]
(needs valgrind; each count takes about a minute.)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLEMENTATIONS = {
    "hand-written": "make_hand",
    "hand + log": "make_hand_logged",
    "sagaflow": "make_sagaflow",
    "python-cqrs": "make_cqrs",
}


def run_sagas(implementation: str, fail: bool, count: int) -> None:
    """Run ``count`` sagas of one implementation (the child process's job)."""
    sys.path.insert(0, str(HERE))
    import bench_orchestrator as bench

    one = getattr(bench, IMPLEMENTATIONS[implementation])(fail)
    if one is None:
        sys.exit(f"{implementation} is not installed")

    async def main() -> None:
        for _ in range(count):
            await one()

    asyncio.run(main())


def instructions(implementation: str, fail: bool, count: int) -> int:
    """Instructions callgrind counts for a whole child process running ``count`` sagas."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        implementation,
        "failure" if fail else "happy",
        str(count),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", output)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output[-2000:]}")
    return int(match.group(1))


def per_saga(implementation: str, fail: bool, base: int, sagas: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs are independent: use both cores
        low, high = pool.map(
            lambda count: instructions(implementation, fail, count), (base, base + sagas)
        )
    return (high - low) / sagas


def cqrs_installed() -> bool:
    sys.path.insert(0, str(HERE))
    import bench_orchestrator as bench

    return bench.make_cqrs(False) is not None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", choices=("happy", "failure", "both"), default="both")
    parser.add_argument("--base", type=int, default=300, help="sagas of the shorter run")
    parser.add_argument("--sagas", type=int, default=1_000, help="extra sagas of the longer run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, path, count = args.child
        run_sagas(implementation, path == "failure", int(count))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (e.g. apt-get install valgrind)")
    print(f"python {sys.version.split()[0]}; instructions per saga (callgrind)")
    paths = ("happy", "failure") if args.path == "both" else (args.path,)
    for path in paths:
        counts = {
            name: per_saga(name, path == "failure", args.base, args.sagas)
            for name in IMPLEMENTATIONS
            if name != "python-cqrs" or cqrs_installed()
        }
        floor = counts["hand + log"]
        ours = counts["sagaflow"]
        print(f"\n{path} path")
        print(
            f"  {'implementation':<14} {'instructions':>12} {'/ the floor':>12} {'/ sagaflow':>11}"
        )
        for name, count in counts.items():
            print(f"  {name:<14} {count:12,.0f} {count / floor:11.2f}x {count / ours:10.2f}x")


if __name__ == "__main__":
    main()
