"""What every checkpoint actor is told: the spec's settings for the data plane, built here in the control plane.

The data plane (actors/) knows nothing of the spec: it takes `actors.protocol.ScorerSettings`, plain values. This is
the one place that reads a `SweepSpec` into them, so a spec key can move or be renamed without the actors noticing.
"""

from __future__ import annotations

from actors.protocol import ScorerSettings, ScoringOptions
from sweep.spec import SweepSpec


def scorer_settings(spec: SweepSpec, gpus_per_actor: float) -> ScorerSettings:
    """The settings `spec` gives its actors, `gpus_per_actor` being `resources.gpus_per_actor` resolved against the
    cluster ("auto" is the driver's to decide, sweep/run/driver.py `gpus_per_actor`).

    An actor without a GPU runs on the CPU whatever `resources.device` says ("auto"): Ray reserves it no GPU but no
    longer hides the node's GPUs from it (ray-project/ray#54868; seen with Ray 2.60)."""
    model, memorization, resources = spec.model, spec.memorization, spec.resources
    options = ScoringOptions(prompt_len=memorization.prompt_len, continuation_len=memorization.continuation_len,
                             mode=memorization.mode, eos=memorization.eos, nll=memorization.nll,
                             decode=resources.decode)
    return ScorerSettings(model_source=model.source, dtype=model.dtype, attn_implementation=model.attn_implementation,
                          options=options, batch_size=resources.batch_size,
                          device="cpu" if gpus_per_actor == 0 else resources.device, gpus_per_actor=gpus_per_actor,
                          torch_threads=max(1, int(resources.cpus_per_actor)), download_dir=model.download_dir,
                          keep_downloads=model.keep_downloads, keep_generated=spec.keeps_generated())
