"""Benchmark fixture for Python samplers: a fixed amount of CPU-bound pure Python through a
known chain, main -> outer_step -> inner_loop (integer arithmetic in a plain loop).

    python3 hot.py ITERATIONS

Prints `ready PID`, then waits for SIGUSR1 so that a sampler can attach to PID before the
work starts. Runs ITERATIONS loop iterations, then prints what they took, measured from
inside so that interpreter start-up and exit are left out:
    elapsed SECONDS checksum N
then waits for SIGTERM/SIGINT: the process stays alive until the sampler has written its
output, so every sampler can still read its memory and mappings.
"""

import os
import signal
import sys
import time

# Iterations of inner_loop per call: calls are rare next to the loop, so nearly every
# sample is in inner_loop.
STEP = 100_000


def inner_loop(n, seed):
    total = seed
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


def outer_step(n, seed):
    return inner_loop(n, seed)


def main():
    iterations = int(sys.argv[1])
    # Blocked before `ready`, so an early SIGUSR1 waits for sigwait instead of killing us.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})
    print(f"ready {os.getpid()}", flush=True)
    signal.sigwait({signal.SIGUSR1})
    started = time.perf_counter()
    checksum = 0
    for _ in range(iterations // STEP):
        checksum = outer_step(STEP, checksum)
    elapsed = time.perf_counter() - started
    print(f"elapsed {elapsed:.6f} checksum {checksum}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
