"""Peak resident memory of this process (Linux ru_maxrss is in KiB)."""

import resource


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
