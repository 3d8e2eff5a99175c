"""This process's peak resident memory for the benchmark scripts.

`resource.getrusage(RUSAGE_SELF).ru_maxrss` is not it when the runner starts the script: Linux
keeps the high-water mark across `execve`, so the child reports the runner's own peak if that
is higher. `VmHWM` in /proc/self/status belongs to the new address space.
"""

import resource


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
