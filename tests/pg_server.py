"""A throwaway PostgreSQL server for tests and benchmarks, started from the installed binaries.

`PgServer` runs `initdb` into a fresh directory and then `postgres` in the foreground on a free
loopback port, with its Unix socket in the same directory. PostgreSQL refuses to run as root, so
as root the directory is handed to an unprivileged user (`postgres`, which Debian's package
creates, else `nobody`) and both programs run as that user (`subprocess` with `user=`/`group=`;
no `su` or `runuser` needed). `stop()` shuts the server down and deletes the directory; it runs
at the end of the test session and, as a backstop, at interpreter exit.

Binaries are looked up in `$DPFLOWS_PG_BINDIR`, then `/usr/lib/postgresql/<newest>/bin`, then
next to `initdb` on PATH. `find_bindir()` returns None when there are none; the fixtures turn
that into a loud failure under CI (`CI=true`) and a skip elsewhere.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

SUPERUSER = "postgres"  # the database role initdb creates; not the OS user
_UNPRIVILEGED_USERS = ("postgres", "nobody")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def find_bindir() -> Path | None:
    """The directory holding both `initdb` and `postgres`, or None."""
    candidates: list[Path] = []
    if env := os.environ.get("DPFLOWS_PG_BINDIR"):
        candidates.append(Path(env))
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key,
                                                  reverse=True)]
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServerError(RuntimeError):
    """The server could not be set up; the message says which step failed and shows its output."""


class PgServer:
    """One PostgreSQL cluster in a temporary directory, reachable at 127.0.0.1:`port`."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable  # False: fsync off, for fast tests; True: the server's defaults, for benchmarks
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 60.0) -> PgServer:
        self._run_as = self._pick_user()
        self.root = Path(tempfile.mkdtemp(prefix="dpflows-pg-"))
        atexit.register(self.stop)
        try:
            self._chown(self.root)
            data = self.root / "data"
            self._run([str(self.bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                       "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"], "initdb")
            for _attempt in range(3):  # a free port can be taken before the server binds it
                self.port = _free_port()
                if self._start_postgres(data, timeout_s):
                    return self
            raise PgServerError(f"postgres did not start on a free port after 3 tries:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self, data: Path, timeout_s: float) -> bool:
        assert self.root is not None
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.root),
            "max_connections": "200", "shared_buffers": "32MB", "logging_collector": "off",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [str(self.bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = open(self.root / "server.log", "ab")  # the child keeps its own copy of the fd
        try:
            # Same process group as the tests: a Ctrl-C reaches the server too (SIGINT: fast shutdown).
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          **self._user_kwargs())
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if "could not bind" in self.log_tail() or "Address already in use" in self.log_tail():
                    return False
                raise PgServerError(f"postgres exited with code {self._proc.returncode}:\n{self.log_tail()}")
            if self._accepts_connections():
                return True
            time.sleep(0.1)
        raise PgServerError(f"postgres did not accept connections within {timeout_s:.0f}s:\n{self.log_tail()}")

    def _accepts_connections(self) -> bool:
        """Asked through our own Unix socket, so another server that grabbed the port can't answer.

        The postmaster creates its TCP socket before its Unix socket, so this also means the port is ours.
        """
        import psycopg

        try:
            with psycopg.connect(host=str(self.root), port=self.port, user=SUPERUSER, dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it hangs, then delete the directory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # the server's children exit when they see the postmaster gone
                proc.wait(timeout=10)
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        atexit.unregister(self.stop)

    def log_tail(self, lines: int = 30) -> str:
        if self.root is None or not (self.root / "server.log").exists():
            return "(no server log)"
        return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])

    # -- databases ----------------------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: t_ and hex digits
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- running as an unprivileged user ---------------------------------------------------

    @staticmethod
    def _pick_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None  # already unprivileged: run as ourselves
        for name in _UNPRIVILEGED_USERS:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise PgServerError(
            f"running as root and none of the users {_UNPRIVILEGED_USERS} exists to run PostgreSQL as "
            "(initdb and postgres refuse root); create one, e.g. `useradd --system postgres`"
        )

    def _user_kwargs(self) -> dict[str, object]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.root), "USER": self._run_as.pw_name,
                        "LOGNAME": self._run_as.pw_name}}

    def _chown(self, path: Path) -> None:
        if self._run_as is None:
            return
        os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        # The user must also be able to reach the directory (a private TMPDIR would stop it).
        probe = subprocess.run(["test", "-w", str(path)], check=False, **self._user_kwargs())
        if probe.returncode != 0:
            raise PgServerError(
                f"user {self._run_as.pw_name!r} cannot write to {path}; point TMPDIR to a directory every user "
                "can traverse (e.g. /tmp)"
            )

    def _run(self, argv: list[str], step: str) -> None:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=120, **self._user_kwargs())
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).decode(errors="replace")
            raise PgServerError(f"{step} failed with code {proc.returncode}:\n{output[-3000:]}")
