"""``python -m bench.report``: run the benchmarks (or read their JSON) and write docs/benchmarks.md.

Data flow: without ``--benchmark-json`` this runs ``pytest bench --report-sizes`` once in a
child process (its JSON and JUnit files live in a temporary directory this command creates
and removes; ``--save-json FILE`` keeps a copy of the JSON); with ``--benchmark-json A.json
[B.json ...]`` it reads those (a later file's benchmark replaces an earlier one of the same
name, as a CI retry does), and ``--junitxml`` files, when given, supply the reasons of
skipped and expected-failure rows.  From the records that the benchmarks
left in ``extra_info`` (see bench/conftest.py, ``record_ratio``) it builds:

- the machine (CPU, cores, memory, Python, numpy) from the JSON's ``machine_info``;
- a table of every ratio with its bound, goal and verdict;
- the array round trip per size for seamless and each peer (bench_peers_arrays.py), the
  T1 breakdown (bench_t1_breakdown.py), tiny-task throughput (bench_pool.py P1/P2,
  bench_peers_tasks.py, bench_parallel.py B1), start-up latency and queued shell jobs
  (bench_cli.py, bench_queue.py), peak memory (bench_transport.py T5 and the peer sweep);
- three PNG plots written into ``--img-dir`` (matplotlib, from the ``bench`` extra only; it
  is imported here, never by seamless), replaced on every run.

The Markdown file and the plots are the only files this writes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

MB = 1_000_000
REPO = pathlib.Path(__file__).resolve().parent.parent
WIDTH_IN, DPI = 8.0, 100  # 800 px wide

# What each gated row compares against (the subject is seamless).
REFERENCES = {
    "T1": "SHA-256 + copy + `a * 2` in-process, 400 MB",
    "T1F": "as T1 (fresh segments after `trim()`)",
    "T2": "SHA-256 + copy + `a * 2` in-process, same size",
    "T3": "T1's round trip at 40 MB (linear: 10x)",
    "T4": "one `np.copyto` of 200 MB",
    "T5": "the array's size (800 MB)",
    "T6": "`multiprocessing.Pool(2).apply`, 400 MB",
    "P1": "`multiprocessing.Pool(2).apply_async`",
    "P2": "the peer in brackets, submit + result",
    "B1": "`Pool(2).imap(chunksize=1)`",
    "B2": "plain loop computing the checksums",
    "B3": "the whole batch",
    "B4": "`ProcessPoolExecutor(2).map`",
    "S1": "ideal 20 x 1 s / 4 workers = 5 s",
    "C1": "`python -c pass`, min of 20",
    "C2": "200 x `python -c pass`",
    "Q1": "`tsp -S 2` + 200 interpreter starts",
    "Q2": "`python -c pass`",
    "H1": "one `hashlib.sha256` pass",
    "H2": "`np.fromfile` + one SHA-256 pass",
    "W1": "the same files (temp + rename) and rows (one transaction), bare",
    "D1": "`client.submit(pure=False)` + `gather`",
    "D2": "`client.scatter` + `submit` + `result()` (Dask's default route)",
    "D2D": "as D2, scatter and gather `direct=True`",
}


class ReportError(Exception):
    """Bad input to the report (a missing or malformed file); the message names it."""


# ---- reading ---------------------------------------------------------------------------------

def load_runs(paths) -> tuple[dict, dict]:
    """``(machine_info, {benchmark name: record})`` from pytest-benchmark JSON files; a later
    file's record of the same name replaces the earlier one."""
    machine, records = {}, {}
    for path in paths:
        try:
            data = json.loads(pathlib.Path(path).read_text())
            benchmarks = data["benchmarks"]
        except OSError as exc:
            raise ReportError(f"cannot read benchmark JSON {path}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ReportError(f"{path} is not pytest-benchmark JSON (write it with "
                              f"`pytest bench --benchmark-json={path}`): {exc}") from exc
        machine = data.get("machine_info") or machine
        for record in benchmarks:
            records[record["name"]] = record
    return machine, records


def load_outcomes(paths) -> dict:
    """``{test name: (outcome, message)}`` for skipped and expected-failure tests, from JUnit
    XML (``xfail`` or ``skipped``)."""
    outcomes = {}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise ReportError(f"cannot read JUnit XML {path}: {exc}") from exc
        for case in root.iter("testcase"):
            skipped = case.find("skipped")
            if skipped is None:
                continue
            kind = "xfail" if skipped.get("type") == "pytest.xfail" else "skipped"
            message = skipped.get("message", "")
            message = re.sub(r"^(Skipped: |expected test failure: |xfail: )", "", message)
            outcomes[case.get("name")] = (kind, message)
    return outcomes


def row_id(name: str) -> str:
    """``test_t1f_first_use_after_trim`` -> ``T1F``; ``test_p2_...[loky]`` -> ``P2 [loky]``."""
    if name == "test_t1_breakdown_400mb":
        return "T1 stages"  # not a gate: T1 timed stage by stage
    base, _, param = name.partition("[")
    match = re.match(r"test_([a-z]\d+[a-z]?)_", base)
    ident = match.group(1).upper() if match else base.removeprefix("test_").replace("_", " ")
    return f"{ident} [{param.rstrip(']')}]" if param else ident


def describe(name: str) -> str:
    base = name.partition("[")[0]
    words = re.sub(r"^test_([a-z]\d+[a-z]?_)?", "", base).replace("_", " ")
    return words


def machine_facts(machine: dict) -> list[tuple[str, str]]:
    own = machine.get("seamless_bench", {})
    cpu = machine.get("cpu", {})
    memory = own.get("memory_bytes")
    return [
        ("CPU", f"{own.get('cpu_model') or cpu.get('brand_raw', 'unknown')}"
                f"{' (SHA-NI)' if own.get('sha_ni') else ''}"),
        ("Cores", str(own.get("cores") or cpu.get("count", "unknown"))),
        ("Memory", f"{memory / 2 ** 30:.1f} GiB" if isinstance(memory, int) else "unknown"),
        ("Python", own.get("python") or machine.get("python_version", "unknown")),
        ("numpy", own.get("numpy", "unknown")),
        ("System", own.get("system") or machine.get("system", "unknown")),
        ("Load average (1, 5, 15 min) as the run ended",
         ", ".join(f"{load:.1f}" for load in own["load_average_at_end"])
         if "load_average_at_end" in own else "unknown"),
    ]


def ratio_rows(records: dict, outcomes: dict) -> list[dict]:
    rows = []
    for name, record in records.items():
        info = record["extra_info"]
        if "ratio" not in info or record.get("group") == "peers-arrays":
            continue  # the peer sweep has its own table, as multiples of the floor
        ident = row_id(name)
        bound, ratio = info["bound_now"], info["ratio"]
        if not info.get("timed", True):
            verdict = "not timed"
        elif math.isinf(bound):
            verdict = "report"
        elif ratio <= bound:
            verdict = "within bound"
        elif outcomes.get(name, ("",))[0] == "xfail":
            verdict = "over bound (known, marked xfail)"
        else:
            verdict = "**over bound**"
        rows.append({"id": ident, "what": describe(name), "subject_s": info["subject_s"],
                     "reference_s": info["reference_s"], "ratio": ratio, "bound": bound,
                     "goal": info["goal"], "verdict": verdict,
                     "reference": REFERENCES.get(ident.split(" ")[0], "")})
    return sorted(rows, key=lambda r: _id_order(r["id"]))


def _id_order(ident: str):
    match = re.match(r"([A-Z])(\d+)(\w*)", ident)
    return (0, match.group(1), int(match.group(2)), ident) if match else (1, "", 0, ident)


def transport_sweep(records: dict) -> tuple[dict, dict]:
    """``({label: (sizes_mb, seconds, peak_extra_bytes, peak_size_mb, x floor)}, floors)``, floors
    being ``{"sizes_mb", "copy_seconds", "hash_seconds"}`` or empty."""
    curves, floors = {}, {}
    for name, record in records.items():
        info = record["extra_info"]
        if name == "test_floors" and "copy_seconds" in info:
            floors = info
        elif name == "test_seamless" or name.startswith("test_peer["):
            label = "seamless" if name == "test_seamless" else name[len("test_peer["):-1]
            curves[label] = (info["sizes_mb"], info["seconds"], info.get("peak_extra_bytes"),
                             info.get("peak_size_mb"), info.get("ratio", math.inf))
    return curves, floors


def task_rates(records: dict) -> list[tuple[str, float]]:
    """``[(label, tasks per second)]``: seamless (the median of its runs) and each peer, on
    tiny tasks submitted all at once; then ``parallel()`` against ``Pool.imap``."""
    peer_labels = {"test_p1_tiny_tasks": "multiprocessing.Pool apply_async"}
    ours, rates = [], []
    for name, record in records.items():
        info = record["extra_info"]
        if "per_task_us" not in info or "peer_per_task_us" not in info:
            continue
        label = peer_labels.get(name)
        if label is None:
            match = re.search(r"\[(.*)\]$", name)
            label = match.group(1) if match else name
        ours.append(info["per_task_us"])
        rates.append((label, 1e6 / info["peer_per_task_us"]))
    if ours:
        rates.insert(0, ("seamless .start() + .run()", 1e6 / sorted(ours)[len(ours) // 2]))
    b1 = next((r["extra_info"] for n, r in records.items() if n.startswith("test_b1_")), None)
    if b1 and "per_item_us" in b1:
        rates.append(("seamless parallel()", 1e6 / b1["per_item_us"]))
        rates.append(("Pool.imap(chunksize=1)", 1e6 / b1["peer_per_item_us"]))
    return rates


def startup_latencies(records: dict) -> tuple[list, list]:
    """``([(command, ms)], [(queue, ms per job)])`` from C1, the miss row, Q2 and Q1."""
    info = {name: record["extra_info"] for name, record in records.items()}
    single, queued = [], []
    c1 = info.get("test_c1_cache_hit_latency")
    if c1:
        single += [("python -c pass", c1["reference_s"] * 1e3),
                   ("seamless-run (cache hit)", c1["subject_s"] * 1e3)]
    miss = info.get("test_miss_latency")
    if miss:
        single.append(("seamless-run --no-cache true", miss["subject_s"] * 1e3))
    q2 = info.get("test_q2_one_qsubmit_vs_bare_interpreter")
    if q2:
        single.append(("seamless-run --qsubmit", q2["subject_s"] * 1e3))
    q1 = info.get("test_q1_queued_jobs_vs_task_spooler")
    if q1 and "jobs" in q1:
        jobs = q1["jobs"]
        queued.append(("seamless-queue --workers 2", q1["subject_s"] / jobs * 1e3))
        queued.append(("tsp -S 2", q1["tsp_s"] / jobs * 1e3))
        if "gnu_parallel_s" in q1:
            queued.append(("GNU parallel -j2", q1["gnu_parallel_s"] / jobs * 1e3))
    return single, queued


# ---- plots -----------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportError("the report draws its plots with matplotlib, which is not installed: "
                          "pip install .[bench]") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_transport(curves: dict, floors: dict, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 5.2), dpi=DPI)
    for label, (sizes, seconds, *_memory_and_ratio) in curves.items():
        style = {"linewidth": 3, "color": "black", "zorder": 5} if label == "seamless" else {}
        ax.plot(sizes, seconds, marker="o", label=label, **style)
    if floors:
        sizes = floors["sizes_mb"]
        both = [h + c for h, c in zip(floors["hash_seconds"], floors["copy_seconds"])]
        ax.plot(sizes, both, "k--", marker="x", linewidth=1.5, label="floor: SHA-256 + copy")
        ax.plot(sizes, floors["hash_seconds"], color="grey", linestyle=":", linewidth=2,
                marker="x", label="floor: one SHA-256 pass")
        ax.plot(sizes, floors["copy_seconds"], color="grey", linestyle="-.", linewidth=1.5,
                marker="x", label="floor: one np.copyto")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({size for curve in curves.values() for size in curve[0]})
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.minorticks_off()
    ax.set_xlabel("array size (MB, float64), log")
    ax.set_ylabel("round trip time (s, min), log")
    ax.set_title("Array round trip: in, a * 2 in a worker, out (2 workers)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bars(rows: list, xlabel: str, title: str, ax, highlight: str = "seamless") -> None:
    labels = [label for label, _ in rows]
    values = [value for _, value in rows]
    colors = ["black" if label.startswith(highlight) else "tab:blue" for label in labels]
    bars = ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.bar_label(bars, labels=[_short(v) for v in values], padding=3, fontsize=8)
    ax.margins(x=0.25)


def _short(value: float) -> str:
    if value >= 1e4:
        return f"{value / 1e3:,.0f}k"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def plot_tasks(rates: list, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.45 * len(rates) + 1.4), dpi=DPI)
    plot_bars(rates, "tasks per second (higher is better), log scale",
              "Tiny tasks (x + 1), 2 workers, all submitted then collected", ax)
    ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_startup(single: list, queued: list, path: pathlib.Path) -> None:
    plt = _pyplot()
    panels = [(rows, xlabel, title) for rows, xlabel, title in [
        (single, "ms per command (min)", "One command, start to exit"),
        (queued, "ms per job", "200 queued shell jobs, 2 at a time")] if rows]
    fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH_IN, 1.6 + 0.45 * sum(
        len(p[0]) for p in panels) + 0.6 * len(panels)), dpi=DPI, squeeze=False)
    for ax, (rows, xlabel, title) in zip(axes[:, 0], panels):
        plot_bars(rows, xlabel, title, ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- Markdown --------------------------------------------------------------------------------

def _num(value, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "-"
    return f"{value:.{digits}f}"


def _seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def render(machine: dict, records: dict, outcomes: dict, img_dir: pathlib.Path,
           out: pathlib.Path, commit: str = "", note: str = "") -> str:
    """Write the plots and return the Markdown text (links relative to ``out``)."""
    img_dir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(img_dir, out.parent)
    lines = ["# Benchmarks", "",
             "Every figure below was measured on the machine described here, in one run, by",
             "`python -m bench.report` (after `pip install .[bench]`). Each ratio is seamless",
             "over a reference measured in the same run; *bound* is what CI enforces, *goal*",
             "what the design aims for. Timings on a shared 2-core machine are noisy: read",
             "ratios rather than absolute times, and see the load average below.", ""]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"Generated {stamp}" + (f" from commit `{commit[:12]}`." if commit else "."), ""]
    lines += [f"Note: {note}", ""] if note else []
    lines += [
              "| Machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_facts(machine)]
    lines += [""] + _ratio_section(ratio_rows(records, outcomes))
    lines += _transport_section(records, outcomes, img_dir, rel)
    lines += _breakdown_section(records)
    lines += _tasks_section(records, outcomes, img_dir, rel)
    lines += _startup_section(records, outcomes, img_dir, rel)
    return "\n".join(lines) + "\n"


def _ratio_section(rows: list) -> list:
    lines = ["## Every ratio", "",
             "| Row | What | seamless | Reference | Ratio | Bound | Goal | Verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reference = f"{_seconds(r['reference_s'])}" + (f": {r['reference']}"
                                                       if r["reference"] else "")
        if r["id"] == "T5":
            subject = f"{r['subject_s'] / MB:.0f} MB"
            reference = f"{r['reference_s'] / MB:.0f} MB: the array's size"
        else:
            subject = _seconds(r["subject_s"])
        lines.append(f"| {r['id']} | {r['what']} | {subject} | {reference} | "
                     f"{_num(r['ratio'], 3)} | {_num(r['bound'])} | {_num(r['goal'])} | "
                     f"{r['verdict']} |")
    return lines + [""]


def _skips(outcomes: dict, prefix: str) -> list:
    return [f"- `{name}`: not measured: {message}" for name, (kind, message)
            in outcomes.items() if kind == "skipped" and name.startswith(prefix)]


def _transport_section(records, outcomes, img_dir, rel) -> list:
    curves, floors = transport_sweep(records)
    if not curves:
        return []
    plot_transport(curves, floors, img_dir / "transport.png")
    sizes = max((c[0] for c in curves.values()), key=len)
    lines = ["## Array round trip against the peers", "",
             "A float64 array goes to a worker, `a * 2` comes back; 2 workers for everyone;",
             "the minimum over rounds, each peer in its most natural call (bench/peers.py).",
             "The floors are one `np.copyto` into touched memory and one SHA-256 pass over the",
             "same bytes: a content-addressed library must hash every new input once.", "",
             f"![Round-trip time vs array size]({rel}/transport.png)", "",
             "| Subject | " + " | ".join(f"{s} MB" for s in sizes) +
             f" | x seamless at {sizes[-1]} MB | x (SHA-256 + copy) at {sizes[-1]} MB | "
             "peak extra memory |",
             "|---|" + "---|" * (len(sizes) + 3)]
    ours = curves.get("seamless")
    for label, (s_mb, seconds, peak, peak_mb, over_floor) in curves.items():
        cells = [_seconds(seconds[s_mb.index(s)]) if s in s_mb else "-" for s in sizes]
        versus = (f"{seconds[-1] / ours[1][-1]:.2f}" if ours and s_mb[-1] == ours[0][-1]
                  else "-")
        memory = f"{peak / (peak_mb * MB):.2f}x of {peak_mb} MB" if peak is not None else "-"
        if floors and s_mb[-1] in floors["sizes_mb"]:
            at = floors["sizes_mb"].index(s_mb[-1])
            over_floor = seconds[-1] / (floors["hash_seconds"][at] + floors["copy_seconds"][at])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {versus} | "
                     f"{_num(over_floor)} | {memory} |")
    if floors:
        for key, label in (("copy_seconds", "floor: np.copyto"),
                           ("hash_seconds", "floor: SHA-256")):
            cells = [_seconds(floors[key][floors["sizes_mb"].index(s)])
                     if s in floors["sizes_mb"] else "-" for s in sizes]
            lines.append(f"| {label} | " + " | ".join(cells) + " | - | - | - |")
    t5 = records.get("test_t5_peak_memory_800mb", {}).get("extra_info")
    lines += ["", "Peak extra memory: used system memory (MemTotal - MemAvailable) above its "
              "level before one round trip at the largest size, sampled every 5 ms. seamless "
              "reuses the segments of the earlier rounds, so its steady state adds little.", ""]
    if t5 and "peak_extra_bytes" in t5:
        lines += [f"Peak extra memory of seamless at 800 MB (T5): "
                  f"{t5['peak_extra_bytes'] / t5['array_bytes']:.2f}x the array "
                  f"(bound 2.2x, goal 2.05x).", ""]
    skipped = _skips(outcomes, "test_peer[")
    return lines + (skipped + [""] if skipped else [])


def _breakdown_section(records) -> list:
    info = records.get("test_t1_breakdown_400mb", {}).get("extra_info")
    if not info or "stages_ms" not in info:
        return []
    f, s = info["floors_ms"], info["stages_ms"]
    reference = f["hash"] + f["copy"] + f["compute_in_process"]
    rows = [
        ("hash + copy in (building the handle)", s["build_hash_and_copy_in"],
         f"one SHA-256 pass {f['hash']:.0f} ms + one copy {f['copy']:.0f} ms "
         f"(fused copy-and-hash alone: {f['fused_copy_and_hash']:.0f} ms)",
         s["build_hash_and_copy_in"] - f["hash"] - f["copy"]),
        ("compute in the worker (`a * 2`)", s["compute_in_worker"],
         f"`a * 2` in-process {f['compute_in_process']:.0f} ms",
         s["compute_in_worker"] - f["compute_in_process"]),
        ("dispatch, transfer, map in the worker, map the result back",
         s["dispatch_transfer_map_back"], "0 (no floor: descriptors only)",
         s["dispatch_transfer_map_back"]),
        ("**total** (T1's subject)", s["total"],
         f"T1's reference {reference:.0f} ms", s["total"] - reference),
        ("result hash, after `.run()` returned", s["result_hash_after_run"],
         "off the caller's path", math.nan),
    ]
    lines = ["## Where T1's time goes (400 MB)", "",
             "Each stage is the minimum over 5 instrumented round trips on the same array,",
             "beside its own floor measured in the same run (bench/bench_t1_breakdown.py).", "",
             "| Stage | ms | Floor | Above the floor (ms) |", "|---|---|---|---|"]
    lines += [f"| {stage} | {ms:.0f} | {floor} | "
              f"{'-' if math.isnan(extra) else f'{extra:+.0f}'} |"
              for stage, ms, floor, extra in rows]
    lines += ["", f"T1 here: {info['ratio']:.2f}x its reference (goal 1.1x). Totals of the "
                  f"rounds: {', '.join(f'{t:.0f}' for t in info['totals_ms'])} ms.", ""]
    return lines


def _tasks_section(records, outcomes, img_dir, rel) -> list:
    rates = task_rates(records)
    if not rates:
        return []
    plot_tasks(rates, img_dir / "tasks.png")
    lines = ["## Tiny tasks", "",
             "`x + 1` as one task each, all submitted before any result is collected, 2",
             "workers (seamless: `.start()` on every handle, then `.run()`). seamless is the",
             "median of its runs beside each peer; `parallel()` streams a batch of 2,000 with",
             "8 in flight, against `Pool.imap` with `chunksize=1`.", "",
             f"![Tiny-task throughput]({rel}/tasks.png)", "",
             "| Subject | tasks/s | µs per task |", "|---|---|---|"]
    lines += [f"| {label} | {rate:,.0f} | {1e6 / rate:.1f} |" for label, rate in rates]
    skipped = _skips(outcomes, "test_tiny_tasks[") + _skips(outcomes, "test_p2_")
    return lines + [""] + (skipped + [""] if skipped else [])


def _startup_section(records, outcomes, img_dir, rel) -> list:
    single, queued = startup_latencies(records)
    if not single and not queued:
        return []
    plot_startup(single, queued, img_dir / "startup.png")
    lines = ["## Command line: start-up and queued jobs", "",
             "Whole processes, start to exit, with the interpreter the console scripts use.",
             "", f"![Start-up latency per command]({rel}/startup.png)", "",
             "| Command | ms |", "|---|---|"]
    lines += [f"| `{label}` | {ms:.1f} |" for label, ms in single]
    if queued:
        lines += ["", "| 200 queued jobs, 2 at a time | ms per job |", "|---|---|"]
        lines += [f"| `{label}` | {ms:.2f} |" for label, ms in queued]
    skipped = _skips(outcomes, "test_q1_")
    return lines + [""] + (skipped + [""] if skipped else [])


# ---- command ---------------------------------------------------------------------------------

_PYTEST_WITHOUT_CWD = "import sys; del sys.path[0]; import pytest; sys.exit(pytest.console_main())"


def run_suite(workdir: pathlib.Path, extra_args: list) -> tuple[int, pathlib.Path, pathlib.Path]:
    """Run ``pytest bench --report-sizes`` in a child process; its exit code and outputs."""
    json_path, junit_path = workdir / "run.json", workdir / "run.xml"
    # Not ``-m pytest``: that puts the working directory (the checkout) first on sys.path, and
    # the source tree's seamless, without its compiled core, would shadow the installed one.
    argv = [sys.executable, "-c", _PYTEST_WITHOUT_CWD, str(REPO / "bench"), "--report-sizes",
            "-v", "-rfEsx",
            "-p", "no:cacheprovider", f"--benchmark-json={json_path}",
            f"--junitxml={junit_path}", *extra_args]
    print("running:", " ".join(argv), flush=True)
    rc = subprocess.run(argv, cwd=REPO, timeout=3 * 3600).returncode
    return rc, json_path, junit_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--benchmark-json", nargs="+", metavar="FILE",
                        help="read these pytest-benchmark JSON files instead of running")
    parser.add_argument("--junitxml", nargs="+", default=[], metavar="FILE",
                        help="JUnit XML of the same runs: reasons of the skipped rows")
    parser.add_argument("--save-json", metavar="FILE",
                        help="when running the suite, also keep its benchmark JSON here")
    parser.add_argument("--note", default="",
                        help="a sentence printed under the header (how this run was made)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    parser.add_argument("pytest_args", nargs="*",
                        help="passed to pytest when running the suite (after --), e.g. -k t1")
    args = parser.parse_args(argv)
    out, img_dir = pathlib.Path(args.out), pathlib.Path(args.img_dir)
    rc = 0
    try:
        if args.benchmark_json:
            text = _render_files(args.benchmark_json, args.junitxml, img_dir, out, args.note)
        else:
            with tempfile.TemporaryDirectory(prefix="seamless-bench-report-") as tmp:
                rc, json_path, junit_path = run_suite(pathlib.Path(tmp), args.pytest_args)
                if not json_path.exists():
                    raise ReportError(f"the benchmark run wrote no JSON (pytest exit {rc})")
                if args.save_json:
                    shutil.copyfile(json_path, args.save_json)
                text = _render_files([json_path], [junit_path] if junit_path.exists() else [],
                                     img_dir, out, args.note)
    except ReportError as exc:
        print(f"bench.report: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} and the plots in {img_dir}")
    if rc:
        print(f"note: the benchmark run exited {rc} (a gated ratio over its bound?); the "
              f"report shows every row", file=sys.stderr)
    return rc


def _render_files(json_paths, junit_paths, img_dir, out, note) -> str:
    machine, records = load_runs(json_paths)
    commit = json.loads(pathlib.Path(json_paths[-1]).read_text()).get(
        "commit_info", {}).get("id") or ""
    return render(machine, records, load_outcomes(junit_paths), img_dir, out, commit, note)


if __name__ == "__main__":
    sys.exit(main())
