"""Start-up cost of the ``tabom_dlm`` registration hook.

The ``tabom_eval_hook.pth`` file runs in every Python interpreter of the
environment. This prints the median wall time of ``python -c pass`` with the
hook and with it switched off (``TABOM_EVAL_NO_HOOK=1``), interleaved, and the
hook's own import time from ``-X importtime``.

    python benchmarks/bench_startup.py [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time


def start(env) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args(argv)
    on = dict(os.environ)
    on.pop("TABOM_EVAL_NO_HOOK", None)
    off = {**on, "TABOM_EVAL_NO_HOOK": "1"}
    with_hook, without = [], []
    for _ in range(args.runs):
        with_hook.append(start(on))
        without.append(start(off))
    a, b = statistics.median(with_hook), statistics.median(without)
    print(f"python -c pass: with hook {a * 1e3:.1f} ms, without {b * 1e3:.1f} ms, "
          f"ratio {a / b:.3f}, difference {(a - b) * 1e3:+.2f} ms (median of {args.runs})")
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=on,
                         capture_output=True, text=True)
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s+(\S.*)", line)
        if m and "tabom" in m.group(3):
            print(f"-X importtime: {m.group(3).strip()} {int(m.group(2)) / 1000:.2f} ms cumulative")


if __name__ == "__main__":
    main()
