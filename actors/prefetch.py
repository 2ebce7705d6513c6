"""The prefetch protocol of a checkpoint actor: shared by the real actor (actors/scorer_actor.py) and the control
plane's cost-model stand-in (benchmarks/control_plane.py), so that the benchmark measures the protocol a sweep runs.

The driver tells the actor that holds a checkpoint which one it will load next; `prefetch` (Ray concurrency group
"io") fetches it onto this node while the "compute" group scores, and `discard` drops a prefetched copy that
another actor took over. A load `_checkout`s its checkpoint: the prefetched copy, after waiting for a prefetch of
that very checkpoint still under way (never fetching it twice), else a fetch of its own. What fetching and
evicting mean is the subclass's (`_fetch`, `_evict`): a download to this node's disk, or a sleep.

The driver prefetches every checkpoint, the one an actor is about to load included, and hands the actor cells of
it once its prefetch has returned: so every download runs on the io group's one thread, one at a time, in the
order the driver asked for them (the checkpoint the GPU waits for first), and a load finds its files on the node.
A load that finds none (a failed prefetch, a restarted actor) fetches them itself.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from actors.protocol import CheckpointTarget, one_line

log = logging.getLogger("memsweep")


class PrefetchingActor:
    """Base of a checkpoint actor class decorated with `@ray.remote(concurrency_groups={"io": 1, "compute": 1})`."""

    def __init__(self) -> None:
        self.fetched: dict[CheckpointTarget, object] = {}  # on this node, not loaded yet
        self.fetching: dict[CheckpointTarget, threading.Event] = {}  # prefetches under way (io thread)
        self.checkout_seconds = 0.0  # what the last load waited for its checkpoint: a download, or a prefetch's end

    def _fetch(self, target: CheckpointTarget, prefetch: bool) -> object:
        """Put `target` on this node; returns what `_evict` takes back. `prefetch`: called from the io group."""
        raise NotImplementedError

    def _evict(self, fetched: object) -> int:
        """Remove a fetched checkpoint from this node; returns the bytes freed."""
        raise NotImplementedError

    @ray.method(concurrency_group="io")
    def prefetch(self, target: CheckpointTarget) -> float | None:
        """Fetch a checkpoint onto this node: the next one while the current one scores, or the one about to load.
        Returns the seconds the fetch itself took (None: nothing fetched, or it failed), which the driver prices
        downloads by: the call's own round trip also holds the actor's start (its first call waits for __init__).

        Best effort: a failure is only logged; the load will meet (and report) it again.
        """
        if target in self.fetched or target in self.fetching:
            return None
        done = self.fetching[target] = threading.Event()
        started = time.perf_counter()
        try:
            self.fetched[target] = self._fetch(target, prefetch=True)
            return time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - the load reports it, per cell
            log.warning("prefetch of %s failed: %s", target.revision, one_line(error))
            return None
        finally:
            del self.fetching[target]
            done.set()

    @ray.method(concurrency_group="io")
    def discard(self, target: CheckpointTarget) -> int:
        """Another actor took over `target`: drop this actor's prefetched copy now, not at the sweep's end."""
        self._wait_for_prefetch(target)
        fetched = self.fetched.pop(target, None)
        return self._evict(fetched) if fetched is not None else 0

    def _wait_for_prefetch(self, target: CheckpointTarget) -> None:
        in_progress = self.fetching.get(target)
        if in_progress is not None:
            in_progress.wait()

    def _checkout(self, target: CheckpointTarget) -> object:
        """The fetched `target` for a load: its prefetched copy (once a prefetch under way ends), else fetched now.
        Sets `checkout_seconds`."""
        began = time.perf_counter()
        try:
            self._wait_for_prefetch(target)
            fetched = self.fetched.pop(target, None)
            return fetched if fetched is not None else self._fetch(target, prefetch=False)
        finally:
            self.checkout_seconds = time.perf_counter() - began

    def _evict_all(self) -> None:
        """The sweep is over for this actor: every prefetched copy goes."""
        for fetched in list(self.fetched.values()):
            self._evict(fetched)
        self.fetched.clear()
