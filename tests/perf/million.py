"""A store of a million users: start, memory, lists, signups and disk, on either store.

    python -m tests.perf.million --finished 1000000 --waiting 10000 [--postgres] [--repeat 3]

A real server signs up two users (one verified to COMPLETED, one left
waiting for its click); their stored runs are the templates. The generator
then writes ``--finished`` copies of the first and ``--waiting`` of the
second straight into the store, each with its own ids, address and token
hashes, and their catalog entries as the engine describes them (not by
signing up a million times); on the data dir the finished ones go into the
pack, as a server leaves them, the waiting ones into run files; a copy's
token hashes are those of the links the store's key derives for it, so they
verify. It then starts the server on that store
``--repeat`` times and prints, as medians: the time from start to
``/readyz``, the RSS once ready, the first page of ``/api/workflows`` and of
``/api/users?status=ACTIVE`` (medians of 20 each), a lookup by address; then
signups at 50/s for ``--duration`` seconds (every one clicked, to COMPLETED)
against the same on an empty store, and the disk bytes per run (on the data
dir also by part: the pack, the catalog, the run files, the rest).

On the database, the finished copies carry no timeline rows (only the
document): their detail shows no timeline, as after retention.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import aiohttp
import orjson

from tests.perf.loadgen import Load, open_loop, percentile, rss_mib, start_server
from userflow.actors.definitions import Definitions
from userflow.actors.signup import SIGNUP
from userflow.actors.signup.tokens import TokenSigner, token_hash
from userflow.storage import codec
from userflow.storage.catalog import SqliteCatalog
from userflow.storage.packer import FINISHED
from userflow.storage.packs import FILE as PACK_FILE, Pack, compress
from userflow.storage.runs import FileRunStore, run_file

DESCRIBE = Definitions([SIGNUP]).describe
BATCH = 2000


def serve(data_dir: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, float]:
    started = time.perf_counter()
    proc, url = start_server(data_dir, ["--log-level", "WARNING"], env)
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return proc, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.01)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=300)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def templates(data_dir: str, env: dict[str, str]) -> tuple[str, str]:
    """The run ids of a COMPLETED and a WAITING signup, made by a real server."""
    proc, url, _ = serve(data_dir, env)
    try:
        done = post(url + "/api/signup", {"email": "tplfinished@example.com", "name": "Tem Plate"})["workflowId"]
        waiting = post(url + "/api/signup", {"email": "tplwaitings@example.com", "name": "Tem Plate"})["workflowId"]
        for run_id in (done, waiting):
            while get(f"{url}/api/workflows/{run_id}")["status"] != "WAITING":
                time.sleep(0.02)
        link = get(f"{url}/api/outbox?workflowId={done}")["emails"][0]["link"]
        post(url + "/api/verify", {"token": link.split("token=", 1)[1]})
        while get(f"{url}/api/workflows/{done}")["status"] != "COMPLETED":
            time.sleep(0.02)
    finally:
        stop(proc)
    return done, waiting


def copy_names(tag: str, n: int) -> tuple[str, str, str]:
    """The run id, user id and address of copy ``n`` of the template tagged ``tag``."""
    suffix = f"{tag}{n:020x}"
    return "wf_" + suffix, "usr_" + suffix, f"u{tag}{n:011d}@example.com"


class Copier:
    """Copies of a template run: its ids, address and token hashes replaced, lengths kept.

    A copy's token hashes are those of the tokens the store's key derives for
    it (send number k + 1 for the k-th hash, as the signup keeps them), so the
    links its emails show verify like any other."""

    def __init__(self, run: dict[str, Any], email: str, tag: str, signer: TokenSigner) -> None:
        self.run_id, self.user_id, self.email = run["id"], run["input"]["userId"], email
        self.hashes = list(run["state"].get("tokenHashes", ()))
        self.tag = tag
        self.signer = signer

    def names(self, n: int) -> tuple[str, str, str]:
        return copy_names(self.tag, n)

    def copy(self, text: str, n: int) -> str:
        run_id, user_id, email = self.names(n)
        text = text.replace(self.run_id, run_id).replace(self.user_id, user_id).replace(self.email, email)
        for k, digest in enumerate(self.hashes):
            text = text.replace(digest, token_hash(self.signer.token(run_id, k + 1)))
        return text


def stored_document(data_dir: str, run_id: str) -> str:
    """A run's document as its file holds it, wherever the store keeps it (file or pack)."""
    store = FileRunStore(data_dir, checkpoint_every=3600)
    try:
        stored = store.read(run_id)
    finally:
        store.close()
    assert stored is not None, run_id
    return orjson.dumps(codec.committed(None, stored.run, stored.timeline)).decode()


