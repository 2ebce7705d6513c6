"""Where model checkpoints and data chunks come from: a local directory or the Hugging Face Hub.

A *source* is one string from the spec:

- a local directory (``/data/amber``, ``./demo``, ``~/amber``): data files live at
  ``<source>/<file>`` and checkpoints at ``<source>/<revision>/`` (one folder per revision);
- a Hub repository id (``LLM360/Amber``, ``LLM360/AmberDatasets``): data files are
  downloaded from the dataset repository, checkpoints are Hub revisions (``ckpt_143``).

Everything that touches the network goes through ``huggingface_hub`` (looked up at call
time, so tests can monkeypatch it), and the Hub's cache makes repeated calls free.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub

# Files `from_pretrained` needs for a causal LM and its tokenizer. Weights are chosen
# separately (safetensors if the revision has them, else pickled .bin) so that a repository
# holding both never downloads both: an Amber checkpoint is about 27 GB.
CONFIG_AND_TOKENIZER_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")

_LOCAL_PREFIXES = ("/", "./", "../", "~")


def is_local(source: str) -> bool:
    """True if ``source`` names a local directory rather than a Hub repository id.

    Local means: an existing directory, or a path-like string (starting with ``/``, ``./``,
    ``../`` or ``~``) even if it does not exist yet, so that a mistyped local path gives a
    "not found" error instead of a confusing Hub lookup. Hub ids look like ``org/name``.
    """
    return source.startswith(_LOCAL_PREFIXES) or Path(source).expanduser().is_dir()


def resolve_data_file(source: str, file: str) -> Path:
    """Local path of data file ``file`` (e.g. ``train/train_143.jsonl``) of ``source``.

    Local source: ``<source>/<file>``, which must exist. Hub source: downloaded (or found in
    the Hub cache) from the dataset repository ``source``.
    """
    if is_local(source):
        path = Path(source).expanduser() / file
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path} (source {source!r}, file {file!r})")
        return path
    return Path(huggingface_hub.hf_hub_download(repo_id=source, filename=file, repo_type="dataset"))


def resolve_model(source: str, revision: str) -> tuple[str, str | None]:
    """What to pass to ``from_pretrained``: ``(name_or_path, revision)``.

    Local source: ``(<source>/<revision>, None)``, the revision's folder, which must exist.
    Hub source: ``(source, revision)`` unchanged.
    """
    if is_local(source):
        path = Path(source).expanduser() / revision
        if not path.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder not found: {path} (source {source!r}, revision {revision!r})"
            )
        return str(path), None
    return source, revision


def model_file_patterns(source: str, revision: str) -> list[str]:
    """``allow_patterns`` for one Hub revision: config, tokenizer, and one kind of weights."""
    files = huggingface_hub.list_repo_files(source, revision=revision)
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    weights = SAFETENSORS_PATTERNS if has_safetensors else PICKLE_WEIGHT_PATTERNS
    return [*CONFIG_AND_TOKENIZER_PATTERNS, *weights]


def prefetch_model(source: str, revision: str) -> None:
    """Download one checkpoint into the Hub cache so a later ``from_pretrained`` is a cache hit.

    Meant to run in the background while the previous checkpoint is being scored, so the
    download overlaps compute. A local source needs nothing: this is a no-op.
    """
    if is_local(source):
        return
    huggingface_hub.snapshot_download(
        repo_id=source,
        revision=revision,
        allow_patterns=model_file_patterns(source, revision),
    )
