"""Run every benchmark at a modest size (≤ 10 minutes on 2 CPU cores), then write the report.

    python benchmarks/run_all.py            # modest sizes → benchmarks/results/
    python benchmarks/run_all.py --quick    # tiny sizes, seconds (what the CI smoke test runs)
    python benchmarks/run_all.py --out DIR  # somewhere else

The target sizes of issue 7 (JSD at (8, 512, 32000) and (2, 512, 151936), three seeds of the
steps-to-target run) take longer; run those scripts on their own (see README.md).
Installs nothing: TRL columns appear when TRL is installed (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (script, arguments at run_all's modest size)
MODEST = [
    ("bench_jsd.py", ["--size", "modest", "--repeats", "3"]),
    ("bench_step.py", ["--pairs", "1"]),
    ("bench_fused.py", ["--size", "modest", "--repeats", "2", "--betas", "1"]),
    ("bench_teacher_memory.py", []),
    ("bench_steps_to_target.py", ["--seeds", "1", "--max-steps", "200"]),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON, markdown and PNG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip TRL even when installed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    start = time.perf_counter()
    for script, extra in MODEST:
        name = script.removeprefix("bench_").removesuffix(".py")
        cmd = [
            sys.executable,
            str(HERE / script),
            "--json",
            str(out / f"{name}.json"),
            "--threads",
            str(args.threads),
        ]
        cmd += ["--quick"] if args.quick else extra
        cmd += ["--no-peer"] if args.no_peer else []
        print(f"\n=== {script} {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        print(f"=== {script}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        failures += code != 0
    sys.path.insert(0, str(HERE))
    from report import write_report

    write_report(out)
    print(f"\nrun_all: {time.perf_counter() - start:.0f} s, {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