def fill_data_dir(data_dir: str, kinds: list[tuple[str, int, str]], packed: bool = True) -> None:
    """The copies, and their catalog entries; the finished ones as a server leaves them,
    packed (or, not ``packed``, as files, as an earlier release left them)."""
    templates = {template_id: stored_document(data_dir, template_id) for template_id, _, _ in kinds}
    with open(os.path.join(data_dir, "secret.key"), "rb") as handle:
        signer = TokenSigner(handle.read())
    catalog = SqliteCatalog(os.path.join(data_dir, "catalog.sqlite"))
    pack = Pack(os.path.join(data_dir, PACK_FILE))
    try:
        for template_id, count, tag in kinds:
            text = templates[template_id]
            template = codec.run_of(json.loads(text), template_id)
            copier = Copier(template, template["input"]["email"], tag, signer)
            to_pack = packed and template["status"] in FINISHED
            entries, rows = [], []
            for n in range(count):
                copy = copier.copy(text, n).encode()
                run = codec.run_of(orjson.loads(copy), "copy")
                if to_pack:
                    rows.append((run["id"], int(run["version"]), compress(copy)))
                else:
                    with open(run_file(data_dir, run["id"]), "wb") as handle:
                        handle.write(copy)
                entries.append(DESCRIBE(run))
                if len(entries) == BATCH:
                    pack.put(rows)
                    catalog.put(entries)
                    entries, rows = [], []
            pack.put(rows)
            catalog.put(entries)
        catalog.sync()
    finally:
        catalog.close()
        pack.close()
    os.sync()


def fill_database(url: str, kinds: list[tuple[str, int, str]]) -> None:
    import psycopg

    from userflow.storage.postgres.run_sql import run_row

    with psycopg.connect(url) as connection:
        (secret,) = connection.execute("SELECT value FROM secrets WHERE name = 'tokens'").fetchone()
        signer = TokenSigner(bytes(secret))
        for template_id, count, tag in kinds:
            (document,) = connection.execute("SELECT document FROM runs WHERE id = %s", (template_id,)).fetchone()
            entries = connection.execute("SELECT seq, entry FROM timeline WHERE run_id = %s", (template_id,)).fetchall()
            text = orjson.dumps(document).decode()
            copier = Copier(document, document["input"]["email"], tag, signer)
            with connection.cursor() as cursor:
                with cursor.copy(
                    "COPY runs (id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at, summary) FROM STDIN"
                ) as copy:
                    for n in range(count):
                        run = orjson.loads(copier.copy(text, n))
                        row = run_row(run)
                        copy.write_row((row["id"], row["workflow"], row["definition"], row["format"], row["status"],
                                        orjson.dumps(run).decode(), row["version"], row["wake"], row["created"], row["updated"],
                                        orjson.dumps(DESCRIBE(run).summary).decode()))  # fmt: skip
                with cursor.copy("COPY run_facets (name, value, run_id) FROM STDIN") as copy:
                    for n in range(count):
                        entry = DESCRIBE(orjson.loads(copier.copy(text, n)))
                        for name, value in entry.facets.items():
                            copy.write_row((name, value, entry.id))
                with cursor.copy("COPY lookup_keys (kind, key, run_id) FROM STDIN") as copy:
                    for n in range(count):
                        entry = DESCRIBE(orjson.loads(copier.copy(text, n)))
                        for kind, keys in entry.keys.items():
                            for key in keys:
                                copy.write_row((kind, key, entry.id))
                if document["status"] == "WAITING":  # finished copies carry no timeline (as after retention)
                    with cursor.copy("COPY timeline (run_id, seq, entry) FROM STDIN") as copy:
                        for n in range(count):
                            run_id = copier.names(n)[0]
                            for seq, entry in entries:
                                copy.write_row((run_id, seq, orjson.dumps(entry).decode()))
            connection.commit()
        connection.execute("DELETE FROM run_counts")
        connection.execute("INSERT INTO run_counts SELECT name, value, count(*) FROM run_facets GROUP BY name, value")
        connection.commit()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")


def timed(url: str, times: int = 20) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        get(url)
        took.append(time.perf_counter() - started)
    return round(statistics.median(took) * 1000, 2)


async def signups(url: str, rate: float, duration: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)) as session:
        load = Load(url, session)
        ready = asyncio.Event()
        listener = asyncio.ensure_future(load.listen(ready))
        await ready.wait()
        await open_loop(load, rate, duration, 60)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await listener
    latency = load.signup_latency
    return {"signups": len(latency), "completed": load.completed, "p50ms": percentile(latency, 0.5), "p99ms": percentile(latency, 0.99)}


