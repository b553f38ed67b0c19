#!/usr/bin/env python3
"""Peer measurement for the scheduler benchmark: how long APScheduler 3 takes to start
N jobs that are all due in the same second, with its SQLAlchemyJobStore on PostgreSQL.

What is measured: a BackgroundScheduler with one SQLAlchemyJobStore (a fresh database of
its own on the given server) and the standard ThreadPoolExecutor holds N one-off jobs
(DateTrigger) whose next_run_time is the same whole second T. Each job is a no-op that
records time.time() when it starts. drain_s is the time from T until the last job
started; p50/p99/max are the jobs' lateness (start - T).

What is not measured: storing the jobs. They are written while the scheduler is paused,
in one multi-row INSERT into the job store's own table, with exactly the row the job
store's add_job() writes (id, next_run_time, pickled Job state); add_job() itself costs
one transaction per job, which for 10,000 jobs would take longer than the lead and
would say nothing about firing. T is chosen so that at least --lead-s seconds remain
after storing; then the scheduler resumes, asks the store for its next run time and
sleeps until T like any idle APScheduler. Firing goes through the unmodified APScheduler
path: one SELECT of all due jobs, then per job: submit to the executor and, since a
DateTrigger fires once, remove_job() (a DELETE in its own transaction). That commit per
job, each waiting for PostgreSQL's WAL flush, is where the drain's time goes, so the
result follows the disk's fsync latency (and whatever else is writing to it).

Executor: ThreadPoolExecutor(10), APScheduler's default. The jobs are no-ops, so a
bigger pool cannot make them run sooner: the single scheduler thread that submits jobs
and deletes their rows is the bottleneck, and more Python threads would only contend
for the GIL. (--pool-size changes it, to check that claim: 20 threads drained 10,000
jobs in 9.5 s against 9.1 s with 10 in back-to-back runs.)

misfire_grace_time=3600 and coalesce=False so that no job is dropped however late;
the script exits non-zero unless every job ran exactly once.

Output: one line of JSON on stdout; logging and progress go to stderr. The database
(bench_aps_<random>) is dropped at the end whatever happens.

Usage: apscheduler_drain.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
           [--jobs 10000] [--lead-s 3] [--pool-size 10] [--timeout-s 600]
"""

import argparse
import json
import logging
import math
import pickle
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

log = logging.getLogger("apscheduler_drain")

# (job number, time.time() at start) per run; the lock keeps the "all done" check exact.
_starts = []
_starts_lock = threading.Lock()
_all_started = threading.Event()
_expected = 0


def record(n):
    """The job: note when it started. Top level so that the job store can pickle a
    reference to it."""
    t = time.time()
    with _starts_lock:
        _starts.append((n, t))
        if len(_starts) >= _expected:
            _all_started.set()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def store_jobs(scheduler, store, jobs, fire_at):
    """Writes the jobs as SQLAlchemyJobStore.add_job() would, but in one transaction."""
    fire_ts = datetime_to_utc_timestamp(fire_at)
    rows = []
    for n in range(jobs):
        # The same keyword arguments BaseScheduler.add_job() builds, with every default given.
        job = Job(
            scheduler,
            id=f"job-{n}",
            name="record",
            func=record,
            args=(n,),
            kwargs={},
            trigger=DateTrigger(run_date=fire_at),
            executor="default",
            misfire_grace_time=3600,
            coalesce=False,
            max_instances=1,
            next_run_time=fire_at,
        )
        state = pickle.dumps(job.__getstate__(), store.pickle_protocol)
        rows.append({"id": job.id, "next_run_time": fire_ts, "job_state": state})
    with store.engine.begin() as conn:
        conn.execute(store.jobs_t.insert(), rows)


def measure(db_url, jobs, lead_s, pool_size, timeout_s):
    global _expected
    _expected = jobs
    problems = Counter()

    def on_problem(event):
        problems[event.code] += 1

    store = SQLAlchemyJobStore(url=db_url)
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(pool_size)},
        job_defaults={"misfire_grace_time": 3600, "coalesce": False},
        timezone=UTC,
    )
    scheduler.add_listener(on_problem, EVENT_JOB_MISSED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)
    # Paused: creates the table and the scheduler thread, but processes no jobs yet.
    scheduler.start(paused=True)
    try:
        # Storing 10k rows takes well under a second; allow 100 us a job plus half a second,
        # then round up to a whole second.
        fire_ts = math.ceil(time.time() + lead_s + 0.5 + jobs * 100e-6)
        fire_at = datetime.fromtimestamp(fire_ts, UTC)
        t0 = time.time()
        store_jobs(scheduler, store, jobs, fire_at)
        stored = time.time()
        log.info("stored %d jobs in %.2f s; T is %.2f s away", jobs, stored - t0, fire_ts - stored)
        if fire_ts - stored < lead_s:
            raise RuntimeError(
                f"storing took {stored - t0:.1f} s, leaving less than --lead-s before T"
            )
        scheduler.resume()
        if not _all_started.wait(timeout=fire_ts - time.time() + timeout_s):
            raise RuntimeError(
                f"only {len(_starts)} of {jobs} jobs started within {timeout_s} s after T"
            )
    finally:
        scheduler.shutdown(wait=True)

    with _starts_lock:
        starts = list(_starts)
    runs = Counter(n for n, _ in starts)
    if len(starts) != jobs or set(runs) != set(range(jobs)) or problems:
        twice = sum(1 for c in runs.values() if c > 1)
        raise RuntimeError(
            f"{len(starts)} runs of {len(runs)} distinct jobs (expected {jobs} each once; "
            f"{twice} ran more than once); missed/error/max-instances events: {dict(problems)}"
        )
    lateness = sorted(t - fire_ts for _, t in starts)
    return {
        "peer": f"APScheduler {version('APScheduler')} + SQLAlchemyJobStore (PostgreSQL)",
        "jobs": jobs,
        "drain_s": round(lateness[-1], 4),
        "p50_ms": round(percentile(lateness, 50) * 1000, 2),
        "p99_ms": round(percentile(lateness, 99) * 1000, 2),
        "max_ms": round(lateness[-1] * 1000, 2),
        "executor": f"ThreadPoolExecutor({pool_size})",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="admin URL on the server to use")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--lead-s", type=float, default=3.0, help="seconds from all jobs stored to T"
    )
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up this long after T")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    log.setLevel(logging.INFO)
    # A SIGTERM (e.g. from a killed benchmark) unwinds through the finally that drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    admin_url = make_url(args.database_url)
    if admin_url.drivername in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql:// URL; we ship psycopg2.
        admin_url = admin_url.set(drivername="postgresql+psycopg2")
    db_name = f"bench_aps_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        try:
            result = measure(
                admin_url.set(database=db_name),
                args.jobs,
                args.lead_s,
                args.pool_size,
                args.timeout_s,
            )
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    except Exception as e:  # noqa: BLE001 - reported on stderr, exit code says it failed
        log.error("%s", e)
        return 1
    finally:
        admin.dispose()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
