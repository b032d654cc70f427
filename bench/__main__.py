"""`./dev bench [NAME [ARGS...]]`: every benchmark in turn, or the one named with its own arguments.

Each runs in its own interpreter so one's imports and threads cannot skew the other's figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = {
    "overhead": "connect_overhead.py",
    "concurrency": "concurrency.py",
    "limits": "shared_limits.py",
    "tools": "tool_calls.py",
    "supervisor": "supervisor.py",
}


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] not in BENCHMARKS:
        print(
            f"usage: ./dev bench [{'|'.join(BENCHMARKS)} [ARGS...]]   (--help after a name lists its options)",
            file=sys.stderr,
        )
        return 2
    names = [args.pop(0)] if args else list(BENCHMARKS)
    for name in names:
        code = subprocess.run([sys.executable, str(Path(__file__).parent / BENCHMARKS[name]), *args]).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
