"""The landed output's tables by SQL name, and what one row of each is: the one list behind `memsweep --help`,
`memsweep query OUTPUT --tables` and the reader's `tables()` (a test checks that the reader names no other).

Plain data, no Polars, so the command line can print it without importing the readers. The columns of each
table are not listed here: `memsweep query OUTPUT --tables` reads them from the output itself.
"""

from __future__ import annotations

SQL_TABLES: dict[str, str] = {
    "sequences": "one row per (checkpoint, chunk, sampled row): its memorization scores",
    "cells": "one row per (checkpoint, chunk): the cell's means and where its numbers come from",
    "probes": "one row per sampled (chunk, row): its source and its first k + l token ids",
    "failures": "one row per cell that failed after every try, with its error (only when one did)",
    "exposures": "one row per sampled sequence: its exposure counts over every chunk file scanned for it "
                 "(once a chunk file has been scanned)",
    "exposure_counts": "one row per (sampled sequence, scanned chunk file holding it): its counts in that file "
                       "(once a chunk file has been scanned)",
    "exposure_scans": "one row per exposure scan of a chunk file: what it counted and what it cost "
                      "(once a chunk file has been scanned)",
}
"""Every table a landed output can have, in the order they are listed; what one row is, and when it is there."""
