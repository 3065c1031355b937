"""The seed's example: 20 one-second jobs on a pool of 4 worker processes.

Fanned out with .start(), collected with .run(): about 5 s, not 20.  Run it twice with
SEAMLESS_CACHE set and the second run is instant (the results come from the cache).
"""

import time

import seamless
from seamless.transformer import delayed, spawn

spawn(4)  # start 4 worker processes (in the background; spawn() returns at once)


@delayed
def compute(x):
    import time

    time.sleep(1)
    return x * 2


t0 = time.perf_counter()
handles = [compute(i) for i in range(20)]
for h in handles:
    h.start()  # schedule all 20 jobs

results = [h.run() for h in handles]  # collect results (blocks until each is done)
elapsed = time.perf_counter() - t0
print("results:", results)
print(f"20 jobs of 1 s on 4 workers took {elapsed:.1f} s")
assert results == [2 * i for i in range(20)]
seamless.close()
