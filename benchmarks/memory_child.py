"""Peak memory of one `matryoshka` command in its own process, for the memory benchmarks."""

from __future__ import annotations

import subprocess
import sys

# The child reports its own high-water mark (VmHWM) as it exits: wait4's ru_maxrss would also
# count the pages it shared with this process between fork and exec (this process's size).
HWM = ("import atexit, sys\n"
       "def hwm():\n"
       "    for line in open('/proc/self/status'):\n"
       "        if line.startswith('VmHWM:'):\n"
       "            sys.stderr.write('\\nVmHWM ' + line.split()[1] + '\\n')\n"
       "atexit.register(hwm)\n"
       "from matryoshka.cli import main\n"
       "sys.argv = ['matryoshka'] + sys.argv[1:]\n"
       "main()\n")


def peak_mb(args: list[str]) -> tuple[float, str]:
    """Run `matryoshka ARGS` to completion in its own process; its peak RSS in MiB and its
    stdout."""
    proc = subprocess.run([sys.executable, "-c", HWM, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"matryoshka {' '.join(args)} failed: {proc.stderr}")
    kb = [ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("VmHWM ")]
    return int(kb[-1]) / 1024.0, proc.stdout
