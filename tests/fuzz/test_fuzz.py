"""A few hundred model-file mutants per CI run (the long run: tests/fuzz/run_fuzz.py)."""
import os
import signal

import pytest

import fuzzer


@pytest.mark.parametrize("seed", [11, 12])
def test_mutants_are_refused_or_correct(seed):
    counts, failures = fuzzer.fuzz(200, seed)
    assert counts["tried"] == 200
    assert not failures, failures[:5]
    assert counts["refused"] > 0 and counts["accepted"] > 0


def test_every_refusal_message_names_something(tmp_path):
    import random

    rnd = random.Random(3)
    seeds = fuzzer.write_seeds(str(tmp_path))
    seen = 0
    for i in range(60):
        path = str(tmp_path / f"m{i}.h5")
        fuzzer.mutate_file(rnd.choice(seeds), path, rnd, str(tmp_path))
        res = fuzzer.run_one(path)
        assert res["outcome"] in ("refused", "accepted"), res
        if res["outcome"] == "refused":
            seen += 1
            msg = res["message"]
            assert len(msg) > 10 and msg[0] != " "
    assert seen > 30


def test_the_harness_reports_crashes_hangs_and_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "any.h5")
    open(path, "wb").write(b"x")
    monkeypatch.setattr(fuzzer, "check_mutant", lambda p: os.kill(os.getpid(), signal.SIGSEGV))
    assert fuzzer.run_one(path)["outcome"] == "crash"
    monkeypatch.setattr(fuzzer, "check_mutant", lambda p: __import__("time").sleep(60))
    assert fuzzer.run_one(path, timeout=1)["outcome"] == "hang"

    def boom(p):
        raise KeyError("x")
    monkeypatch.setattr(fuzzer, "check_mutant", boom)
    assert fuzzer.run_one(path)["outcome"] == "error"

    def wrong(p):
        raise AssertionError("max error 1")
    monkeypatch.setattr(fuzzer, "check_mutant", wrong)
    assert fuzzer.run_one(path)["outcome"] == "wrong"
