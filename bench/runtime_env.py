"""Builds, once, the Python 3.13 venv in which `function_host.py --runtime` runs the app under the real worker
library (`azure-functions-runtime` needs 3.13+; the project's .venv is older), with the host's protos compiled.

The protos (the host <-> worker gRPC contract, `FunctionRpc.proto` and its imports) are not part of this repo:
point FUNCTIONS_HOST_PROTOS at the `proto` folder of a checkout of the Functions language-worker protobuf
(e.g. azure-functions-python-worker's `azure_functions_worker/protos/_src/src/proto`). Without it, or without
Python 3.13, `--dispatch auto` uses the emulated dispatch (which measured the same CPU per connect).

    FUNCTIONS_HOST_PROTOS=DIR python bench/runtime_env.py [APP_ROOT]   # prints the venv's python
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROTOS = Path(os.environ["FUNCTIONS_HOST_PROTOS"]) if os.environ.get("FUNCTIONS_HOST_PROTOS") else None
VENV = Path(os.environ.get("BENCH_RUNTIME_VENV") or Path.home() / ".cache" / "realtime-bench" / "runtime-venv")
PACKAGES = ["azure-functions-runtime>=1.3,<2", "grpcio-tools", "aiohttp>=3.11,<4", "Werkzeug>=3.0,<4"]


def python313() -> str | None:
    """pyenv's 3.13, else python3.13 from PATH (pyenv's shim there fails unless 3.13 is selected)."""
    pyenv = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.13*/bin/python")))
    return pyenv[-1] if pyenv else shutil.which("python3.13")


def available() -> bool:
    return PROTOS is not None and (PROTOS / "FunctionRpc.proto").is_file() and python313() is not None


def ensure(app_root: Path) -> Path:
    """The venv's python, after (re)building it if the app's requirements, the protos or PACKAGES changed."""
    if PROTOS is None:
        raise SystemExit(
            "set FUNCTIONS_HOST_PROTOS to the host's proto folder (see bench/runtime_env.py), "
            "or use --dispatch emulated"
        )
    inputs = [app_root / "requirements.txt", *sorted(PROTOS.rglob("*.proto"))]
    want = hashlib.sha256(b"".join(p.read_bytes() for p in inputs) + repr(PACKAGES).encode()).hexdigest()
    python, stamp = VENV / "bin" / "python", VENV / ".inputs.sha"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    print(f"building {VENV} (Python 3.13, azure-functions-runtime)...", file=sys.stderr)
    shutil.rmtree(VENV, ignore_errors=True)
    base = python313()
    if base is None:
        raise SystemExit("the real worker library needs Python 3.13 (pyenv install 3.13), or use --dispatch emulated")
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    requirements = str(app_root / "requirements.txt")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES, "-r", requirements], check=True)
    compiled = VENV / "functions-protos"
    compiled.mkdir()
    subprocess.run(
        [
            str(python),
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(PROTOS),
            f"--python_out={compiled}",
            *(str(p.relative_to(PROTOS)) for p in sorted(PROTOS.rglob("*.proto"))),
        ],
        cwd=PROTOS,
        check=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "functions-protos.pth").write_text(f"{compiled}\n")
    stamp.write_text(want)
    return python


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else BENCH.parent))
