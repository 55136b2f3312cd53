"""Long fuzzing runs: python tests/fuzz/run_fuzz.py --count 100000 --seed 1 [--jobs 2] [--save DIR]

Prints the counts (tried, refused, accepted-and-correct, wrong results,
other exceptions, crashes, hangs) and saves every failing mutant with a JSON
note to --save.  Exit status 1 when anything failed.
"""
import argparse
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _part(args):
    count, seed, save = args
    import fuzzer

    return fuzzer.fuzz(count, seed, save, progress=max(1000, count // 20))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="parallel fuzzing processes")
    ap.add_argument("--save", default=None, help="folder for failing mutants")
    args = ap.parse_args(argv)
    t0 = time.time()
    per = [args.count // args.jobs + (1 if i < args.count % args.jobs else 0) for i in range(args.jobs)]
    jobs = [(n, args.seed * 1000 + i, args.save and os.path.join(args.save, f"job{i}"))
            for i, n in enumerate(per)]
    if args.jobs == 1:
        results = [_part(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_part, jobs)
    total, failures = {}, []
    for counts, fails in results:
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        failures += fails
    dt = time.time() - t0
    print(json.dumps(total))
    print(f"{total['tried']} mutants in {dt:.0f} s: {total['refused']} refused with ModelFormatError, "
          f"{total['accepted']} accepted and equal to the float64 reference, {total['wrong']} wrong "
          f"results, {total['error']} other exceptions, {total['crash']} crashes, {total['hang']} hangs")
    for f in failures[:20]:
        print(json.dumps(f)[:400])
    crashes = [f for f in failures if f["outcome"] == "crash"]
    if crashes and args.save:
        # the same files through cnnrt.load(isolate=True), as cnnrt-run, cnnrt-serve and
        # cnnrt.dask load models: each must now be refused, in this process, alive
        import glob

        import cnnrt

        refused = 0
        for path in sorted(glob.glob(os.path.join(args.save, "job*", "mutant*.h5"))):
            note = json.load(open(path[:-3] + ".json"))
            if note["outcome"] != "crash":
                continue
            try:
                cnnrt.load(path, isolate=True)
            except cnnrt.ModelFormatError as exc:
                refused += 1
                print(f"isolate=True refuses {os.path.basename(path)}: {exc}")
        print(f"crashing mutants refused by cnnrt.load(isolate=True): {refused} of {len(crashes)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
