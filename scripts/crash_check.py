"""Crash check: SIGKILL the export folder's writers at random moments; the folder must survive.

Run it from the repository root (it takes a few minutes per ten rounds on two cores):

    .venv/bin/python scripts/crash_check.py --rounds 30 [--seed 0] [--json crash.json] [--keep]

What it proves (docs/design.md, "The export folder"):
for each writer, `mexport --force --quantize dynamic` and `matryoshka calibrate` (alternately
with `--int8 static --variant int8` and plain), it starts the writer on a tiny export, kills it
with SIGKILL at a random time in [0, 1.05 x its uninterrupted duration] after it takes the
folder's writer lock (so every kill lands in its work, not in Python's start-up), then checks that
manifest.json parses and passes `read_manifest`, and that `Runtime.open` + `predict` work (fp32,
and int8 whenever every level has an int8 graph). It counts the leftovers of the dead writer
(hidden `.*.tmp` files, graph files the manifest does not name, `.EXP.*.tmp` sibling folders),
then runs `matryoshka calibrate` to completion and checks that it left none and the folder still
opens and predicts. Exit status 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matryoshka.data import load_dataset
from matryoshka.io import LOCK
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import GRAPH_FILE, MANIFEST, named_files, read_manifest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin").is_dir() else Path(sys.executable).parent
TEMP = re.compile(r"^\..+\.tmp$")


def run_to_end(cmd: list[str], log: Path, exp: Path | None = None) -> float:
    """Run a command to completion (exit 0 required); return its wall time in seconds, counted
    from the moment it holds exp's writer lock when `exp` is given."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        start = time.monotonic()
        if exp is not None and wait_for_lock(exp, proc):
            start = time.monotonic()
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return time.monotonic() - start


def wait_for_lock(exp: Path, proc: subprocess.Popen) -> bool:
    """Wait until proc holds exp's writer lock (its pid is in .lock); False if it exits first.
    Killing only after this point puts every kill inside the writer's work, not in its
    interpreter's start-up."""
    while proc.poll() is None:
        try:
            if (exp / LOCK).read_text().split()[:1] == [str(proc.pid)]:
                return True
        except OSError:
            pass
        time.sleep(0.002)
    return False


def leftovers(exp: Path) -> list[str]:
    """Hidden temp files, unnamed graph files, and `.EXP.*.tmp` sibling folders."""
    try:
        named = named_files(read_manifest(exp))
    except Exception:  # a broken manifest is reported by check_folder
        named = {}
    found = [p.name for p in exp.iterdir()
             if TEMP.match(p.name) or (GRAPH_FILE.match(p.name) and p.name not in named)]
    return sorted(found + [p.name for p in exp.parent.glob(f".{exp.name}.*.tmp")])


def check_folder(exp: Path, x: np.ndarray) -> list[str]:
    """The problems a reader would meet in the folder now (an empty list when it is whole)."""
    try:
        json.loads((exp / MANIFEST).read_text())
        manifest = read_manifest(exp)
    except Exception as e:
        return [f"manifest: {type(e).__name__}: {e}"]
    variants = ["fp32"]
    if all("int8" in lv for lv in manifest["levels"]):
        variants.append("int8")
    problems = []
    for variant in variants:
        try:
            labels = Runtime.open(exp, device="cpu", variant=variant).predict(x).labels
            if len(labels) != len(x):
                problems.append(f"{variant}: predict returned {len(labels)} labels for {len(x)}")
        except Exception as e:
            problems.append(f"{variant}: open/predict: {type(e).__name__}: {e}")
    return problems


