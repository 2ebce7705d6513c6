"""The sweep spec: a YAML file validated into typed, frozen config objects.

Every key is documented in docs/spec.md. Validation errors are one line that names the file, the
key (dotted path) and, where the YAML has it, the line: `configs/x.yaml:12: memorization.prompt_len:
must be >= 1 (got 0)`.

Every field of every section declares what it means for the numbers: IDENTITY (changing it changes what a landed
number means, so an existing output refuses it), IDENTITY_UNLESS_DEFAULT (the same, for a key added after outputs
exist: left out of the identity while it has its default, so their identity hash stays), a format's identity
(part of the identity in one data format only: NUMPY_PROBED below), or NOT_IDENTITY (which cells, or how they run).
An identity key that also decides which sequences are probed (the data, how it is sampled, the k + l window) says so
(PROBED, PROBED_UNLESS_DEFAULT, NUMPY_PROBED): outputs of different models agree on those keys, and only then are
they analysed together (`probe_differences`). `SweepSpec.identity()` is derived from these declarations, so a new
key is one line:

    format: Annotated[Literal["jsonl", "megatron", "numpy"], PROBED_UNLESS_DEFAULT] = "jsonl"
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from sweep.errors import MemsweepError
from sweep.timeline import Timeline


class SpecError(MemsweepError):
    """A spec that cannot be used; the message names the file, line and key."""


def parse_id_list(value: Union[int, str, list]) -> list[int]:
    """Checkpoint/chunk ids from a list of ints and ranges: `"0-359:10"`, `[1, 5, "10-12"]`.

    Ranges `a-b` and `a-b:step` are inclusive of both ends (when `b` is on the stride).
    Returns sorted unique ids; raises ValueError on an empty range, a negative id or junk.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("empty list: name at least one id")
    ids: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not an id or a range")
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"ids must be >= 0 (got {item})")
            ids.add(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an id or a range")
        for part in item.split(","):
            ids.update(_parse_range(part.strip()))
    return sorted(ids)


_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def _parse_range(text: str) -> range:
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an id, 'a-b' or 'a-b:step'")
    start = int(match.group(1))
    stop = int(match.group(2)) if match.group(2) is not None else start
    step = int(match.group(3)) if match.group(3) is not None else 1
    if step < 1:
        raise ValueError(f"{text!r}: step must be >= 1")
    if stop < start:
        raise ValueError(f"{text!r} is an empty range ({stop} < {start})")
    return range(start, stop + 1, step)


def _check_one_to_one(ids: list[int], name_of, key: str, ids_key: str, field: str, overrides_key: str | None) -> None:
    seen: dict[str, int] = {}
    for value in ids:
        name = name_of(value)
        if name in seen:
            hint = f"; name each one in {overrides_key}" if overrides_key else ""
            raise ValueError(f"{key}: {field} {seen[name]} and {value} both map to {name!r}, so one would be scored "
                             f"as the other (use {{{field}}} in the template{hint})")
        seen[name] = value


def _check_template(value: str, field: str, *others: str) -> str:
    """A str.format template may use only `{field}` (and `others`), with format specs such as `:03d`."""
    try:
        value.format(**{name: 0 for name in (field, *others)})
    except (KeyError, IndexError, ValueError) as exc:
        named = " or ".join(f"{{{name}}}" for name in (field, *others))
        raise ValueError(f"template {value!r} must only use {named} ({exc})") from None
    return value


def _template_fields(template: str) -> set[str]:
    """The field names a str.format template uses."""
    import string

    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Meaning:
    """What a spec field means for the landed numbers; every field of every section declares one (in `Annotated`)."""

    identity: bool  # part of the output's identity: an output refuses a spec that changes it
    unless_default: bool = False  # ... except while it has its default value (a key added after outputs exist)
    formats: tuple[str, ...] | None = None  # ... only in these data formats (its section's `format`), None included
    counts_with: str | None = None  # ... and its value only while this key of its section is set (else None)
    probed: bool = False  # it decides which sequences are probed: outputs analysed together must agree on it


IDENTITY = Meaning(identity=True)
IDENTITY_UNLESS_DEFAULT = Meaning(identity=True, unless_default=True)
NOT_IDENTITY = Meaning(identity=False)
PROBED = Meaning(identity=True, probed=True)
PROBED_UNLESS_DEFAULT = Meaning(identity=True, unless_default=True, probed=True)
NUMPY_PROBED = Meaning(identity=True, formats=("numpy",), probed=True)


class SpecSection(BaseModel):
    """A section of the spec (and the spec itself): unknown keys refused, frozen; each key declares its Meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def section_of(field: FieldInfo) -> type[SpecSection] | None:
    """The section a field holds (`model: ModelSpec`, `exposure: ExposureSpec | None`), or None for a key."""
    for candidate in (field.annotation, *get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, SpecSection):
            return candidate
    return None


def meaning_of(field: FieldInfo) -> Meaning | None:
    """The Meaning a key declares (None: it declares none, which tests/test_spec.py refuses)."""
    declared = [item for item in field.metadata if isinstance(item, Meaning)]
    return declared[0] if len(declared) == 1 else None


def identity_of(section: SpecSection, prefix: str = "") -> dict[str, Any]:
    """The identity keys of `section` and the sections inside it, dotted (`model.source`), in declaration order; an
    absent optional section contributes none."""
    found: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if section_of(field) is not None:
            if value is not None:
                found.update(identity_of(value, f"{prefix}{name}."))
            continue
        meaning = meaning_of(field)
        if meaning is None:
            raise TypeError(f"spec key {prefix}{name} declares no Meaning (IDENTITY, IDENTITY_UNLESS_DEFAULT, "
                            "PROBED, PROBED_UNLESS_DEFAULT, NUMPY_PROBED or NOT_IDENTITY)")
        if not meaning.identity or (meaning.unless_default and value == field.default):
            continue
        if meaning.formats is not None and getattr(section, "format", None) not in meaning.formats:
            continue
        if meaning.counts_with is not None and getattr(section, meaning.counts_with) is None:
            value = None
        found[f"{prefix}{name}"] = _canonical(value)
    return found


def _canonical(value: Any) -> Any:
    """A value as the identity holds it: JSON's types, a mapping's keys as text in the order of the keys' own sort
    (`revision_overrides` {9: .., 10: ..} stays in numeric order)."""
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


class ModelSpec(SpecSection):
    source: Annotated[str, IDENTITY] = Field(min_length=1)
    """A Hugging Face model repo id (`LLM360/Amber`) or a local directory."""
    revision: Annotated[str, IDENTITY] = "ckpt_{ckpt:03d}"
    """Hub revision, or sub-directory of a local source; a template over the checkpoint id."""
    revision_overrides: Annotated[dict[int, str], IDENTITY] = {}
    """Per-checkpoint revisions that break the template (Amber: the last checkpoint is `main`)."""
    dtype: Annotated[Literal["float32", "float16", "bfloat16"], IDENTITY] = "bfloat16"
    """Weights and compute dtype."""
    attn_implementation: Annotated[Literal["auto", "sdpa", "eager", "flash_attention_2"], NOT_IDENTITY] = "auto"
    """auto = sdpa; flash_attention_2 only by name (needs flash-attn, CUDA and a 16-bit dtype; its benefit is
    unmeasured)."""
    download_dir: Annotated[str | None, NOT_IDENTITY] = None
    """Where Hub checkpoints are downloaded on each node; default `~/.cache/memsweep/checkpoints`."""
    keep_downloads: Annotated[bool, NOT_IDENTITY] = False
    """Keep downloaded Hub checkpoints after loading (default: delete each once its weights are in memory)."""

    @field_validator("revision")
    @classmethod
    def _revision_formats(cls, value: str) -> str:
        return _check_template(value, "ckpt", *REVISION_TOKEN_FIELDS)

    def revision_for(self, ckpt: int, tokens: int | None = None) -> str:
        """Checkpoint `ckpt`'s revision. `tokens`: tokens it has trained on, for templates that name them (OLMo's
        `step{ckpt}-tokens{tokens_b}B`; SweepSpec.revision_for passes them)."""
        if ckpt in self.revision_overrides:
            return self.revision_overrides[ckpt]
        counts = {} if tokens is None else {"tokens": tokens, "tokens_b": round(tokens / 1e9)}
        return self.revision.format(ckpt=ckpt, **counts)


# Revision template fields beside {ckpt}: tokens trained (exact) and in billions, rounded to the nearest (OLMo-1's
# `step20000-tokens84B`: 20,000 steps x 2048 x 2048 tokens = 83.9B). Offered with a step-indexed timeline over numpy
# token files (tokens a step = timeline.sequences_per_step x data.sequence_len).
REVISION_TOKEN_FIELDS = ("tokens", "tokens_b")


DATA_FORMATS = ("jsonl", "megatron", "numpy")
# What `data.file` is when the spec leaves it out, by format.
DEFAULT_DATA_FILE = {"jsonl": "train/train_{chunk:03d}.jsonl", "megatron": "document", "numpy": None}
TOKEN_DTYPES = ("uint16", "uint32")
ORDER_DTYPES = ("uint16", "uint32", "uint64", "int32", "int64")


PositiveOrAuto = Union[Literal["auto"], Annotated[int, Field(ge=1)]]


class DataSpec(SpecSection):
    source: Annotated[str, PROBED] = Field(min_length=1)
    """A Hugging Face dataset repo id (`LLM360/AmberDatasets`) or a local directory."""
    format: Annotated[Literal["jsonl", "megatron", "numpy"], PROBED_UNLESS_DEFAULT] = "jsonl"
    """How the training stream is stored: JSON-lines chunk files (Amber, K2), a Megatron / GPT-NeoX indexed dataset
    (Pythia), or flat numpy token files with an optional order file (OLMo)."""
    file: Annotated[Union[str, list[str]], PROBED] = None  # type: ignore[assignment] - filled by format in _default_file
    """jsonl: the chunk file inside the source, a template over the chunk id; megatron: the dataset's prefix
    (`document`: `document.idx` beside `document.bin` or its shards); numpy: the token files in stream order (a list,
    or one glob sorted by name)."""
    dtype: Annotated[Literal["uint16", "uint32"] | None, NUMPY_PROBED] = None
    """numpy: the token files' id type."""
    sequence_len: Annotated[int | None, NUMPY_PROBED] = Field(default=None, ge=1)
    """numpy: tokens per instance; each file is cut into whole instances (a remainder is ignored, as OLMo does)."""
    order: Annotated[str | None, NUMPY_PROBED] = None
    """numpy: a flat integer array file (OLMo's `global_indices.npy`): stream position p is instance order[p]."""
    order_dtype: Annotated[Literal["uint16", "uint32", "uint64", "int32", "int64"],
                           Meaning(identity=True, formats=("numpy",), counts_with="order", probed=True)] = "uint32"
    """numpy: the order file's integer type (OLMo: uint32); part of the identity only with an order file."""
    revision: Annotated[str, PROBED] = "main"
    """Hub dataset revision the chunk files are read at (pinned to its commit on first use); ignored locally."""
    samples_per_chunk: Annotated[Union[Literal["all"], Annotated[int, Field(ge=1)]], PROBED] = 1000
    """Rows sampled per chunk (the probe set), as `shuffle(seed).select(range(n))` picks them; `all`: a census, every
    sequence of the chunk in the stream's order (`row` = its position in the chunk; `seed` is then unused)."""
    seed: Annotated[int, PROBED] = Field(default=42, ge=0)
    """Sampling seed (numpy default_rng)."""
    cache_dir: Annotated[str | None, NOT_IDENTITY] = None
    """Where line indexes and probe sets are cached (on the driver); default `~/.cache/memsweep/probes`."""
    concurrent_builds: Annotated[PositiveOrAuto, NOT_IDENTITY] = "auto"
    """Probe sets built at once (each streams one chunk file: 20.8 GB for Amber); auto = the streams the node links
    carry beside the checkpoint downloads in flight (sweep/run/pacing.py)."""
    vocab_size: Annotated[int | None, NOT_IDENTITY] = Field(default=None, ge=1)
    """If set, token ids outside [0, vocab_size) are an error."""

    @model_validator(mode="before")
    @classmethod
    def _default_file(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("file") is None:
            fmt = raw.get("format", "jsonl")
            if DEFAULT_DATA_FILE.get(fmt) is not None:
                return {**raw, "file": DEFAULT_DATA_FILE[fmt]}
        return raw

    @field_validator("file")
    @classmethod
    def _file_is_named(cls, value: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(value, list) and (not value or not all(isinstance(item, str) and item for item in value)):
            raise ValueError("a list of token files needs at least one non-empty path")
        return value

    def file_for(self, chunk: int) -> str:
        """The chunk file of chunk `chunk` (jsonl only: in the other formats a chunk is a range of the stream)."""
        return self.file.format(chunk=chunk)

    @property
    def census(self) -> bool:
        """`samples_per_chunk: all`: every sequence of each chunk is scored, read from the pinned source in pieces
        (sweep/data/census.py), none of them landed as a probe set."""
        return self.samples_per_chunk == "all"

    @property
    def is_stream(self) -> bool:
        """megatron or numpy: a chunk is a range of one stream, not a file."""
        return self.format != "jsonl"


class MemorizationSpec(SpecSection):
    prompt_len: Annotated[int, PROBED] = Field(default=32, ge=1)
    """k: prompt tokens."""
    continuation_len: Annotated[int, PROBED] = Field(default=32, ge=1)
    """l: greedy tokens compared with the true continuation."""
    mode: Annotated[Literal["greedy", "extractable"], IDENTITY] = "greedy"
    """greedy: decode l tokens (matches, score, prefix_match, full_match);
    extractable: one teacher-forced pass (exact prefix_match and full_match only)."""
    eos: Annotated[Literal["ordinary", "reference"], IDENTITY] = "ordinary"
    """ordinary: EOS is a token like any other; reference: stop at EOS and pad, like the reference tool."""
    nll: Annotated[bool, IDENTITY] = False
    """Also record mean NLL and teacher-forced accuracy of the true continuation."""
    keep_generated: Annotated[Union[Literal["auto"], bool], NOT_IDENTITY] = "auto"
    """Land the model's l greedy tokens per sequence (`generated`); auto = in greedy mode."""


class ResourcesSpec(SpecSection):
    """How cells are scored, never what they mean (fp32 results do not depend on it; bf16: README, "Exactness")."""

    gpus_per_actor: Annotated[Union[Literal["auto"], Annotated[float, Field(ge=0)]], NOT_IDENTITY] = "auto"
    """0 = CPU actors (a laptop); auto = 1 when the cluster has GPUs, else 0."""
    actors: Annotated[PositiveOrAuto, NOT_IDENTITY] = "auto"
    """Checkpoint actors at once; auto = cluster GPUs / gpus_per_actor (1 on CPU)."""
    batch_size: Annotated[PositiveOrAuto, NOT_IDENTITY] = "auto"
    """Sequences per forward; auto = the largest that fits on CUDA, a measured default on CPU."""
    cpus_per_actor: Annotated[float, Field(gt=0), NOT_IDENTITY] = 1
    """Ray CPUs reserved per actor."""
    max_attempts: Annotated[int, Field(ge=1), NOT_IDENTITY] = 3
    """Tries per cell before it is recorded as failed and the sweep goes on."""
    device: Annotated[Literal["auto", "cpu", "cuda"], NOT_IDENTITY] = "auto"
    """Where actors run the model; auto = CUDA when present, else CPU."""
    decode: Annotated[Literal["growing", "static", "static-compiled"], NOT_IDENTITY] = "growing"
    """The greedy loop's KV cache: growing (appended per step), static (preallocated), static-compiled (+ torch.compile
    of the one-token step, CUDA only). Greedy mode without nll only; the static forms are unmeasured on a GPU."""


class TimelineSpec(SpecSection):
    sequences_per_step: Annotated[int, PROBED] = Field(ge=1)
    """Training sequences per optimizer step (Pythia: 1024, a batch of 1024 x 2049 tokens)."""
    steps_per_chunk: Annotated[int, PROBED] = Field(ge=1)
    """Steps per chunk: chunk c is steps [c S, (c + 1) S) of the stream (Pythia: 1000)."""


class ExposureSpec(SpecSection):
    chunks: Annotated[list[int], NOT_IDENTITY]
    """The chunk files of `data.file` to scan for exposure counts (ids and ranges, as `chunks`); may include chunks
    the sweep does not score. Extends the counts: a scan of a file counts the same whenever it is made."""
    concurrent_scans: Annotated[PositiveOrAuto, NOT_IDENTITY] = "auto"
    """Chunk files scanned at once (each a Ray task streaming one file); auto = enough to end with the GPUs, on the
    CPUs the actors leave (sweep/run/pacing.py)."""
    cpus_per_scan: Annotated[float, Field(gt=0), NOT_IDENTITY] = 1
    """Ray CPUs reserved per scan task (the scan itself runs on one core)."""

    @field_validator("chunks", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> list[int]:
        return parse_id_list(value)


class SweepSpec(SpecSection):
    name: Annotated[str, NOT_IDENTITY] = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSpec
    data: DataSpec
    checkpoints: Annotated[list[int], NOT_IDENTITY]
    """Adding checkpoints or chunks extends a sweep; each cell's numbers do not depend on the others."""
    chunks: Annotated[list[int], NOT_IDENTITY]
    cells: Annotated[Literal["all", "seen", "unseen", "diagonal"], NOT_IDENTITY] = "all"
    """Which (checkpoint, chunk) pairs: all, seen (the checkpoint has trained on some of the chunk), unseen (on none
    of it), diagonal (its newest chunk); sweep/timeline.py. Chunk-indexed: chunk <= ckpt, chunk > ckpt, ==."""
    timeline: TimelineSpec | None = None
    """Checkpoints as training steps and chunks as ranges of the stream (required for megatron and numpy data)."""
    memorization: MemorizationSpec = MemorizationSpec()
    resources: ResourcesSpec = ResourcesSpec()
    exposure: ExposureSpec | None = None
    """Count every probe sequence's occurrences in these chunk files (none: no exposure counts)."""
    output: Annotated[str, NOT_IDENTITY] = Field(min_length=1)
    """Results directory; a relative path is relative to the directory memsweep runs in."""

    @field_validator("checkpoints", "chunks", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> list[int]:
        return parse_id_list(value)

    @model_validator(mode="after")
    def _data_keys_fit_format(self) -> "SweepSpec":
        """Each format's keys, and a timeline exactly where a chunk is a range of the stream."""
        data = self.data
        only_numpy = [key for key in ("dtype", "sequence_len", "order") if getattr(data, key) is not None]
        if data.format != "numpy" and only_numpy:
            raise ValueError(f"data.{only_numpy[0]}: applies to data.format numpy only (got format {data.format!r}"
                             + ("; a Megatron index names its own dtype)" if data.format == "megatron" else ")"))
        if data.format == "jsonl":
            if not isinstance(data.file, str):
                raise ValueError("data.file: a jsonl chunk file is one template over {chunk}, not a list")
            _check_file_template(data.file)
            if self.timeline is not None:
                raise ValueError("timeline: applies to data.format megatron or numpy; a jsonl chunk is a file, and "
                                 "checkpoint c is the one saved after chunk c")
            return self
        if self.timeline is None:
            raise ValueError(f"timeline: required for data.format {data.format} (a chunk is a range of the stream: "
                             "give timeline.sequences_per_step and timeline.steps_per_chunk)")
        if data.format == "megatron":
            if not isinstance(data.file, str) or "{" in data.file:
                raise ValueError(f"data.file: a Megatron dataset is named by its prefix, e.g. 'document' for "
                                 f"document.idx and document.bin or its shards (got {data.file!r})")
            if data.file.endswith((".idx", ".bin")):
                raise ValueError(f"data.file: name the prefix without .idx or .bin (got {data.file!r}; try "
                                 f"{data.file.rsplit('.', 1)[0]!r})")
        else:
            if data.file is None:
                raise ValueError("data.file: required for data.format numpy: the token files in stream order, a list "
                                 "or a glob")
            for key in ("dtype", "sequence_len"):
                if getattr(data, key) is None:
                    raise ValueError(f"data.{key}: required for data.format numpy")
        return self

    @model_validator(mode="after")
    def _census_has_no_exposure_counts(self) -> "SweepSpec":
        if self.data.census and self.exposure is not None:
            raise ValueError("exposure: counts every probe sequence in the scanned files, and a census "
                             "(data.samples_per_chunk: all) lands no probe sets to count; sweep a sample for exposure "
                             "counts")
        return self

    @model_validator(mode="after")
    def _revision_names_what_it_can(self) -> "SweepSpec":
        if _template_fields(self.model.revision) & set(REVISION_TOKEN_FIELDS) and self.tokens_per_step() is None:
            raise ValueError("model.revision: {tokens} and {tokens_b} need the tokens of a step: a timeline section "
                             "over data.format numpy (timeline.sequences_per_step x data.sequence_len)")
        return self

    @model_validator(mode="after")
    def _has_cells(self) -> "SweepSpec":
        if not self.cell_list():
            raise ValueError(f"cells: {self.cells!r} selects no (checkpoint, chunk) pair")
        return self

    @model_validator(mode="after")
    def _decode_applies(self) -> "SweepSpec":
        memorization = self.memorization
        if self.resources.decode != "growing" and (memorization.mode != "greedy" or memorization.nll):
            raise ValueError(f"resources.decode: {self.resources.decode!r} applies to greedy mode without "
                             "memorization.nll only (extractable mode has no decode loop; the NLL pass seeds a "
                             "growing cache)")
        return self

    @model_validator(mode="after")
    def _attention_fits_dtype_and_decode(self) -> "SweepSpec":
        """flash-attn computes in 16 bits only (transformers merely warns; the first forward then fails every cell),
        and it reads a static cache's filled length from an attention mask a compiled step cannot pass."""
        model = self.model
        if model.attn_implementation == "flash_attention_2" and model.dtype == "float32":
            raise ValueError("model.attn_implementation: flash_attention_2 needs model.dtype float16 or bfloat16 "
                             "(got float32); use sdpa (the default) for float32")
        if model.attn_implementation == "flash_attention_2" and self.resources.decode == "static-compiled":
            raise ValueError("resources.decode: static-compiled cannot run with model.attn_implementation "
                             "flash_attention_2 (flash attention reads a static cache's filled length from an "
                             "attention mask that changes every step); use decode static or growing, or sdpa")
        return self

    @model_validator(mode="after")
    def _one_revision_and_file_per_id(self) -> "SweepSpec":
        """Two checkpoints loading one revision (or two chunks reading one file) would land one model's numbers
        under another's id: the most silent wrong number there is."""
        _check_one_to_one(self.checkpoints, self.revision_for, "model.revision", "checkpoints", "ckpt",
                          "model.revision_overrides")
        if self.data.is_stream:  # chunks are ranges of one stream: no file per chunk to tell apart
            return self
        _check_one_to_one(self.chunks, self.data.file_for, "data.file", "chunks", "chunk", None)
        if self.exposure is not None:
            _check_one_to_one(self.exposure.chunks, self.data.file_for, "data.file", "exposure.chunks", "chunk", None)
        return self

    def timeline_positions(self) -> Timeline:
        """Where each checkpoint and chunk lies on the training stream (sweep/timeline.py)."""
        if self.timeline is None:
            return Timeline()
        return Timeline(self.timeline.sequences_per_step, self.timeline.steps_per_chunk)

    def tokens_per_step(self) -> int | None:
        """Tokens trained per step, where the spec knows them (a timeline over numpy instances of a fixed length)."""
        if self.timeline is None or self.data.format != "numpy" or self.data.sequence_len is None:
            return None
        return self.timeline.sequences_per_step * self.data.sequence_len

    def revision_for(self, ckpt: int) -> str:
        """Checkpoint `ckpt`'s Hub revision (or local sub-folder), the template's token fields filled in."""
        per_step = self.tokens_per_step()
        return self.model.revision_for(ckpt, None if per_step is None else ckpt * per_step)

    def cell_list(self) -> list[tuple[int, int]]:
        """Every (ckpt, chunk) cell the spec asks for, checkpoint-major (seen / unseen / diagonal: the timeline's)."""
        timeline = self.timeline_positions()
        keep = {
            "all": lambda c, j: True,
            "seen": timeline.is_seen,
            "unseen": lambda c, j: not timeline.is_seen(c, j),
            "diagonal": lambda c, j: timeline.newest_chunk(c) == j,
        }[self.cells]
        return [(c, j) for c in self.checkpoints for j in self.chunks if keep(c, j)]

    def identity(self) -> dict[str, Any]:
        """What a number in the output means: every key declared IDENTITY (and IDENTITY_UNLESS_DEFAULT ones that are
        set, a format's keys in that format), dotted, e.g. {"model.source": "LLM360/Amber", ..., "memorization.nll":
        False}. Changing any of them needs a new output directory; checkpoints, chunks, resources and paths are not in
        it (see docs/spec.md). A stream's format and timeline join it only where they differ from Amber's (jsonl
        files, checkpoint c after chunk c), so every output written before them keeps its identity hash."""
        return identity_of(self)

    def sequences_per_cell(self) -> int | None:
        """Sequences a cell scores: `data.samples_per_chunk`, or for a census a stream chunk's (the timeline's
        chunk length; a last chunk cut short by the stream's end holds fewer) and None for a JSONL census (a chunk
        file's rows are known once it is read)."""
        if not self.data.census:
            return self.data.samples_per_chunk
        return self.timeline_positions().chunk_sequences if self.data.is_stream else None

    def keeps_generated(self) -> bool:
        keep = self.memorization.keep_generated
        if keep == "auto":  # a census's generated tokens would be 128 bytes a sequence: 18.7 GB a Pythia checkpoint
            return self.memorization.mode == "greedy" and not self.data.census
        return bool(keep) and self.memorization.mode == "greedy"

    def identity_hash(self) -> str:
        return identity_hash(self.identity())


def _check_file_template(value: str) -> None:
    try:
        _check_template(value, "chunk")
    except ValueError as error:
        raise ValueError(f"data.file: {error}") from None


def identity_hash(identity: dict[str, Any]) -> str:
    """The name of what a sweep's numbers mean: 16 hex digits of the sha256 of the identity's canonical JSON.

    The one function behind every identity memsweep shows or compares (`memsweep plan`, the manifest, the
    report): equal identities, and only those, give equal hashes.
    """
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def declared_meanings(section: type[SpecSection] | None = None, prefix: str = "") -> dict[str, tuple[Meaning, Any]]:
    """Every key of the spec (or of `section`), dotted as an identity names it, with its Meaning and its default
    (pydantic's `PydanticUndefined` for a required key)."""
    found: dict[str, tuple[Meaning, Any]] = {}
    for name, field in (section or SweepSpec).model_fields.items():
        inner = section_of(field)
        if inner is not None:
            found.update(declared_meanings(inner, f"{prefix}{name}."))
        elif (meaning := meaning_of(field)) is not None:
            found[f"{prefix}{name}"] = (meaning, field.default)
    return found


def probe_differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """What makes two outputs probe different sequences, from their identities (a manifest's `identity`): one line
    per differing key declared `probed` (the data, its sampling, the timeline, the k + l window), e.g.
    `data.seed (42 vs 7)`; empty when both probe the same sequences, whatever their models and scoring. A key an
    identity leaves out while at its default (IDENTITY_UNLESS_DEFAULT) counts as that default; a key this memsweep
    does not declare counts as probed (an identity it cannot read is never taken for an equal one)."""
    meanings = declared_meanings()
    absent = "<absent>"

    def value(identity: dict[str, Any], key: str) -> Any:
        if key in identity:
            return identity[key]
        meaning, default = meanings.get(key, (None, None))
        return _canonical(default) if meaning is not None and meaning.unless_default else absent

    lines = []
    for key in sorted(first.keys() | second.keys()):
        meaning = meanings.get(key, (None, None))[0]
        if meaning is not None and not meaning.probed:
            continue
        before, after = value(first, key), value(second, key)
        if before != after:
            shown = [item if item is absent else json.dumps(item, default=str) for item in (before, after)]
            lines.append(f"{key} ({shown[0]} vs {shown[1]})")
    return lines


def recorded_spec(raw: Any) -> SweepSpec | None:
    """A spec as an output's manifest recorded it (`SweepSpec.model_dump(mode="json")`), validated again, or None when
    it is not a whole spec (a synthetic output records only some keys). Readers get it once per opening, from
    sweep/landed/reader.py `LandedOutput.sweep_spec`."""
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError:
        return None


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a spec file. `overrides` maps dotted keys to values (CLI `--set`).

    Errors (SpecError) are one line: `FILE:LINE: key: why`, or `--set KEY=VALUE: key: why` when the bad value
    came from an override.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a spec is YAML)") from None
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping of keys (name, model, data, ...)")
    _refuse_duplicate_keys(path, root)
    overridden: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
        overridden[dotted] = value
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_describe(path, root, exc, overridden)) from None


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, prefix: str = "") -> None:
    """YAML lets a later key silently replace an earlier one (two `output:` lines): refuse it, naming both lines."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}{key}"
            if key in first_line:
                raise SpecError(f"{path}:{key_node.start_mark.line + 1}: {dotted}: duplicated key (also on line "
                                f"{first_line[key]}); YAML would silently keep the last one")
            first_line[key] = key_node.start_mark.line + 1
            _refuse_duplicate_keys(path, value_node, dotted + ".")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item, prefix)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    if not leaf or not all(parents):
        raise SpecError(f"--set {dotted}: not a dotted key such as resources.batch_size")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {key} is not a section")
    node[leaf] = value


_DOTTED_MESSAGE = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$")


def _describe(path: Path, root: yaml.Node | None, exc: ValidationError, overridden: dict[str, Any] | None = None) -> str:
    """One line for the first bad key: `file:line: dotted.key: what is wrong` (or `--set KEY=VALUE: ...`).

    Unknown keys come first, each with the valid key it is closest to: for `exposure: {chunk: [0]}` pydantic lists the
    missing `exposure.chunks` before the unknown `exposure.chunk`, and the typo is what the user has to fix. A missing
    key that one of them was meant to be is not repeated; the first other problem follows on the same line."""
    errors = exc.errors()
    unknown = [error for error in errors if error["type"] == "extra_forbidden" and _key_path(error)]
    if not unknown:
        loc, message = _first_problem(errors)
        return _locate(path, root, loc, message, overridden or {})
    messages, meant = [], set()
    for error in unknown:
        message, suggested = _unknown_key(_key_path(error))
        messages.append(message)
        meant.add(suggested)
    rest = [error for error in errors if error["type"] != "extra_forbidden"
            and not (error["type"] == "missing" and _dotted(_key_path(error)) in meant)]
    if rest:
        messages.append(_first_problem(rest)[1])
    return _locate(path, root, _key_path(unknown[0]), "; ".join(messages), overridden or {})


def _unknown_key(loc: list) -> tuple[str, str | None]:
    """(`section.key: unknown key (did you mean KEY?)`, the dotted key it suggests) for an unknown key at `loc`; without
    a close valid key the message lists the section's keys and nothing is suggested."""
    *section, key = [str(part) for part in loc]
    valid = _section_keys(section)
    closest = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if closest:
        return f"{_dotted(loc)}: unknown key (did you mean {closest[0]}?)", _dotted([*section, closest[0]])
    return f"{_dotted(loc)}: unknown key ({_dotted(section) or 'a spec'} has {', '.join(valid)})", None


def _section_keys(section: list[str]) -> list[str]:
    """The keys a spec section (`[]`: the top level, `["exposure"]`, ...) may hold, in the order they are declared."""
    model: type[BaseModel] = SweepSpec
    for name in section:
        annotation = model.model_fields[name].annotation
        model = next(member for member in (annotation, *typing.get_args(annotation))
                     if isinstance(member, type) and issubclass(member, BaseModel))
    return list(model.model_fields)


def _first_problem(errors: list[dict]) -> tuple[list, str]:
    """(where, `dotted.key: what is wrong`) for the first of `errors`."""
    loc = _key_path(errors[0])
    # A union (e.g. 'auto' or an int >= 1) reports one error per member: say them together.
    alternatives = [e for e in errors if _key_path(e) == loc]
    kind = errors[0]["type"]
    if kind == "extra_forbidden":
        message = "unknown key (see docs/spec.md for the keys)"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = " or ".join(
            dict.fromkeys(e["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
                          for e in alternatives)
        )
        if len(alternatives) > 1 or errors[0]["msg"].startswith("Input should be "):
            message = "should be " + message
        if "input" in errors[0] and kind not in ("model_type", "dict_type") and loc:
            message += f" (got {errors[0]['input']!r})"
    if not loc:  # a whole-spec check names its key in its message: "model.revision: ..."
        named = _DOTTED_MESSAGE.match(message)
        if named:
            loc, message = named.group(1).split("."), named.group(2)
    return loc, f"{_dotted(loc) or '(top level)'}: {message}"


def _locate(path: Path, root: yaml.Node | None, loc: list, message: str, overridden: dict[str, Any]) -> str:
    """`message` prefixed by where the key at `loc` came from: the --set that gave it, else the file and line."""
    key = _dotted(loc)
    for dotted, value in overridden.items():
        if key == dotted or key.startswith(dotted + "."):
            return f"--set {dotted}={value!r}: {message}"
    line = _line_of(root, loc)
    return f"{path}:{line}: {message}" if line else f"{path}: {message}"


def _dotted(loc: list) -> str:
    return ".".join(str(part) for part in loc)


def _key_path(error: dict) -> list:
    return [part for part in error["loc"] if not _is_union_tag(part)]


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member that failed (e.g. 'literal['auto']', 'int') into the loc.
    return isinstance(part, str) and (
        "[" in part or part.startswith("constrained-") or part in ("int", "float", "str", "bool")
    )


def _line_of(node: yaml.Node | None, loc: list) -> int | None:
    """1-based line of the deepest YAML node along `loc` (the key itself, when it exists)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
