"""`memsweep plan` tells the cost of the full Amber matrix before anything runs (offline: Amber's published sizes)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from sweep.cli import main

REPO = Path(__file__).resolve().parents[1]


def plan(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", *args]) == 0
    return out.getvalue()


def test_plan_prices_the_full_amber_matrix(tmp_path):
    text = plan(str(REPO / "configs" / "amber-full-matrix.yaml"), "--offline", "--output", str(tmp_path / "out"))
    assert "cells: 129600 total, 0 done, 129600 to do" in text
    assert "checkpoint loads: 360; chunks to sample: 360" in text
    # 359 fp32 .bin revisions of 27 GB and main's 13.5 GB of bf16; 360 chunk files of 20.8 GB, streamed once
    assert f"downloads: {359 * 27 + 13.5:,.1f} GB of checkpoints" in text
    assert f"+ {360 * 20.8:,.1f} GB of chunk files streamed once" in text
    assert "peak disk per actor: 54.0 GB" in text and "8 GPUs: 432 GB" in text
    hours = dict((label, float(value.replace(",", ""))) for value, label in
                 re.findall(r"([\d,.]+) at the (reference|compute bound)", text))
    assert hours["reference"] == 129_600_000 / (1000 / 75) / 3600  # 2,700: the brief's number
    assert hours["compute bound"] == round(129_600_000 / 900 / 3600, 1)


def test_plan_of_a_partial_sweep_counts_only_what_is_left(tmp_path):
    text = plan(str(REPO / "configs" / "amber-diagonal.yaml"), "--offline", "--output", str(tmp_path / "out"),
                "--set", "checkpoints=[0, 10]", "--set", "chunks=[0, 10, 20]")
    assert "cells: 6 total, 0 done, 6 to do" in text and "checkpoint loads: 2; chunks to sample: 3" in text
    assert "downloads: 54.0 GB of checkpoints" in text and f"+ {3 * 20.8:,.1f} GB of chunk files" in text


def test_plan_says_when_downloads_are_kept(tmp_path):
    text = plan(str(REPO / "configs" / "amber-full-matrix.yaml"), "--offline", "--output", str(tmp_path / "out"),
                "--set", "model.keep_downloads=true")
    assert f"every checkpoint an actor loads stays (model.keep_downloads): up to {359 * 27 + 13.5:,.1f} GB" in text
    assert "peak disk per actor" not in text



def test_plan_manifest_and_report_name_one_identity(tmp_path):
    """The identity `memsweep plan` prints is the one the manifest records and the report shows."""
    import json

    import polars as pl

    from sweep.run.preflight import resolved_spec
    from sweep.report.page import write_report
    from sweep.landed.schema import CellProvenance
    from sweep.spec import load_spec
    from sweep.landed.store import ResultStore, ScoredCell

    output = tmp_path / "out"
    printed = re.search(r"identity ([0-9a-f]{16})\)", plan(str(REPO / "configs" / "demo.yaml"), "--offline",
                                                          "--output", str(output))).group(1)
    spec = resolved_spec(load_spec(REPO / "configs" / "demo.yaml", {"output": str(output)}))
    store = ResultStore(output)  # what `run` does with this spec, without a model: open, land one cell
    store.open(spec.identity(), spec.model_dump(mode="json"), {})
    sequences = pl.DataFrame({"chunk": [0, 0], "row": [3, 7], "source": ["c4", "c4"], "matches": [32, 1],
                              "score": [1.0, 1 / 32], "full_match": [True, False], "prefix_match": [32, 0]})
    store.write_cells(0, [ScoredCell(0, sequences, CellProvenance(seconds=1.0, device="cpu", dtype="float32",
                                                                  batch_size=2))])
    manifest = json.loads((output / "manifest.json").read_text())
    page = write_report(output).read_text()
    assert manifest["identity_hash"] == printed
    assert f"<td>{printed}</td>" in page


def test_plan_prices_the_exposure_scan_of_the_whole_corpus(tmp_path):
    text = plan(str(REPO / "configs" / "amber-full-matrix.yaml"), "--offline", "--output", str(tmp_path / "out"))
    line = next(line for line in text.splitlines() if line.startswith("exposure scans:"))
    assert f"360 chunk files, {360 * 20.8:,.1f} GB to stream" in line
    tokens = 360 * 1_706_976 * 2049  # 1.26T, FACTS.md
    assert f"~{tokens / 1e9:,.1f}B tokens" in line
    assert f"~{tokens / 50e6 / 3600:,.1f} core-hours" in line


def test_plan_names_the_binding_resource_the_bound_and_the_scan_concurrency(tmp_path):
    """Issue 25: for the default cluster (64 GPUs, 8 to a node, 96 CPUs and 2 GB/s each) the full matrix is bound by
    its GPUs, and `auto` sizes the scans to end with them."""
    text = plan(str(REPO / "configs" / "amber-full-matrix.yaml"), "--offline", "--output", str(tmp_path / "out"))
    assert "cluster: 64 GPUs on 8 nodes (8 GPUs, 96 CPUs and 2 GB/s of network each" in text
    cell_s = 1000 / (900 * 0.75)  # extractable, 75% of the compute bound
    gpus = 108 + (129_600 * cell_s + 360 * 40) / 64
    assert f"GPUs: {gpus / 60:.1f} min" in text
    assert f"binding: GPUs; the sweep cannot end before {gpus / 60:.1f} min" in text
    scans = int(re.search(r"exposure.concurrent_scans: auto \((\d+) at once", text).group(1))
    assert 8 <= scans <= 16
    scan_line = next(line for line in text.splitlines() if line.startswith("  exposure scans:"))
    assert float(re.search(r"([\d.]+) min", scan_line).group(1)) <= gpus / 60


def test_plan_flags_describe_another_cluster(tmp_path):
    spec = str(REPO / "configs" / "amber-full-matrix.yaml")
    few = plan(spec, "--offline", "--output", str(tmp_path / "out"), "--cpus-per-node", "9",
               "--set", "exposure.concurrent_scans=2")
    assert "exposure.concurrent_scans: 2\n" in few and "binding: exposure scans" in few  # hours after the GPUs
    diagonal = plan(str(REPO / "configs" / "amber-diagonal.yaml"), "--offline", "--output", str(tmp_path / "d"),
                    "--gpus", "8", "--network-gb-s", "0.5")
    assert "8 GPUs on 1 nodes" in diagonal  # 36 x 27 GB of checkpoints and 36 x 20.8 GB of chunks over one link:
    assert "binding: node links, every transfer; the sweep cannot end before 57.4 min" in diagonal
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["plan", spec, "--offline", "--gpus", "60"]) == 2
    assert err.getvalue().strip() == "memsweep: error: --gpus 60: not a multiple of --gpus-per-node 8"


def test_plan_prices_pythia_from_its_published_sizes(tmp_path):
    """154 fp16 checkpoints of 70,426,624 parameters (the Pythia README's 6 layers x 512, vocabulary 50,304); 143
    chunks whose probe sets each read 1,024,000 index entries of 12 bytes and 1000 x 64 uint16 tokens."""
    text = plan(str(REPO / "configs" / "pythia-deduped.yaml"), "--offline", "--output", str(tmp_path / "out"),
                "--set", "exposure.chunks=0-142")
    parameters = 2 * 50304 * 512 + 6 * (12 * 512 * 512 + 13 * 512) + 2 * 512
    assert parameters == 70_426_624
    assert "cells: 22022 total, 0 done, 22022 to do" in text and "checkpoint loads: 154; chunks to sample: 143" in text
    assert f"downloads: {154 * 2 * parameters / 1e9:,.1f} GB of checkpoints (154 loads, sizes from Pythia 70M's" in text
    read = 143 * (1_024_000 * 12 + 1000 * 64 * 2)
    assert f"+ {read / 1e9:,.2f} GB read by Range requests (143 probe sets to build" in text
    assert "no line indexes" in text
    hours = dict((label, float(value.replace(",", ""))) for value, label in
                 re.findall(r"([\d,.]+) at the (reference|compute bound)", text))
    assert hours["compute bound"] == round(22_022_000 / (900 * 6.74e9 / parameters) / 3600, 1)
    cell_s = 1000 / (900 * 6.74e9 / parameters * 0.5)  # the bound's cell: greedy at 50% of the same compute bound
    assert f"assumed: a cell {cell_s:.3g} s (50% of the ~{900 * 6.74e9 / parameters:,.0f} seq/s compute bound" in text
    line = next(line for line in text.splitlines() if line.startswith("exposure scans:"))
    tokens = 143 * 1_024_000 * 2049  # the whole stream: 300B tokens
    assert f"143 stream chunks, {143 * 1_024_000 * (12 + 2 * 2049) / 1e9:,.1f} GB to stream" in line
    assert f"~{tokens / 1e9:,.1f}B tokens), ~{tokens / 70e6 / 3600:,.1f} core-hours at 70M tokens/s" in line


def test_plan_prices_a_census_of_pythia_at_its_last_checkpoint(tmp_path):
    """Biderman et al.'s experiment: every one of the 146,432,000 sequences at step 143000, each cell reading its chunk
    whole (1,024,000 index entries of 12 bytes and items of 2049 uint16 tokens), no probe set landed."""
    args = [str(REPO / "configs" / "pythia-deduped.yaml"), "--offline", "--output", str(tmp_path / "out"),
            "--set", "data.samples_per_chunk=all", "--set", "checkpoints=[143000]"]
    text = plan(*args)
    assert "checkpoint loads: 1; chunks to read whole (a census): 143" in text
    assert "sequences to score: 146,432,000 (9,371,648,000 tokens; 1,024,000 a cell" in text
    read = 143 * 1_024_000 * (12 + 2 * 2049)
    assert f"+ {read / 1e9:,.1f} GB of stream chunks read by the actors (a census" in text
    assert (f"census: 146,432,000 sequences, every one of 143 chunks at each checkpoint to load; reads {read / 1e9:,.1f} "
            f"GB, lands ~{146_432_000 * 11 / 1e9:,.2f} GB of Parquet") in text
    assert f"landing them would add {146_432_000 * 64 * 4 / 1e9:,.1f} GB of uint32 tokens" in text
    assert "extractable mode" in text and "--set memorization.mode=extractable" in text
    assert "memorization.mode=extractable" not in plan(*args, "--set", "memorization.mode=extractable")


def test_plan_prices_k2_from_its_published_sizes(tmp_path):
    text = plan(str(REPO / "configs" / "k2.yaml"), "--offline", "--output", str(tmp_path / "out"))
    assert "downloads: 4,680.0 GB of checkpoints (36 loads, sizes from K2's published sizes (offline))" in text
    assert f"+ {36 * 35.6:,.1f} GB of chunk files streamed once" in text
    assert "8 GPUs: 520 GB" in text  # two actors of 4 GPUs on a node, each holding two 130 GB checkpoints


def test_plan_reads_a_local_streams_own_sizes(stream_family, tmp_path):
    from tests.stream_world import PER_CHUNK, SEQUENCE_LEN

    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\nmodel: {{source: {stream_family.model}, revision: 'step{{ckpt}}'}}\n"
        f"data: {{source: {stream_family.world.megatron}, format: megatron, samples_per_chunk: 16}}\n"
        "timeline: {sequences_per_step: 8, steps_per_chunk: 4}\ncheckpoints: [4, 8]\nchunks: 0-2\n"
        f"exposure: {{chunks: 0-2}}\nmemorization: {{prompt_len: 16, continuation_len: 16}}\noutput: {tmp_path / 'o'}\n")
    text = plan(str(spec))
    assert "the stream's own (96 items)" in text
    assert f"+ {3 * (PER_CHUNK * 12 + 16 * 32 * 2) / 1e9:,.2f} GB read by Range requests" in text
    assert f"3 stream chunks, {3 * PER_CHUNK * (12 + 2 * SEQUENCE_LEN) / 1e9:,.1f} GB to stream" in text