def crash_rounds(kind: str, cmds: list[tuple[list[str], float]], rounds: int, exp: Path,
                 x: np.ndarray, rng: random.Random, log: Path, failures: list[str]) -> dict:
    """Kill `kind` `rounds` times at random moments; check the folder after each kill and after
    the next writer. Appends a line to `failures` for every failed check."""
    stats = {"rounds": rounds, "killed": 0, "finished": 0, "rounds_with_leftovers": 0,
             "max_leftovers": 0, "failures_after_kill": 0, "leftovers_after_next": 0,
             "failures_after_next": 0}
    fixer = [str(BIN / "matryoshka"), "calibrate", str(exp), "--no-progress"]
    for i in range(rounds):
        cmd, duration = cmds[i % len(cmds)]
        delay = rng.uniform(0, 1.05 * duration)
        where = (f"{kind} round {i + 1} ({' '.join(cmd[1:])}, kill {delay:.2f} s after it took "
                 "the lock)")
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            wait_for_lock(exp, proc)
            time.sleep(delay)
            proc.kill()  # a no-op when it has already exited
            rc = proc.wait()
        if rc == -signal.SIGKILL:
            stats["killed"] += 1
        else:
            stats["finished"] += 1
            if rc != 0:
                failures.append(f"{where}: finished with exit {rc}: "
                                f"{log.read_text(errors='replace')[-500:]}")
        after_kill = leftovers(exp)
        if after_kill:
            stats["rounds_with_leftovers"] += 1
            stats["max_leftovers"] = max(stats["max_leftovers"], len(after_kill))
        for problem in check_folder(exp, x):
            stats["failures_after_kill"] += 1
            failures.append(f"{where}: after the kill: {problem} (leftovers: {after_kill})")
        try:
            run_to_end(fixer, log)
        except RuntimeError as e:
            stats["failures_after_next"] += 1
            failures.append(f"{where}: the next writer failed: {e}")
        left = leftovers(exp)
        if left:
            stats["leftovers_after_next"] += 1
            failures.append(f"{where}: leftovers after the next writer: {left}")
        for problem in check_folder(exp, x):
            stats["failures_after_next"] += 1
            failures.append(f"{where}: after the next writer: {problem}")
        print(f"  {where}: {'killed' if rc == -signal.SIGKILL else f'exit {rc}'}; leftovers "
              f"{len(after_kill)} after the kill, {len(left)} after the next writer", flush=True)
    return stats


def print_table(summary: dict[str, dict]) -> None:
    cols = ["rounds", "killed", "finished", "rounds_with_leftovers", "max_leftovers",
            "failures_after_kill", "leftovers_after_next", "failures_after_next"]
    print(f"{'writer':<10}" + "".join(f"{c:>23}" for c in cols))
    for kind, stats in summary.items():
        print(f"{kind:<10}" + "".join(f"{stats[c]:>23}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="kills per writer kind [30]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times [0]")
    ap.add_argument("--json", type=Path, help="also write the summary to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args(argv)
    logging.getLogger("matryoshka").setLevel(logging.ERROR)  # e.g. 'no calibration' notes
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="crash_check."))
    ck, exp, log = tmp / "ck", tmp / "exp", tmp / "writer.log"
    try:
        print(f"setup in {tmp}: training and exporting a tiny model", flush=True)
        mx = str(BIN / "matryoshka")
        run_to_end([mx, "train", "--preset", "tiny", "--epochs", "1", "--out", str(ck),
                    "--no-progress"], log)
        export = [str(BIN / "mexport"), "--checkpoint", str(ck), "--out", str(exp),
                  "--no-progress", "--quantize", "dynamic"]
        run_to_end(export, log)
        x = load_dataset("demo")["test"][0][:50]
        writers = {"mexport": [export + ["--force"]],
                   "calibrate": [[mx, "calibrate", str(exp), "--no-progress", "--int8", "static",
                                  "--variant", "int8"], [mx, "calibrate", str(exp),
                                                         "--no-progress"]]}
        timed = {kind: [(cmd, run_to_end(cmd, log, exp)) for cmd in cmds]
                 for kind, cmds in writers.items()}
        for kind, cmds in timed.items():
            print(f"{kind}: uninterrupted, from taking the lock to the end: "
                  + ", ".join(f"{d:.1f} s" for _, d in cmds))
        failures: list[str] = []
        summary = {kind: crash_rounds(kind, cmds, args.rounds, exp, x, rng, log, failures)
                   for kind, cmds in timed.items()}
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "writers": summary,
                                         "failures": failures}, indent=2) + "\n")
    if failures:
        print(f"FAIL: {len(failures)} check(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("OK: every kill left a folder that opens and predicts, and the next writer "
          "cleaned every leftover")
    return 0


if __name__ == "__main__":
    sys.exit(main())
