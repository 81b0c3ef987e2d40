"""Intra-op threads or parallel requests: how to spend a many-core CPU on one exported level.

    python benchmarks/threads.py [--export artifacts/demo/export | --graph PATH.onnx]
        [--level N] [--batches 1,32] [--seconds 3] [--rounds 3] [--configs 1x16,4x4,16x1]
        [--seq N] [--warmup 3] [--json OUT]

A config PxT is P concurrent requests, each on its own InferenceSession with T intra-op threads
(inter-op 1), driven by P Python threads: onnxruntime releases the GIL inside session.run, so
the P runs overlap. 1xN is one request at a time on N threads; Nx1 is N single-threaded requests.
The default configs are every factorisation P x T == the cores this process may use.

Per batch, each session is warmed up, then the configs run in --rounds alternating rounds
(the order reversed every other round) of --seconds / --rounds each, and the rounds are pooled,
so that the machine's drift falls on every config alike. Each request loops session.run on its
own random batch (the manifest's input spec: float32 pixels or int64 ids 2..vocab-1) until the
round's time is up, recording every call's latency. A config with P > 1 spends a quarter of
its slot with one request running alone (the latency when requests come one at a time) and the
rest with all P running (the loaded latency and the throughput).

Reported per config: throughput (samples/s over all requests), the p50 of a lone call, the p50
and p90 of a call while all P run, each relative to the 1-request config at that batch, and
the per-round throughput range. Latency here is service time: it leaves out the wait of a
request queued behind others, which under a load above a config's throughput dominates. The
closing "how to choose" paragraph is computed from the table, not written in advance: the
fastest lone call says how many intra-op threads a latency-bound service should give a call,
the most samples/s which config a throughput-bound one should run.

--graph runs one .onnx file: a manifest.json beside it gives the input spec; without one the
graph's declared input is used (token ids then need --seq, and stay below its smallest Gather
table). With no export and no --graph the script says to run `bash scripts/demo.sh` and exits.

Python threads cost a little GIL time between runs; with many requests on a graph that runs in
tens of microseconds this shows up as lost throughput (processes would not pay it). Every
config's sessions stay alive for the whole run, so memory is about sum(P) copies of the graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.runtime.providers import session_options
from matryoshka.runtime.timing import device_name

CPU = ["CPUExecutionProvider"]
ALONE_SHARE = 0.25  # of a P>1 config's time per round, spent on one request alone


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def factorisations(cores: int) -> list[tuple[int, int]]:
    return [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            p, t = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--configs: {item!r} is not REQUESTSxTHREADS, e.g. 2x4") from None
        if p < 1 or t < 1:
            raise SystemExit(f"--configs: {item!r}: both numbers must be >= 1")
        if (p, t) not in configs:
            configs.append((p, t))
    if not configs:
        raise SystemExit("--configs: no config given")
    return configs


def gather_rows(path: Path) -> int | None:
    """The fewest rows of any Gather table in the graph: ids below it index every table."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {t.name: t.dims for t in graph.initializer}
    rows = [dims[n.input[0]][0] for n in graph.node
            if n.op_type == "Gather" and n.input[0] in dims and len(dims[n.input[0]]) > 0]
    return min(rows) if rows else None


def locate(args: argparse.Namespace) -> tuple[Path, str, dict]:
    """The graph to run, its label, and the input spec (the manifest's `input`, plus vocab)."""
    if args.graph:
        graph = Path(args.graph)
        if not graph.is_file():
            raise SystemExit(f"no graph at {graph}")
        manifest_path = graph.parent / "manifest.json"
        if manifest_path.is_file():  # an export folder's graph: its manifest knows the input
            manifest = json.loads(manifest_path.read_text())
            return graph, graph.name, spec_of(manifest)
        return graph, graph.name, spec_from_graph(graph, args.seq)
    folder = Path(args.export)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"no export at {folder} (no manifest.json): run `bash scripts/demo.sh` "
                         "or pass --export DIR or --graph PATH.onnx")
    manifest = json.loads(manifest_path.read_text())
    # levels by name (schema 2), or by width (schema 1), in the manifest's order of FLOPs
    levels = {e.get("name", str(e["dim"])): e["file"] for e in manifest.get("levels", [])}
    if not levels:
        raise SystemExit(f"{manifest_path} lists no levels")
    level = args.level if args.level is not None else list(levels)[-1]
    if level not in levels:
        raise SystemExit(f"--level {level} is not in {manifest_path}: it has "
                         f"{', '.join(levels)}")
    return folder / levels[level], f"level {level}", spec_of(manifest)