def disk_bytes(data_dir: str, database_url: str | None) -> int:
    if database_url:
        import psycopg

        with psycopg.connect(database_url) as connection:
            (size,) = connection.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(size)
    return sum(disk_by_part(data_dir).values())


def disk_by_part(data_dir: str) -> dict[str, int]:
    """Bytes on disk (blocks) of the pack, the catalog, the run files and the rest."""
    parts = {"pack": 0, "catalog": 0, "runFiles": 0, "rest": 0}
    for folder, _, files in os.walk(data_dir):
        for name in files:
            if name.startswith(PACK_FILE):
                part = "pack"
            elif name.startswith("catalog.sqlite"):
                part = "catalog"
            elif os.path.relpath(folder, data_dir).split(os.sep)[0] == "runs":
                part = "runFiles"
            else:
                part = "rest"
            with contextlib.suppress(FileNotFoundError):
                parts[part] += os.stat(os.path.join(folder, name)).st_blocks * 512
    return parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL cluster (Debian's), else a new data dir")
    args = parser.parse_args()
    args.database_url = args.empty_database_url = None
    cluster = None
    if args.postgres:
        from tests.postgres import Cluster

        cluster = Cluster().create()
        args.database_url, args.empty_database_url = (cluster.url(cluster.create_database(name)) for name in ("million", "empty"))
    try:
        measure(args)
    finally:
        if cluster is not None:
            cluster.remove()


def generate(data_dir: str, database_url: str | None, finished: int, waiting: int) -> float:
    """Fill an empty store (the data dir, or the database if given) with ``finished`` and
    ``waiting`` copies of a real server's runs; the seconds it took."""
    env = {"USERFLOW_DATABASE_URL": database_url} if database_url else {}
    done, waiting_id = templates(data_dir, env)
    kinds = [(done, finished, "f"), (waiting_id, waiting, "w")]
    started = time.perf_counter()
    (fill_database(database_url, kinds) if database_url else fill_data_dir(data_dir, kinds))
    seconds = round(time.perf_counter() - started, 1)
    print(json.dumps({"generated": finished + waiting, "seconds": seconds}), flush=True)
    return seconds


def measure(args: argparse.Namespace) -> None:
    env = {"USERFLOW_DATABASE_URL": args.database_url} if args.database_url else {}
    data_dir = tempfile.mkdtemp(prefix="userflow-million-")
    generate(data_dir, args.database_url, args.finished, args.waiting)

    starts, rss, first_page, active_page, by_email, signed = [], [], [], [], [], []
    for round_no in range(args.repeat):
        proc, url, seconds = serve(data_dir, env)
        try:
            starts.append(round(seconds, 2))
            rss.append(rss_mib(proc.pid))
            first_page.append(timed(url + "/api/workflows"))
            active_page.append(timed(url + "/api/users?status=ACTIVE"))
            by_email.append(timed(url + "/api/users?q=uf00000123456%40example.com"))
            if round_no == 0:
                overview = get(url + "/api/overview")
                assert overview["runs"]["WAITING"] >= args.waiting and overview["runs"]["COMPLETED"] >= args.finished, overview["runs"]
                signed.append(asyncio.run(signups(url, args.rate, args.duration)))
        finally:
            stop(proc)
        print(json.dumps({"round": round_no, "start": starts[-1], "rss": rss[-1], "firstPageMs": first_page[-1],
                          "activePageMs": active_page[-1], "byEmailMs": by_email[-1]}), flush=True)  # fmt: skip

    empty_env = {"USERFLOW_DATABASE_URL": args.empty_database_url} if args.empty_database_url else {}
    proc, url, _ = serve(tempfile.mkdtemp(prefix="userflow-empty-"), empty_env)
    try:
        empty = asyncio.run(signups(url, args.rate, args.duration))
    finally:
        stop(proc)
    disk = disk_bytes(data_dir, args.database_url)
    print(json.dumps({
        "store": "postgres" if args.database_url else "data dir",
        "finished": args.finished, "waiting": args.waiting,
        "startToReadySeconds": statistics.median(starts), "rssMiB": statistics.median(rss),
        "firstPageWorkflowsMs": statistics.median(first_page), "firstPageActiveUsersMs": statistics.median(active_page),
        "lookupByEmailMs": statistics.median(by_email),
        "signupsAt50": signed[0], "signupsAt50EmptyStore": empty,
        "diskBytesPerRun": round(disk / (args.finished + args.waiting)),
        "diskBytes": disk if args.database_url else disk_by_part(data_dir),
    }, indent=1), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
