"""`memsweep` (also `python -m sweep`): a thin command line over spec -> plan -> driver -> store -> query/report.

    memsweep run SPEC.yaml [--output DIR] [--set KEY=VALUE ...] [--address ADDR] [--report]
    memsweep plan SPEC.yaml [--offline] [--gpus 64] [--gpus-per-node 8] [--cpus-per-node 96] [--network-gb-s 2]
    memsweep query OUTPUT [--with OTHER_OUTPUT ...] "SQL" [--format table|csv|json|parquet] [--out FILE]
    memsweep query OUTPUT [--with OTHER_OUTPUT ...] --tables
    memsweep verify OUTPUT [--repair]
    memsweep show OUTPUT [--ckpt C] [--chunk J] [--top N] [--source S] [--full-match] [--min-prefix K]
                         [--min-exposures N] [--max-exposures N] [--sort memorized|exposures]
    memsweep report OUTPUT [--out DIR] [--chunks 0,3,7] [--labels LABELS [--split S]] [--smaller OTHER_OUTPUT ...]
    memsweep compare OUTPUT LABELS [--split S] [--revision R] [--checkpoint N] [--tie-margin M] [--format text|json]
    memsweep serve OUTPUT [--host 127.0.0.1] [--port 8765]
    memsweep demo [--output DIR] [--smaller]

Every flag is documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from actors.protocol import one_line
from sweep.errors import MemsweepError
from sweep.landed.catalog import SQL_TABLES

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("memsweep").setLevel(logging.INFO)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # here, not at exit: a reader gone by now is the BrokenPipeError below
        return status
    except BrokenPipeError:
        # The reader stopped early (`memsweep query ... | head -3`): that is not an error, and there is nothing left to
        # say. Point stdout at /dev/null so that Python's own flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: landed cells are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except MemsweepError as error:  # memsweep's own errors are one line; anything else is a bug: a traceback
        print(f"memsweep: error: {one_line(error, limit=None)}", file=sys.stderr)
        return error.exit_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memsweep", description="Memorization sweeps over checkpoints x data chunks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (Ray, probe sets, loads)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)

    run = commands.add_parser("run", help="score every cell of a spec not yet in its output (resumes)")
    _spec_arguments(run)
    _cluster_arguments(run)
    _network_arguments(run)
    run.add_argument("--report", action="store_true", help="write the report when the sweep ends")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    run.set_defaults(handler=_run)

    plan = commands.add_parser("plan", help="print the plan and what it costs (downloads, disk, GPU-hours); runs nothing")
    _spec_arguments(plan)
    plan.add_argument("--offline", action="store_true",
                      help="do not ask the Hub for file sizes (use the release's published ones)")
    plan.add_argument("--gpus", type=_positive(int), default=64, help="GPUs of the cluster to plan for (default 64)")
    plan.add_argument("--gpus-per-node", type=_positive(int), default=8, help="GPUs per node (default 8)")
    plan.add_argument("--cpus-per-node", type=_positive(float), default=96, help="CPUs per node (default 96)")
    plan.add_argument("--address", help="plan for this Ray cluster's nodes instead (GPUs and CPUs as Ray reports them)")
    _network_arguments(plan)
    plan.set_defaults(handler=_plan)

    verify = commands.add_parser("verify", help="check every landed file against its ledger record")
    verify.add_argument("output", type=Path, help="a sweep's output directory")
    verify.add_argument("--repair", action="store_true",
                        help="remove damaged, missing and foreign files so the next run recomputes their cells")
    verify.set_defaults(handler=_verify)

    query = commands.add_parser("query", help=f"Polars SQL over an output's tables ({', '.join(SQL_TABLES)}); "
                                              "`--tables` lists those it has, with their columns")
    query.add_argument("output", type=Path, help="a sweep's output directory")
    query.add_argument("sql", nargs="?", help='e.g. "SELECT ckpt, AVG(score) FROM cells GROUP BY ckpt ORDER BY ckpt"')
    query.add_argument("--with", dest="others", action="append", type=Path, default=[], metavar="OTHER_OUTPUT",
                       help="also query this output of the same data and probe sets (repeatable): every table then "
                            "holds every output's rows, led by output, model and identity")
    query.add_argument("--tables", action="store_true",
                       help="list the tables this output has, what one row of each is, and their columns")
    query.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                       help="table (printed), csv, json (one array of row objects) or parquet; to --out FILE, "
                            "else to stdout (parquet only when stdout is not a terminal)")
    query.add_argument("--out", type=Path, help="file for csv/json/parquet (default: stdout)")
    query.add_argument("--max-rows", type=int, default=40, help="rows printed in table format")
    query.set_defaults(handler=_query)

    show = commands.add_parser("show", help="the most memorized sequences as text: prompt, truth, model")
    show.add_argument("output", type=Path, help="a sweep's output directory")
    show.add_argument("--ckpt", type=int, help="checkpoint (default: the last one landed)")
    show.add_argument("--chunk", type=int, help="only this chunk")
    show.add_argument("--top", type=int, default=10, help="how many sequences (default 10)")
    show.add_argument("--per-source", type=int, help="this many per data source instead of --top in all")
    show.add_argument("--source", help="only this data source (e.g. starcoderdata)")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--full-match", action="store_true", help="only k-extractable sequences (all l tokens right)")
    which.add_argument("--not-full-match", action="store_true", help="only sequences the model did not reproduce")
    show.add_argument("--min-prefix", type=int, help="only sequences whose exact prefix is at least this long")
    show.add_argument("--min-exposures", type=int, metavar="N",
                      help="only sequences seen at least N times by the checkpoint (exposure counts)")
    show.add_argument("--max-exposures", type=int, metavar="N", help="only sequences seen at most N times by it")
    show.add_argument("--sort", choices=["memorized", "exposures"], default="memorized",
                      help="most memorized first (default), or most exposed first")
    show.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="mark misses in red (auto: when printing to a terminal); plain text marks them ⟦ ⟧")
    show.add_argument("--format", choices=["text", "csv", "json", "parquet"], default="text",
                      help="text, or csv, json (one array of objects) or parquet: to --out FILE, else to stdout "
                           "(parquet only when stdout is not a terminal)")
    show.add_argument("--out", type=Path, help="file for csv/json/parquet (default: stdout)")
    show.set_defaults(handler=_show)

    report = commands.add_parser("report", help="figures + index.html from a landed output")
    report.add_argument("output", type=Path)
    report.add_argument("--out", type=Path, help="report folder (default OUTPUT/report)")
    report.add_argument("--chunks", help="chunks to plot over checkpoints, e.g. 0,3,7 (default: a spread)")
    report.add_argument("--examples", help="cells whose most memorized sequences are shown as text, CKPT:CHUNK,... "
                                           "(default: the oldest and newest chunk at the last checkpoint)")
    _labels_arguments(report, "--labels")
    report.add_argument("--smaller", action="append", type=Path, default=[], metavar="OTHER_OUTPUT",
                        help="an output of a smaller model on the same data and probe sets (repeatable, smallest "
                             "first): adds the predictability of each one's memorized set for the larger ones'")
    report.set_defaults(handler=_report)

    compare = commands.add_parser("compare", help="memsweep's memorized sets against published labels (a data check "
                                                  "first, then a 2 x 2 table, precision and recall per checkpoint)")
    compare.add_argument("output", type=Path, help="a sweep's output directory")
    _labels_arguments(compare, "labels")
    compare.add_argument("--checkpoint", type=int, help="only this checkpoint (default: every landed one)")
    compare.add_argument("--tie-margin", type=float, default=None,
                         help="a decision margin (top-1 minus top-2 logit at a deciding greedy position) under this "
                              "counts as a near-tie (default 1.0: 8 bf16 ulps of a top logit between 16 and 32)")
    compare.add_argument("--format", choices=["text", "json"], default="text",
                         help="text (a table), or json: one object with the counts, precision, recall and the data "
                              "mismatches, for scripts")
    compare.set_defaults(handler=_compare)

    serve = commands.add_parser("serve", help="a local, read-only web explorer of a landed output (heatmap, cells, "
                                              "sequences, JSON/CSV/Parquet)")
    serve.add_argument("output", type=Path, help="a sweep's output directory (may still be landing)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; anything else exposes the "
                            "data to the network, and says so)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="run configs/demo.yaml (build the miniature Amber, sweep, report)")
    demo.add_argument("--output", help="override the spec's output directory")
    demo.add_argument("--smaller", action="store_true",
                      help="also train a smaller model on the same stream (configs/demo-small.yaml), sweep it, and "
                           "report how well its memorized set predicts the demo model's")
    _cluster_arguments(demo)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=_demo)
    return parser


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes its positionals wherever they stand among the options: `memsweep query OUT --with
    OTHER "SQL"` (plain argparse gives an optional positional nothing at its first chance, then refuses "SQL")."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # argparse's intermixed parsing calls back here: the plain parse, twice
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec (YAML); see docs/spec.md")
    parser.add_argument("--output", help="override the spec's `output` (e.g. an absolute path under `ray job submit`)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any spec key, e.g. --set resources.batch_size=64 (value parsed as YAML)",
    )


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network-gb-s", type=_positive(float), default=2.0,
                        help="each node's network bandwidth from the Hub, GB/s, shared by its downloads and streams "
                             "(default 2)")
    parser.add_argument("--stream-mb-s", type=_positive(float), default=250.0,
                        help="one download or chunk stream on its own, MB/s (default 250)")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text})")
        return value
    return parse


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start Ray locally)")
    parser.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to offer")
    parser.add_argument("--num-gpus", type=int, help="local Ray only: GPUs to offer (logical; see README)")


def _load(args: argparse.Namespace):
    from sweep.spec import load_spec

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MemsweepError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise MemsweepError(f"--set {item}: the value is not YAML ({problem}); quote it, e.g. "
                                f"--set {key}='\"...\"'") from None
    if args.output:
        overrides["output"] = args.output
    return load_spec(args.spec, overrides)


def _run(args: argparse.Namespace) -> int:
    return _sweep(_load(args), args, report=args.report)


def _sweep(spec, args: argparse.Namespace, report: bool) -> int:
    from sweep.run.driver import run_sweep

    started = time.perf_counter()
    network = getattr(args, "network_gb_s", 2.0) * 1e9, getattr(args, "stream_mb_s", 250.0) * 1e6
    summary = run_sweep(spec, progress=not args.no_progress, address=args.address, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus, network_bytes_per_s=network[0], stream_bytes_per_s=network[1])
    print(summary.describe())
    if report:
        from sweep.report.page import write_report

        path = write_report(summary.output)
        print(f"report: {path}")
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 0 if summary.ok else 1


def _plan(args: argparse.Namespace) -> int:
    from sweep.run.bound import plan_bound
    from sweep.run.cost import estimate_cost
    from sweep.run.plan import make_plan
    from sweep.run.preflight import landed_for_plan, resolved_spec

    spec = resolved_spec(_load(args))
    landed = landed_for_plan(spec)  # `run` would refuse another sweep's output: say so here
    plan = make_plan(spec, landed.done_cells() if landed is not None else set())
    print(f"spec: {args.spec} ({spec.name}, identity {spec.identity_hash()})")
    print(f"output: {spec.output}")
    print(plan.describe())
    estimate = estimate_cost(spec, plan, landed, offline=args.offline)
    print(estimate.describe())
    if plan.work:
        print(plan_bound(spec, plan, estimate, _planned_cluster(args)).describe())
    return 0


def _planned_cluster(args: argparse.Namespace):
    """The cluster `memsweep plan` plans for: the flags' (documented in docs/cli.md), or a Ray cluster's nodes."""
    from sweep.run.bound import Cluster

    network, stream = args.network_gb_s * 1e9, args.stream_mb_s * 1e6
    if args.address:
        import ray

        from sweep.run.driver import cluster_from_ray, connect

        connect(args.address)
        try:
            return cluster_from_ray(network, stream)
        finally:
            ray.shutdown()
    if args.gpus % args.gpus_per_node:
        raise MemsweepError(f"--gpus {args.gpus}: not a multiple of --gpus-per-node {args.gpus_per_node}")
    return Cluster(nodes=args.gpus // args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                   cpus_per_node=args.cpus_per_node, network_bytes_per_s=network, stream_bytes_per_s=stream)


def _verify(args: argparse.Namespace) -> int:
    from sweep.landed.store import repair_output
    from sweep.landed.verify import verify_output

    report = repair_output(args.output) if args.repair else verify_output(args.output)
    print(report.describe())
    return 0 if report.ok or report.repaired else 1


def _query(args: argparse.Namespace) -> int:
    from sweep.analysis.query import format_table, format_table_columns, run_query, table_columns

    if args.tables == bool(args.sql):
        raise MemsweepError("memsweep query: give an SQL statement, or --tables to list the tables (not both)"
                            if args.tables else "memsweep query: give an SQL statement, e.g. \"SELECT * FROM cells\", "
                                                "or --tables to list the tables and their columns")
    _refuse_binary_to_terminal(args.format, args.out)
    frame = table_columns(args.output, args.others) if args.tables else run_query(args.output, args.sql, args.others)
    if args.format == "table":
        print(format_table_columns(frame) if args.tables else format_table(frame, args.max_rows))
        return 0
    _write_result(frame, args.format, args.out, "rows")
    return 0


def _refuse_binary_to_terminal(fmt: str, out: Path | None) -> None:
    """Parquet goes to stdout only when stdout is a pipe or a file: its bytes would garble a terminal."""
    if fmt == "parquet" and out is None and sys.stdout.isatty():
        raise MemsweepError("--format parquet is binary and stdout is a terminal: give --out FILE, or redirect "
                            "stdout (> result.parquet) or pipe it")


def _write_result(frame, fmt: str, out: Path | None, what: str) -> None:
    """`frame` as csv, json or parquet: to the file `out`, else to stdout."""
    from sweep.analysis.query import write_frame, write_frame_to_stream

    if out is not None:
        write_frame(frame, out, fmt)
        print(f"wrote {frame.height} {what} to {out}")
        return
    write_frame_to_stream(frame, sys.stdout, fmt)


def _show(args: argparse.Namespace) -> int:
    from sweep.analysis.examples import TokenDecoder, examples_as_frame, find_examples, render_text
    from sweep.exposures.history import ExposureHistory
    from sweep.landed.reader import open_output

    _refuse_binary_to_terminal(args.format, args.out)
    landed = open_output(args.output)
    ckpt = args.ckpt if args.ckpt is not None else landed.last_checkpoint()
    full_match = True if args.full_match else (False if args.not_full_match else None)
    history = ExposureHistory.read(landed)
    counted = history.coverage.has_counts
    # csv or json on stdout is data for a program: the notes for the reader go to stderr
    notes = sys.stderr if args.format != "text" and args.out is None else sys.stdout
    if counted:  # a partial scan is never presented as complete
        print(f"({history.coverage.describe()})", file=notes)
    examples = find_examples(landed, ckpt, args.chunk, args.top, args.source, full_match, args.min_prefix,
                             args.per_source, history=history if counted else None, min_exposures=args.min_exposures,
                             max_exposures=args.max_exposures, sort=args.sort)
    if not examples:
        print(f"no landed sequence of checkpoint {ckpt} matches these filters", file=notes)
        if args.format == "text":
            return 0
    decoder = TokenDecoder.for_checkpoint(landed, ckpt) if examples else TokenDecoder()
    if args.format != "text":
        _write_result(examples_as_frame(examples, decoder, exposures=counted), args.format, args.out, "examples")
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    if decoder.tokenizer is None:
        print(f"(no tokenizer: {decoder.why_not}; showing token ids)")
    print("\n\n".join(render_text(example, decoder, color) for example in examples))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sweep.report.page import write_report

    chunks = [part[0] for part in _int_groups(args.chunks, "--chunks", "chunk ids such as 0,3,7", 1)] \
        if args.chunks else None
    cells = _int_groups(args.examples, "--examples", "CKPT:CHUNK pairs such as 359:0,359:355", 2) \
        if args.examples else None
    labels = None
    if args.labels is not None:
        from sweep.data.published_labels import read_labels

        labels = read_labels(args.labels, args.split, args.revision)
    print(f"report: {write_report(args.output, args.out, chunks, cells, labels=labels, smaller=args.smaller)}")
    return 0


def _labels_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(name, help="published labels: a local Parquet file or folder, or a Hub dataset id "
                                   "(e.g. EleutherAI/pythia-memorized-evals) with --split")
    parser.add_argument("--split", help="the Hub dataset's split (e.g. deduped.70m)")
    parser.add_argument("--revision", default="main", help="the Hub dataset's revision (default main; pinned to "
                                                           "its commit when read)")


def _compare(args: argparse.Namespace) -> int:
    import json

    from sweep.analysis.label_agreement import DEFAULT_TIE_MARGIN, compare_labels
    from sweep.data.published_labels import read_labels
    from sweep.landed.reader import open_output

    landed = open_output(args.output)
    tie_margin = DEFAULT_TIE_MARGIN if args.tie_margin is None else args.tie_margin
    comparison = compare_labels(landed, read_labels(args.labels, args.split, args.revision), args.checkpoint,
                                tie_margin)
    print(json.dumps(comparison.to_json(), indent=2) if args.format == "json" else comparison.describe())
    return 0 if comparison.data_matches else 1


def _int_groups(text: str, flag: str, expected: str, size: int) -> list[tuple[int, ...]]:
    """"359:0,359:355" -> [(359, 0), (359, 355)] (size 2); "0,3,7" -> [(0,), (3,), (7,)] (size 1)."""
    try:
        groups = [tuple(int(part) for part in item.split(":")) for item in text.split(",")]
    except ValueError:
        groups = []
    if not groups or any(len(group) != size for group in groups):
        raise MemsweepError(f"{flag} {text!r}: expected {expected}")
    return groups


def _serve(args: argparse.Namespace) -> int:
    from sweep.explorer.server import serve

    serve(args.output, args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Build the miniature Amber (first run only) where configs/demo.yaml points and its reference labels (HF
    `generate` at the last checkpoint, sweep/demo/reference_labels.py), then sweep it and report; with --smaller,
    the smaller model too (configs/demo-small.yaml), and the report compares the two sizes."""
    from sweep.demo.reference_labels import ensure_reference_labels
    from sweep.demo.world import DemoWorldConfig, ensure_demo_world

    spec = _demo_spec("demo.yaml", args.output)
    ensure_demo_world(DemoWorldConfig(), Path(spec.model.source), Path(spec.data.source), progress=not args.no_progress)
    ensure_reference_labels(DemoWorldConfig(), Path(spec.model.source), Path(spec.data.source),
                            progress=not args.no_progress)
    if not args.smaller:
        return _sweep(spec, args, report=True)
    from sweep.demo.sizes import ensure_smaller_model
    from sweep.report.page import write_report

    smaller = _demo_spec("demo-small.yaml", f"{args.output}-small" if args.output else None)
    ensure_smaller_model(DemoWorldConfig(), Path(smaller.model.source), Path(smaller.data.source),
                         progress=not args.no_progress)
    status = max(_sweep(spec, args, report=False), _sweep(smaller, args, report=False))
    print(f"report: {write_report(Path(spec.output), smaller=[Path(smaller.output)])}")
    return status


def _demo_spec(name: str, output: str | None):
    from sweep.spec import load_spec

    path = REPO_CONFIGS / name
    if not path.exists():
        raise MemsweepError(f"{path}: the demo spec ships with the repository; run from a clone")
    return load_spec(path, {"output": output} if output else None)


if __name__ == "__main__":
    sys.exit(main())
