"""Process trees started in a session of their own, found again by a tag in their
environment, stopped by process group (TERM, then KILL), and measured (PSS)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TAG = "PAR_PROCESS_TAG"  # set in the environment of every process tree started here


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (whatever its process group or session)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def tagged(tag: str | None) -> list[int]:
    """Live processes whose environment carries ``PAR_PROCESS_TAG=<tag>``: every process
    of a tree started by :func:`spawn`, also those that were re-parented to init when
    their parent died (Airflow's task commands run in sessions of their own)."""
    if not tag:
        return []
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _groups(pids: list[int] | set[int]) -> set[int]:
    out = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            out.add(os.getpgid(pid))
    return out - {os.getpgid(0)}  # never the caller's own group


def _signal_groups(pgids: set[int], sig: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def stop_tree(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop ``proc`` (started by :func:`spawn`, in a session of its own) by its process
    group, and the groups of all the processes of its tree: Airflow starts each task (and
    each BashOperator command) in a new process group, which a signal to the parent's
    group misses, and a command may outlive its parent. TERM first; KILL after ``grace``."""
    tag = getattr(proc, "par_tag", None)

    def members() -> set[int]:
        pids = set(descendants(proc.pid)) | set(tagged(tag))
        return pids | {proc.pid} if proc.poll() is None else pids

    deadline = time.time() + grace
    termed: set[int] = set()
    while (pids := members()) and time.time() < deadline:
        groups = _groups(pids) | ({proc.pid} if proc.poll() is None else set())
        _signal_groups(groups - termed, signal.SIGTERM)  # also groups that appear meanwhile
        termed |= groups
        time.sleep(0.2)
    for _ in range(100):
        pids = members()
        if not pids:
            break
        _signal_groups(_groups(pids) | ({proc.pid} if proc.poll() is None else set()), signal.SIGKILL)
        time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def spawn(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, tag: str | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), output appended to
    ``log``, its environment tagged so that :func:`stop_tree` finds its whole tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tag = tag or secrets.token_hex(8)
    with log.open("a") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**env, TAG: tag}, cwd=cwd, start_new_session=True
        )
    proc.par_tag = tag  # type: ignore[attr-defined]
    return proc


def run_group(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float, cwd: Path | None = None
) -> tuple[int, float]:
    """Run ``cmd`` in its own process group (output to ``log``); kill the whole tree on
    timeout or interruption. Returns the exit code and the wall time."""
    started = time.perf_counter()
    proc = spawn(cmd, env, log, cwd)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = -9
    finally:
        stop_tree(proc)  # whatever is left of the tree (nothing, after a clean exit)
    return code, time.perf_counter() - started


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def is_component(pid: int) -> bool:
    """A component command (``python -m components.<name>``) or the shell that runs one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if any(a.startswith("components.") for a in argv):
        return True
    return bool(argv) and Path(argv[0]).name == "bash" and "components." in " ".join(argv)


def airflow_pss_kib(roots: list[int]) -> int:
    """PSS summed over the Airflow processes under ``roots``: the roots, their
    supervisors and task runners; not the component commands the tasks run (nor the
    shells that wrap them, nor anything below those)."""
    import psutil

    total = 0
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if is_component(pid):
            continue
        total += pss_kib(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            stack += [c.pid for c in psutil.Process(pid).children()]
    return total


class MemorySampler:
    """Samples :func:`airflow_pss_kib` of some roots every ``every`` seconds in a thread."""

    def __init__(self, roots: list[int], every: float = 1.0) -> None:
        self.roots, self.every, self.samples = roots, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(airflow_pss_kib(self.roots))
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = [s for s in self.samples if s] or [0]
        return {"peak_mib": round(max(values) / 1024, 1), "mean_mib": round(sum(values) / len(values) / 1024, 1)}
