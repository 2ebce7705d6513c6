"""The sweep spec: a YAML file validated into typed, frozen config objects.

Every key is documented in docs/spec.md. Validation errors are one line that names the file, the
key (dotted path) and, where the YAML has it, the line: `configs/x.yaml:12: memorization.prompt_len:
must be >= 1 (got 0)`.

Every field of every section declares what it means for the numbers: IDENTITY (changing it changes what a landed
number means, so an existing output refuses it), IDENTITY_UNLESS_DEFAULT (the same, for a key added after outputs
exist: left out of the identity while it has its default, so their identity hash stays), or NOT_IDENTITY (which
cells, or how they run). `SweepSpec.identity()` is derived from these declarations, so a new key is one line:

    format: Annotated[Literal["jsonl", "tokens"], IDENTITY_UNLESS_DEFAULT] = "jsonl"
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from sweep.errors import MemsweepError


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


def _check_template(value: str, field: str) -> str:
    """A str.format template may use only `{field}` (with a format spec such as `:03d`)."""
    try:
        value.format(**{field: 0})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template {value!r} must only use {{{field}}} ({exc})") from None
    return value


@dataclass(frozen=True)
class Meaning:
    """What a spec field means for the landed numbers; every field of every section declares one (in `Annotated`)."""

    identity: bool  # part of the output's identity: an output refuses a spec that changes it
    unless_default: bool = False  # ... except while it has its default value (a key added after outputs exist)


IDENTITY = Meaning(identity=True)
IDENTITY_UNLESS_DEFAULT = Meaning(identity=True, unless_default=True)
NOT_IDENTITY = Meaning(identity=False)


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
            raise TypeError(f"spec key {prefix}{name} declares no Meaning (IDENTITY, IDENTITY_UNLESS_DEFAULT or "
                            "NOT_IDENTITY)")
        if meaning.identity and not (meaning.unless_default and value == field.default):
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
        return _check_template(value, "ckpt")

    def revision_for(self, ckpt: int) -> str:
        return self.revision_overrides.get(ckpt) or self.revision.format(ckpt=ckpt)


class DataSpec(SpecSection):
    source: Annotated[str, IDENTITY] = Field(min_length=1)
    """A Hugging Face dataset repo id (`LLM360/AmberDatasets`) or a local directory."""
    file: Annotated[str, IDENTITY] = "train/train_{chunk:03d}.jsonl"
    """Chunk file inside the source; a template over the chunk id."""
    revision: Annotated[str, IDENTITY] = "main"
    """Hub dataset revision the chunk files are read at (pinned to its commit on first use); ignored locally."""
    samples_per_chunk: Annotated[int, IDENTITY] = Field(default=1000, ge=1)
    """Rows sampled per chunk (the probe set), as `shuffle(seed).select(range(n))` picks them."""
    seed: Annotated[int, IDENTITY] = Field(default=42, ge=0)
    """Sampling seed (numpy default_rng)."""
    cache_dir: Annotated[str | None, NOT_IDENTITY] = None
    """Where line indexes and probe sets are cached (on the driver); default `~/.cache/memsweep/probes`."""
    concurrent_builds: Annotated[int, NOT_IDENTITY] = Field(default=4, ge=1)
    """Probe sets built at once (each streams one chunk file: 20.8 GB for Amber)."""
    vocab_size: Annotated[int | None, NOT_IDENTITY] = Field(default=None, ge=1)
    """If set, token ids outside [0, vocab_size) are an error."""

    @field_validator("file")
    @classmethod
    def _file_formats(cls, value: str) -> str:
        return _check_template(value, "chunk")

    def file_for(self, chunk: int) -> str:
        return self.file.format(chunk=chunk)


class MemorizationSpec(SpecSection):
    prompt_len: Annotated[int, IDENTITY] = Field(default=32, ge=1)
    """k: prompt tokens."""
    continuation_len: Annotated[int, IDENTITY] = Field(default=32, ge=1)
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


PositiveOrAuto = Union[Literal["auto"], Annotated[int, Field(ge=1)]]


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


class ExposureSpec(SpecSection):
    chunks: Annotated[list[int], NOT_IDENTITY]
    """The chunk files of `data.file` to scan for exposure counts (ids and ranges, as `chunks`); may include chunks
    the sweep does not score. Extends the counts: a scan of a file counts the same whenever it is made."""
    concurrent_scans: Annotated[int, NOT_IDENTITY] = Field(default=2, ge=1)
    """Chunk files scanned at once (each a Ray task streaming one file)."""
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
    """Which (checkpoint, chunk) pairs: all, seen (chunk <= ckpt), unseen, diagonal (chunk == ckpt)."""
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
        _check_one_to_one(self.checkpoints, self.model.revision_for, "model.revision", "checkpoints", "ckpt",
                          "model.revision_overrides")
        _check_one_to_one(self.chunks, self.data.file_for, "data.file", "chunks", "chunk", None)
        if self.exposure is not None:
            _check_one_to_one(self.exposure.chunks, self.data.file_for, "data.file", "exposure.chunks", "chunk", None)
        return self

    def cell_list(self) -> list[tuple[int, int]]:
        """Every (ckpt, chunk) cell the spec asks for, checkpoint-major."""
        keep = {
            "all": lambda c, j: True,
            "seen": lambda c, j: j <= c,
            "unseen": lambda c, j: j > c,
            "diagonal": lambda c, j: j == c,
        }[self.cells]
        return [(c, j) for c in self.checkpoints for j in self.chunks if keep(c, j)]

    def identity(self) -> dict[str, Any]:
        """What a number in the output means: every key declared IDENTITY (and IDENTITY_UNLESS_DEFAULT ones that are
        set), dotted, e.g. {"model.source": "LLM360/Amber", ..., "memorization.nll": False}. Changing any of them needs
        a new output directory; checkpoints, chunks, resources and paths are not in it (see docs/spec.md)."""
        return identity_of(self)

    def keeps_generated(self) -> bool:
        keep = self.memorization.keep_generated
        return self.memorization.mode == "greedy" if keep == "auto" else bool(keep) and self.memorization.mode == "greedy"

    def identity_hash(self) -> str:
        return identity_hash(self.identity())


def identity_hash(identity: dict[str, Any]) -> str:
    """The name of what a sweep's numbers mean: 16 hex digits of the sha256 of the identity's canonical JSON.

    The one function behind every identity memsweep shows or compares (`memsweep plan`, the manifest, the
    report): equal identities, and only those, give equal hashes.
    """
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
    """One line for the first bad key: file:line: dotted.key: what is wrong."""
    errors = exc.errors()
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
    key = ".".join(str(part) for part in loc) or "(top level)"
    for dotted, value in (overridden or {}).items():
        if key == dotted or key.startswith(dotted + "."):
            return f"--set {dotted}={value!r}: {key}: {message}"
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {key}: {message}"


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