def spec_of(manifest: dict) -> dict:
    spec, model = dict(manifest["input"]), manifest.get("model", {})
    if spec["dtype"] != "float32":
        for key in ("vocab_size", "max_len"):
            if spec.get(key) is None:
                spec[key] = model.get(key)
            if spec[key] is None:
                raise SystemExit(f"the manifest gives no {key} for the {spec['dtype']} input")
    return spec


def spec_from_graph(graph: Path, seq: int | None) -> dict:
    """No manifest: the graph's declared input; ids stay below its smallest Gather table."""
    inp = ort.InferenceSession(str(graph), providers=CPU).get_inputs()[0]
    dims = list(inp.shape)
    if inp.type == "tensor(float)":
        return {"name": inp.name, "dtype": "float32", "shape": ["batch", *dims[1:]]}
    if inp.type != "tensor(int64)":
        raise SystemExit(f"{graph}: input {inp.name} is {inp.type}; only float and int64 inputs "
                         "are supported")
    if seq is None and not all(isinstance(d, int) for d in dims[1:]):
        raise SystemExit(f"{graph}: a token-id input and no manifest.json beside it: pass --seq "
                         "(the model's max_len or less) or --export DIR")
    rows = gather_rows(graph)
    if rows is None or rows < 3:
        raise SystemExit(f"{graph}: cannot tell its vocabulary; pass --export with its manifest")
    return {"name": inp.name, "dtype": "int64", "shape": ["batch", *dims[1:]],
            "vocab_size": rows, "max_len": seq}


def make_input(spec: dict, batch: int, seed: int) -> np.ndarray:
    """Random input of the spec's dtype; 'batch' is `batch`, any other named axis max_len."""
    shape = [batch if i == 0 else d if isinstance(d, int) else spec["max_len"]
             for i, d in enumerate(spec["shape"])]
    rng = np.random.default_rng(seed)
    if spec["dtype"] == "float32":
        return rng.random(shape, dtype=np.float32) * 16  # the digits' 0..16 pixel range
    return rng.integers(2, spec["vocab_size"], shape, dtype=np.int64)  # no padding, no special


def run_round(sessions: list[ort.InferenceSession], feeds: list[dict], seconds: float
              ) -> tuple[float, list[int], np.ndarray]:
    """All P requests at once for `seconds`: wall time, calls per request, every latency."""
    n = len(sessions)
    lat: list[list[float]] = [[] for _ in range(n)]
    ends = [0.0] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1)
    deadline = [0.0]

    def request(i: int) -> None:
        sess, feed, out = sessions[i], feeds[i], lat[i]
        barrier.wait()
        stop = deadline[0]
        try:
            while True:
                t0 = time.perf_counter()
                sess.run(None, feed)
                t1 = time.perf_counter()
                out.append(t1 - t0)
                if t1 >= stop:
                    break
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(ends) - start, [len(x) for x in lat], np.concatenate([np.array(x) for x in lat])


def measure(sessions: dict[tuple[int, int], list[ort.InferenceSession]], name: str,
            spec: dict, batch: int, seconds: float, rounds: int, warmup: int) -> list[dict]:
    configs = list(sessions)
    feeds = {c: [{name: make_input(spec, batch, seed=i)} for i in range(c[0])] for c in configs}
    for c in configs:
        for sess, feed in zip(sessions[c], feeds[c]):
            for _ in range(warmup):
                sess.run(None, feed)
    acc = {c: {"wall": [], "calls": 0, "lat": [], "tput": [], "p50": [], "alone": [],
               "alone_p50": []} for c in configs}
    slot = seconds / rounds
    for r in range(rounds):
        for c in configs if r % 2 == 0 else configs[::-1]:
            a = acc[c]
            if c[0] > 1:  # one of its requests alone: the latency when requests come singly
                _, _, lat = run_round(sessions[c][:1], feeds[c][:1], slot * ALONE_SHARE)
                a["alone"].append(lat)
                a["alone_p50"].append(float(np.median(lat)))
            wall, calls, lat = run_round(sessions[c], feeds[c],
                                         slot * (1 - ALONE_SHARE) if c[0] > 1 else slot)
            a["wall"].append(wall)
            a["calls"] += sum(calls)
            a["lat"].append(lat)
            a["tput"].append(sum(calls) * batch / wall)
            a["p50"].append(float(np.median(lat)))
    rows = []
    for (p, t), a in acc.items():
        lat = np.concatenate(a["lat"])
        alone = np.concatenate(a["alone"]) if p > 1 else lat
        rows.append({"batch": batch, "config": f"{p}x{t}", "requests": p, "threads": t,
                     "calls": a["calls"], "seconds": sum(a["wall"]),
                     "samples_per_s": a["calls"] * batch / sum(a["wall"]),
                     "round_samples_per_s": a["tput"],
                     "p50_ms": float(np.median(lat) * 1e3),
                     "p90_ms": float(np.percentile(lat, 90) * 1e3),
                     "alone_p50_ms": float(np.median(alone) * 1e3),
                     "round_alone_p50_ms": [v * 1e3 for v in (a["alone_p50"] if p > 1
                                                               else a["p50"])]})
    ref = min(rows, key=lambda r: (r["requests"], -r["threads"]))
    for r in rows:
        r["reference"] = ref["config"]
        r["throughput_vs_ref"] = r["samples_per_s"] / ref["samples_per_s"]
        r["p50_vs_ref"] = r["p50_ms"] / ref["p50_ms"]
        r["alone_p50_vs_ref"] = r["alone_p50_ms"] / ref["alone_p50_ms"]
    return rows


