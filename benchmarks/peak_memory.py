"""Peak resident memory of this process, from /proc (Linux): what the benchmarks call "peak RSS".

VmHWM is the kernel's own high-water mark of RSS, exact where sampling would miss a short spike; writing
5 to /proc/self/clear_refs resets it, so one process can measure several phases.
"""


def reset_peak_rss() -> None:
    """Forget the peak so far: the next `peak_rss_bytes` counts from the current RSS."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_bytes() -> int:
    """VmHWM in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
