"""Time and peak memory of `memsweep report` and of every docs/queries.md example on a landed output.

    python benchmarks/synthetic_output.py /tmp/synthetic-full          # 360 x 360 x 1000, see there
    python benchmarks/report_scale.py /tmp/synthetic-full              # every measurement below
    python benchmarks/report_scale.py /tmp/synthetic-full --only report --max-rss-gb 8

Each measurement runs in a child process of its own (this file run with --child), so one peak does
not hide another: the child reports its wall time and its peak RSS (Linux VmHWM, which includes
the interpreter and polars/matplotlib, about 0.2 GB). A watchdog thread here polls the child's RSS
every 50 ms and kills it above --max-rss-gb, so a measurement that would blow up the machine shows
up as "killed" instead.

Measurements:
- `sql N` / `python N`: the N-th ```sql / ```python block of the queries page (default
  docs/queries.md), SQL through `sweep.analysis.query.run_query` as `memsweep query` runs it, Python
  blocks exec'd with `output` set (their printing goes to /dev/null);
- `report`: `sweep.report.page.write_report(output, out_dir=<temp>)`, whole;
- `report/<section>`: the same run, with every `_<name>_section(s)` function of
  sweep/report/memorization_sections.py and sweep/report/exposure_sections.py, the examples
  (sweep/report/example_sections.py), `analyses.first_memorized` and `exposure_analyses.exposure_analyses` (the one pass
  behind the exposure figures) timed, and its own peak (VmHWM reset through /proc/self/clear_refs before each): a
  section's peak includes what the report holds at the time. `report/setup` is everything before the
  first section (opening the tables, reading the cells);
- `analysis <name>`: each exposure analysis of sweep/exposures/analyses.py alone (its own pass over every
  checkpoint), and `ExposureHistory.read`, when the output holds exposure counts;
- `show`: `memsweep show OUTPUT --sort exposures` (the history, the last checkpoint's partition, decoding).

To measure another version of the code (e.g. the one before a change), point PYTHONPATH at its
checkout and --queries at its docs/queries.md: the children import `sweep` from there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from peak_memory import peak_rss_bytes, reset_peak_rss  # benchmarks/ (this script's folder)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measurement:
    """One row of the printed table."""

    name: str
    seconds: float | None
    peak_rss_bytes: int | None
    status: str  # "ok", "killed above N GB", "timeout", or the child's error (one line)


# ---------------------------------------------------------------- child side


def _child(task: dict) -> list[dict]:
    """Run one task in this process; returns result rows (name, seconds, peak_rss_bytes)."""
    output = task["output"]
    if task["kind"] == "sql":
        from sweep.analysis.query import run_query

        started = time.perf_counter()
        result = run_query(Path(output), task["code"])
        return [{"name": task["name"], "seconds": time.perf_counter() - started,
                 "peak_rss_bytes": peak_rss_bytes(), "rows": result.height}]
    if task["kind"] == "python":
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(task["code"], "queries.md", "exec"), {"output": output})
        return [{"name": task["name"], "seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}]
    if task["kind"] == "report":
        return _child_report(task)
    if task["kind"] == "analysis":
        return _child_analysis(task)
    if task["kind"] == "show":
        from sweep.cli import main as memsweep

        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            memsweep(["show", output, "--sort", "exposures", "--top", "10", "--color", "never"])
        return [{"name": task["name"], "seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}]
    raise ValueError(f"unknown task kind {task['kind']!r}")


ANALYSES = ("history", "memorization_by_exposure", "seen_per_sequence", "forgetting_by_recency",
            "memorization_profile", "memorization_kinds", "exposure_analyses")


def _child_analysis(task: dict) -> list[dict]:
    """One exposure analysis on its own (after reading the history, which "history" times alone)."""
    from sweep.exposures import analyses as exposure_analyses
    from sweep.exposures.history import ExposureHistory
    from sweep.landed.reader import open_output

    landed = open_output(task["output"])
    started = time.perf_counter()
    history = ExposureHistory.read(landed)
    if task["analysis"] != "history":
        reset_peak_rss()
        started = time.perf_counter()
        function = getattr(exposure_analyses, task["analysis"])
        extra = (landed.probes(), landed.prompt_len) if task["analysis"] in ("memorization_kinds",
                                                                            "exposure_analyses") else ()
        function(landed.sequences(), history, *extra)
    return [{"name": task["name"], "seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}]


def _child_report(task: dict) -> list[dict]:
    from sweep.report import page as report

    rows: list[dict] = []
    started = time.perf_counter()
    first_section_at: list[float] = []
    calls: dict[str, int] = {}

    def timed(name: str, function):
        def wrapper(*args, **kwargs):
            if not first_section_at:
                first_section_at.append(time.perf_counter())
                rows.append({"name": "report/setup", "seconds": first_section_at[0] - started,
                             "peak_rss_bytes": peak_rss_bytes()})
            calls[name] = calls.get(name, 0) + 1
            label = name if calls[name] == 1 else f"{name}#{calls[name]}"
            reset_peak_rss()
            section_started = time.perf_counter()
            result = function(*args, **kwargs)
            rows.append({"name": f"report/{label}", "seconds": time.perf_counter() - section_started,
                         "peak_rss_bytes": peak_rss_bytes()})
            return result

        return wrapper

    if task.get("sections"):
        from sweep.report import example_sections as example_report
        from sweep.report import exposure_sections as exposure_report
        from sweep.report import memorization_sections as memorization_report

        for module in (memorization_report, exposure_report):
            for attribute in dir(module):
                match = re.fullmatch(r"_(\w+)_sections?", attribute)
                if match and callable(getattr(module, attribute)):
                    setattr(module, attribute, timed(match.group(1), getattr(module, attribute)))
        # the examples are one group of sections, called by the page
        report.example_sections = timed("example", example_report.example_sections)
        # the per-sequence folds behind the first-memorized figure (and the examples) and behind the exposure
        # figures run outside any section
        report.analyses.first_memorized = timed("first_memorized (analysis)", report.analyses.first_memorized)
        exposure_report.ea.exposure_analyses = timed("exposure_analyses (analysis)",
                                                     exposure_report.ea.exposure_analyses)
    with tempfile.TemporaryDirectory(prefix="report-scale-") as out_dir:
        report.write_report(Path(task["output"]), out_dir=Path(out_dir))
    whole = {"name": "report", "seconds": time.perf_counter() - started}
    if task.get("sections"):
        # VmHWM was reset per section, so the whole run's peak is the largest of them.
        whole["peak_rss_bytes"] = max(row["peak_rss_bytes"] for row in rows)
    else:
        whole["peak_rss_bytes"] = peak_rss_bytes()
    return [whole, *rows]


# ---------------------------------------------------------------- parent side


def doc_blocks(queries: Path, language: str) -> list[str]:
    """The ```<language> code blocks of a markdown file, in order."""
    return re.findall(rf"```{language}\n(.*?)```", queries.read_text(), flags=re.DOTALL)


def first_line(code: str) -> str:
    """A short name for a code block: its leading comment if it has one, else its first statement."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    if lines and lines[0].startswith(("--", "#")):
        return lines[0].lstrip("-# ")[:60]
    for line in lines:
        if not line.startswith(("import ", "from ")):
            return line[:60]
    return ""


def run_child(task: dict, max_rss_bytes: int, timeout_s: float) -> list[Measurement]:
    """Run `task` in a child process under the RSS watchdog; one Measurement per row it reports."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak_seen, killed = 0, []

    def watchdog() -> None:
        nonlocal peak_seen
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss
            except psutil.Error:
                return
            peak_seen = max(peak_seen, rss)
            if rss > max_rss_bytes:
                killed.append(rss)
                process.kill()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watchdog, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        elapsed = time.perf_counter() - started
        return [Measurement(task["name"], elapsed, peak_seen or None, f"timeout ({timeout_s:.0f} s)")]
    thread.join()
    elapsed = time.perf_counter() - started
    if killed:
        return [Measurement(task["name"], elapsed, killed[0], f"killed above {max_rss_bytes / 1e9:g} GB")]
    if process.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit status {process.returncode}"
        return [Measurement(task["name"], elapsed, peak_seen or None, f"error: {error}")]
    rows = json.loads(stdout.strip().splitlines()[-1])
    return [Measurement(row["name"], row["seconds"], row["peak_rss_bytes"], "ok") for row in rows]


def tasks_for(output: Path, queries: Path, only: str) -> list[dict]:
    tasks: list[dict] = []
    scanned = any((output / "exposures").glob("seen=*/*.parquet"))
    if only in ("all", "queries"):
        for language in ("sql", "python"):
            for number, code in enumerate(doc_blocks(queries, language), start=1):
                tasks.append({"kind": language, "name": f"{language} {number}: {first_line(code)}",
                              "code": code, "output": str(output)})
    if only in ("all", "report"):
        tasks.append({"kind": "report", "name": "report", "output": str(output), "sections": True})
    if only in ("all", "exposures") and scanned:
        tasks.extend({"kind": "analysis", "name": f"analysis {name}", "analysis": name, "output": str(output)}
                     for name in ANALYSES)
        tasks.append({"kind": "show", "name": "show --sort exposures", "output": str(output)})
    return tasks


def format_table(measurements: list[Measurement]) -> str:
    lines = ["| measurement | seconds | peak RSS (GB) | status |", "| --- | ---: | ---: | --- |"]
    for m in measurements:
        seconds = f"{m.seconds:.2f}" if m.seconds is not None else "-"
        peak = f"{m.peak_rss_bytes / 1e9:.2f}" if m.peak_rss_bytes is not None else "-"
        lines.append(f"| {m.name.replace('|', '/')} | {seconds} | {peak} | {m.status} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a landed memsweep output (e.g. from synthetic_output.py)")
    parser.add_argument("--queries", type=Path, default=REPO / "docs" / "queries.md", help="the page of examples")
    parser.add_argument("--only", choices=("all", "queries", "report", "exposures"), default="all")
    parser.add_argument("--match", default=None, help="run only measurements whose name contains this")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a child above this RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    args = parser.parse_args()
    if not (args.output / "sequences").is_dir():
        parser.error(f"{args.output}: no sequences/ folder (not a landed memsweep output?)")
    tasks = tasks_for(args.output, args.queries, args.only)
    if args.match:
        tasks = [task for task in tasks if args.match in task["name"]]
    print(f"{args.output}, python {sys.version.split()[0]}, sweep from "
          f"{os.environ.get('PYTHONPATH', '(installed)')}, {len(tasks)} child processes", flush=True)
    measurements: list[Measurement] = []
    for task in tasks:
        rows = run_child(task, int(args.max_rss_gb * 1e9), args.timeout)
        for row in rows:
            print(f"  {row.name}: {row.seconds or 0:.2f} s, "
                  f"{(row.peak_rss_bytes or 0) / 1e9:.2f} GB, {row.status}", flush=True)
        measurements.extend(rows)
    print()
    print(format_table(measurements))


if __name__ == "__main__":
    main()