def table(rows: list[dict]) -> str:
    ref = rows[0]["reference"]
    lines = [f"| batch | requests x threads | calls | samples/s | rounds' samples/s | x {ref} "
             f"| p50 ms alone | x {ref} | p50 ms loaded | p90 ms loaded | x {ref} |",
             "|---:|:---|---:|---:|:---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = f"{min(r['round_samples_per_s']):,.0f}-{max(r['round_samples_per_s']):,.0f}"
        lines.append(f"| {r['batch']} | {r['config']} | {r['calls']} | "
                     f"{r['samples_per_s']:,.0f} | {spread} | x{r['throughput_vs_ref']:.2f} | "
                     f"{r['alone_p50_ms']:.3f} | x{r['alone_p50_vs_ref']:.2f} | "
                     f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | x{r['p50_vs_ref']:.2f} |")
    return "\n".join(lines)


def clear_win(best: list[float], other: list[float], higher: bool) -> bool:
    """True when the winner's worst round still beats the runner-up's best round."""
    return min(best) > max(other) if higher else max(best) < min(other)


def verdict(rows: list[dict]) -> dict:
    """The config with the most throughput, the one with the fastest lone call, how clearly."""
    by_tp = sorted(rows, key=lambda r: -r["samples_per_s"])
    by_lat = sorted(rows, key=lambda r: r["alone_p50_ms"])
    out = {"batch": rows[0]["batch"], "reference": rows[0]["reference"],
           "best_throughput": by_tp[0]["config"], "best_latency": by_lat[0]["config"],
           "throughput_clear": None, "latency_clear": None}
    if len(rows) > 1:
        out["throughput_clear"] = clear_win(by_tp[0]["round_samples_per_s"],
                                            by_tp[1]["round_samples_per_s"], True)
        out["latency_clear"] = clear_win(by_lat[0]["round_alone_p50_ms"],
                                         by_lat[1]["round_alone_p50_ms"], False)
        out["runner_up_throughput"] = by_tp[1]["config"]
        out["runner_up_latency"] = by_lat[1]["config"]
    return out


def _threads(n: int) -> str:
    return f"{n} intra-op thread{'s' if n > 1 else ''}"


def _and(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _per_batch(pairs: list[tuple[int, object]], fmt) -> str:
    """'X at every batch measured' when all agree, else 'X at batch 1, Y at batch 32'."""
    if len({v for _, v in pairs}) == 1:
        where = "every batch measured" if len(pairs) > 1 else f"batch {pairs[0][0]}"
        return f"{fmt(pairs[0][1])} at {where}"
    return ", ".join(f"{fmt(v)} at batch {b}" for b, v in pairs)


def advice(rows: list[dict], verdicts: list[dict], cores: int) -> str:
    """The 'how to choose' paragraph, stated from what this run measured."""
    at = {(r["batch"], r["config"]): r for r in rows}
    parts, lat_rule, tp_rule = [], [], []
    for v in verdicts:
        b = v["batch"]
        tp, lt, ref = (at[(b, v[k])] for k in ("best_throughput", "best_latency", "reference"))
        close = "; within the round-to-round spread of {}"
        s = (f"At batch {b}, one request at a time, a call was fastest on "
             f"{_threads(lt['threads'])} (p50 {lt['alone_p50_ms']:.3f} ms alone")
        if lt is not ref and lt["threads"] != ref["threads"]:
            s += (f"; on {ref['threads']} it took {ref['alone_p50_ms']:.3f} ms, "
                  f"x{ref['alone_p50_ms'] / lt['alone_p50_ms']:.2f}")
        s += (close.format(v["runner_up_latency"]) if v["latency_clear"] is False else "") + ")"
        s += (f"; with every request busy, {tp['config']} gave the most throughput "
              f"({tp['samples_per_s']:,.0f} samples/s, x{tp['throughput_vs_ref']:.2f} those of "
              f"{ref['config']}")
        s += (close.format(v["runner_up_throughput"]) if v["throughput_clear"] is False
              else "") + ")"
        s += (f", each call then taking p50 {tp['p50_ms']:.3f} ms, "
              f"x{tp['p50_ms'] / lt['alone_p50_ms']:.2f} the fastest lone call.")
        parts.append(s)
        lat_rule.append((b, lt["threads"]))
        tp_rule.append((b, tp["config"]))
    rule = (f"So on these {cores} cores: latency-bound (requests come one at a time), give a "
            f"call {_per_batch(lat_rule, _threads)}; throughput-bound (many requests in "
            f"flight), run {_per_batch(tp_rule, lambda c: c)} (requests x threads).")
    most = {v["batch"]: max(r["threads"] for r in rows if r["batch"] == v["batch"])
            for v in verdicts}
    fewer = [b for b, t in lat_rule if t < most[b]]
    single = [b for b, c in tp_rule if c.startswith("1x")
              and any(r["batch"] == b and r["requests"] > 1 for r in rows)]
    if not fewer and not single:
        rule += (" That is the usual split: intra-op threads for latency, parallel requests "
                 "with fewer threads each for throughput, trading per-call latency.")
    if fewer:
        rule += (f" Unlike the usual advice, more intra-op threads did not speed up a lone call "
                 f"at batch {_and(fewer)}.")
    if single:
        rule += (f" At batch {_and(single)} a single request at a time also gave the most "
                 "throughput: parallel requests did not pay.")
    rule += (" Loaded latencies leave out time spent queued, which a config pays once requests "
             "arrive faster than its throughput. Rerun on the target device with its level and "
             "batch sizes.")
    return " ".join(parts) + " " + rule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default="artifacts/demo/export",
                    help="export folder with manifest.json [artifacts/demo/export]")
    ap.add_argument("--graph", help="run this .onnx file instead of an export's level")
    ap.add_argument("--level", default=None, help="level name (a trained level's width, or "
                    "a mix's name) [the largest]")
    ap.add_argument("--batches", default="1,32", help="batch sizes [1,32]")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="wall-clock seconds of each config's run, all rounds together [3]")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds the seconds are split into [3]")
    ap.add_argument("--seq", type=int, default=None,
                    help="token ids per row [the manifest's max_len; needed for a token graph "
                         "without a manifest]")
    ap.add_argument("--configs", default=None,
                    help="REQUESTSxTHREADS list, e.g. 1x2,2x1 [every P x T == cores]")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per session and batch")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.warmup < 0 or (args.seq or 1) < 1:
        ap.error("--seconds must be > 0, --rounds >= 1, --warmup >= 0 and --seq >= 1")
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batches: {args.batches!r} is not a comma-separated list of integers")
    if not batches or min(batches) < 1:
        ap.error("--batches: give positive batch sizes")
    cores = usable_cores()
    configs = parse_configs(args.configs) if args.configs else factorisations(cores)
    graph, label, spec = locate(args)
    if args.seq is not None and spec["dtype"] != "float32":
        if spec.get("max_len") and args.seq > spec["max_len"]:
            ap.error(f"--seq {args.seq} is longer than the model's max_len {spec['max_len']}")
        spec["max_len"] = args.seq

    print(f"{device_name()} | {cores} usable cores | onnxruntime {ort.__version__} | {label} "
          f"({graph}) | input {spec['dtype']} {spec['shape']}")
    odd = [f"{p}x{t}" for p, t in configs if p * t != cores]
    if odd:
        print(f"note: {', '.join(odd)} use{'s' if len(odd) == 1 else ''} a number of threads "
              f"other than the {cores} cores")
    sessions = {(p, t): [ort.InferenceSession(str(graph), session_options(t), providers=CPU)
                         for _ in range(p)] for p, t in configs}
    name = spec.get("name") or next(iter(sessions.values()))[0].get_inputs()[0].name
    print(f"{len(configs)} configs x {len(batches)} batches, {args.seconds:g} s each in "
          f"{args.rounds} alternating rounds\n")
    rows, verdicts = [], []
    for b in batches:
        batch_rows = measure(sessions, name, spec, b, args.seconds, args.rounds, args.warmup)
        rows += batch_rows
        verdicts.append(verdict(batch_rows))
    print(table(rows))
    text = advice(rows, verdicts, cores)
    print(f"\nHow to choose: {text}")
    if args.json:
        report = {"machine": device_name(), "cores": cores, "onnxruntime": ort.__version__,
                  "graph": str(graph), "label": label, "input": spec, "seconds": args.seconds,
                  "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
                  "verdicts": verdicts, "how_to_choose": text}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
