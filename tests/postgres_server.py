"""A throw-away PostgreSQL cluster (Debian's `postgresql` package) for the Prefect server tests.

Raises `PostgresUnavailable` while starting when the binaries are missing or the cluster
does not come up, so a test can skip; `.ci/run` installs the package.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_server import free_port


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed here, or its cluster would not start."""


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]))  # fmt: skip
    if not versions:
        raise PostgresUnavailable("no pg_ctl (apt-get install postgresql)")
    return Path(versions[-1]).parent


@contextmanager
def postgres_database(name: str = "prefect") -> Iterator[str]:
    """Start a cluster on a free loopback port; yield the asyncpg URL of database `name`.

    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user
    the package creates, in a folder of its own under the system temp dir.
    """
    bin_dir = _bin_dir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="tunegate-pg-"))
    port = free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)

    try:
        if as_user:
            shutil.chown(root, "postgres", "postgres")
        data, log = root / "data", root / "server.log"
        steps = (
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8"],
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", f"-p {port} -h 127.0.0.1 -k {root}", "start"],
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             name],
        )  # fmt: skip
        for step in steps:
            done = run(*step)
            if done.returncode != 0:
                tail = log.read_text()[-2000:] if log.is_file() else ""
                raise PostgresUnavailable(
                    f"{Path(step[0]).name} failed: {done.stdout}{done.stderr}{tail}"
                )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"
    finally:
        if (root / "data" / "postmaster.pid").exists():
            run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
