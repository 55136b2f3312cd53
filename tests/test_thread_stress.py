"""Many Python threads sharing one model: same bits as serial calls, no crash, memory stable."""
import os
import threading
import time

import numpy as np
import pytest

import cnnrt

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(os.path.dirname(HERE), "models", "digits.h5")


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("model_threads", [1, 2])
def test_shared_model_under_concurrent_callers(model_threads):
    model = cnnrt.load(DIGITS, threads=model_threads)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n,) + model.input_shape).astype(np.float32)
               for n in (1, 2, 3, 5, 8, 13, 32)]
    serial = [model.predict(x, threads=1) for x in batches]
    errors, calls = [], [0]
    lock = threading.Lock()
    stop = time.monotonic() + 3.0

    def worker(k):
        i = k
        try:
            while time.monotonic() < stop:
                j = i % len(batches)
                got = model.predict(batches[j])
                if not np.array_equal(got, serial[j]):
                    errors.append(f"thread {k}: batch {j} differs")
                    return
                i += 1
                with lock:
                    calls[0] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"thread {k}: {type(exc).__name__}: {exc}")

    def round_():
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a caller hung"

    round_()  # warm-up: arenas for every batch size and concurrency level
    before = rss_bytes()
    stop = time.monotonic() + 3.0
    round_()
    after = rss_bytes()
    assert not errors, errors[:3]
    assert calls[0] > 100
    # the arena pool is bounded: a second round of the same work does not grow memory
    assert after - before < 64 << 20, f"RSS grew by {(after - before) >> 20} MiB"
