"""Reading the next piece while this one is scored: a census cell reads its chunk (disk or network) and scores it
(GPU), and the two overlap instead of adding up.

    for piece in read_ahead(census.pieces()):   # piece i + 1 is read in a thread while piece i is scored
        ...

At most `depth` pieces wait read (so memory stays `depth + 1` pieces); an error raised while reading is raised here,
at the piece it would have been; leaving the loop early (a `break`, an error in the caller) stops the reader at its
next piece.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items` in order, the next `depth` of them read in a thread of their own meanwhile."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Hand one item over, unless the consumer has gone; True if it was taken."""
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)  # wakes up to see `stop`: the consumer may have left
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(error)

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item = waiting.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
