"""Subprocess side of the store's cross-process tests (run as a script, never imported).

Modes:
    crash PATH THREADS      commit transitions from THREADS threads forever; print each
                            acknowledged key (after its future resolved), flushed.
    try-writer PATH         open PATH for writing; print "opened" or the error class name.
    reader PATH MIN_COUNT   open PATH read-only and check snapshots until the ``timers`` db
                            holds MIN_COUNT keys; print "ready" once open, then
                            "ok READS MAX" or "FAIL ...".
    depose PATH BYTES       open PATH as a standby, take the lease from its holder (as
                            if it had lapsed), commit BYTES of values, print "grown".
    fill PATH               as a runtime that keeps no ``recent`` index (the previous
                            release): write workflow values into PATH, one commit each,
                            until its 1 MiB map is full; print "full N".
"""

from __future__ import annotations

import sys
import threading

import lmdb

from herder.store import Put, Store, StoreError, Transition, encode


def crash(path: str, threads: int) -> None:
    store = Store(path)
    out = threading.Lock()

    def loop(tid: int) -> None:
        i = 0
        while True:
            key = f"t{tid}-{i}".encode()
            store.writer.submit(Transition((Put("workflows", key, encode({"i": i})),))).result()
            with out:
                sys.stdout.write(key.decode() + "\n")
                sys.stdout.flush()
            i += 1

    workers = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def try_writer(path: str) -> None:
    try:
        Store(path).close()
    except StoreError as exc:
        print(type(exc).__name__, flush=True)
    else:
        print("opened", flush=True)


def reader(path: str, min_count: int) -> None:
    reads = 0
    last = 0
    with Store(path, readonly=True) as store:
        print("ready", flush=True)
        while last < min_count:
            n = store.count("timers")
            if n % 2:
                print(f"FAIL odd count {n}: a pair was seen half-written", flush=True)
                return
            if n < last:
                print(f"FAIL count went back from {last} to {n}", flush=True)
                return
            timers = store.due_timers(2**62)
            steps = {(wf, step) for _, wf, step, _ in timers}
            for wf, step in steps:
                partner = "b" if step == "a" else "a"
                if (wf, partner) not in steps:
                    print(f"FAIL {wf}/{step} without {partner}", flush=True)
                    return
            if len(timers) < n:
                print(f"FAIL due_timers saw {len(timers)} < count {n}", flush=True)
                return
            last = max(n, len(timers))
            reads += 1
    print(f"ok {reads} {last}", flush=True)


def depose(path: str, size: int) -> None:
    with Store(path, standby=True) as store:
        assert store.try_take_lease(lambda _lease: True) == "expired"
        blob = encode(b"x" * 4000)
        for i in range(size // 4000):
            store.writer.submit(Transition((Put("definitions", b"%06d" % i, blob),))).result()
        print("grown", flush=True)


def fill(path: str) -> None:
    env = lmdb.open(path, max_dbs=16, map_size=1 << 20)
    workflows = env.open_db(b"workflows")
    n = 0
    try:
        while True:
            with env.begin(write=True) as txn:
                txn.put(b"old-%06d" % n, b"x" * 100, db=workflows)
            n += 1
    except lmdb.MapFullError:
        print(f"full {n}", flush=True)
    finally:
        env.close()


if __name__ == "__main__":
    mode, path, *rest = sys.argv[1:]
    if mode == "crash":
        crash(path, int(rest[0]))
    elif mode == "try-writer":
        try_writer(path)
    elif mode == "reader":
        reader(path, int(rest[0]))
    elif mode == "depose":
        depose(path, int(rest[0]))
    elif mode == "fill":
        fill(path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
