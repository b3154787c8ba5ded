"""Real servers on 127.0.0.1 for distributed tests and benchmarks: a throwaway PostgreSQL, a Ray head.

The test fixtures (``tests/conftest.py``) and ``benchmarks/scaling.py`` start
them the same way. Each is a context manager that yields an address and
stops what it started (only that: never ``ray stop``, which would stop
every Ray cluster on a shared machine). What the machine lacks (the
PostgreSQL binaries, a driver, the ``ray`` command) raises
:class:`Unavailable`, which tests turn into a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Unavailable", "free_port", "postgres_bin", "postgres_server", "ray_head"]


class Unavailable(RuntimeError):
    """A server cannot be started on this machine; the message says what to install."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path | None:
    """The folder of Debian's ``initdb`` and ``pg_ctl`` (or the ones on PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@contextlib.contextmanager
def postgres_server(max_connections: int = 200) -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (as user postgres or nobody when root); yields its URL.

    Raises:
        Unavailable: no PostgreSQL binaries, no SQLAlchemy driver, or root without a user to run it as.
        RuntimeError: the server did not start (with its log).
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise Unavailable("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql (.ci/run does)")
    try:
        # deferred: SQLAlchemy and the driver are needed only for a PostgreSQL storage
        import sqlalchemy

        sqlalchemy.create_engine("postgresql://postgres@127.0.0.1/postgres")  # loads the driver, connects not
    except ImportError as exc:
        raise Unavailable(f"no PostgreSQL driver for SQLAlchemy ({exc}); pip install 'vae-automl[postgres]'") from None
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if user is None:
            raise Unavailable("running as root and no postgres/nobody user to run PostgreSQL as")
    # not under a private temp dir: the server's user must reach it
    base = Path(tempfile.mkdtemp(prefix="vae-pg-"))
    os.chmod(base, 0o755)
    data = base / "data"
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    uid, gid = (user.pw_uid, user.pw_gid) if user is not None else (None, None)
    port = free_port()
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=uid,
            group=gid,
        )
        options = f"-p {port} -h 127.0.0.1 -k {base} -c max_connections={max_connections}"
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o", options, "start"],
            check=True,
            capture_output=True,
            user=uid,
            group=gid,
        )
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").is_file() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.decode()}\n{log}") from None
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            user=uid,
            group=gid,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, object_store_bytes: int | None = None) -> Iterator[str]:
    """A Ray head bound to 127.0.0.1 with ``num_cpus`` logical CPUs; yields its ``HOST:PORT``.

    ``num_cpus`` is what Ray schedules by, not the cores it has: a benchmark of trials that sleep asks for
    more than the machine holds.

    Started with ``ray start --head --block`` and stopped by terminating
    that process (it takes its Ray processes with it). Its own temp dir
    keeps ``ray.init()`` elsewhere from finding it. The head uses token
    authentication with a fresh token, as a real cluster does; the token is
    in ``RAY_AUTH_TOKEN`` (with ``RAY_AUTH_MODE=token``) while the head
    runs, so drivers started meanwhile inherit it.

    Raises:
        Unavailable: no ``ray`` command beside this Python.
        RuntimeError: the head did not start (with its log).
    """
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.is_file():
        raise Unavailable(f"no ray command beside {sys.executable}; pip install 'vae-automl[ray]'")
    temp_dir = tempfile.mkdtemp(prefix="vr")  # short: Ray's unix socket paths live under it
    port = free_port()
    token = secrets.token_hex(32)
    command = [
        str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
        "--temp-dir", temp_dir,
    ]  # fmt: skip
    if object_store_bytes is not None:  # Ray's default takes 30% of the machine's memory
        command += ["--object-store-memory", str(object_store_bytes)]
    log_path = Path(temp_dir) / "head.log"
    saved_auth = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        )
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        try:
            deadline = time.monotonic() + 180
            while "Ray runtime started" not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed: {log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield f"127.0.0.1:{port}"
        finally:
            for name, value in saved_auth.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            shutil.rmtree(temp_dir, ignore_errors=True)
