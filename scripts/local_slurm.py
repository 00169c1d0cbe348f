#!/usr/bin/env python3
"""A single-node SLURM cluster on this machine: what the SLURM tests submit to, and a place to try sweeps.

    python scripts/local_slurm.py install             # slurm-wlm + munge from apt (root; ~10 s once)
    eval "$(python scripts/local_slurm.py start)"     # munged, slurmctld, slurmd; exports SLURM_CONF, PATH
    python scripts/local_slurm.py status              # daemons alive and the node's state; exit 1 if not up
    python scripts/local_slurm.py stop                # cancels every job, then stops the daemons

`start` always begins from a fresh state dir (`--state-dir`, default /tmp/seglab-slurm): its own munge
key and socket, a generated slurm.conf, logs. It needs no systemd, cgroups or accounting database and
changes nothing outside the state dir (`install` adds the OS packages). Where SLURM cannot run here
(not root, no apt-get, a daemon that does not come up) it exits 2 with one line, `seglab: error: ...`,
saying why; the tests skip with that line. Standard library only: `make test` installs before the
virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_STATE_DIR = Path("/tmp/seglab-slurm")
PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sacct")  # fmt: skip
DAEMONS = ("munged", "slurmctld", "slurmd")
# Lightning's SLURMEnvironment sends every rank to the first node *by name*: it must resolve
# without DNS, and the daemons talk over loopback.
NODE_NAME, NODE_ADDR = "localhost", "127.0.0.1"
PARTITION = "debug"
MEMORY_SHARE = 0.9  # slurmd drains a node configured with more memory than it finds
START_TIMEOUT_S = 30.0
# sacct needs an accounting database, which this cluster does not run; submitit polls job states
# with sacct, so the state dir's bin/sacct (first on PATH) reads the job completion log instead.
SACCT_WRAPPER = """#!/bin/sh
# This cluster keeps no accounting database: finished jobs are read from its completion log.
exec {sacct} --completion "$@"
"""


class CannotStart(Exception):
    """SLURM cannot be installed or started here; the message says why."""


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured, never raising on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def program(name: str) -> str | None:
    """The path of a program on PATH or in /usr/sbin, /sbin (where a user's PATH often stops short)."""
    return shutil.which(
        name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )


def missing_programs() -> list[str]:
    """The programs of slurm-wlm and munge not found."""
    return [name for name in PROGRAMS if program(name) is None]


def require_root(what: str) -> None:
    """Raise CannotStart unless this process runs as root."""
    if os.geteuid() != 0:
        raise CannotStart(f"{what} needs root (uid 0); this process runs as uid {os.geteuid()}")


def install() -> None:
    """Install slurm-wlm and munge with apt-get where any of their programs is missing."""
    missing = missing_programs()
    if not missing:
        print("slurm-wlm and munge are installed")
        return
    require_root(f"installing {' and '.join(PACKAGES)} (missing: {', '.join(missing)})")
    if shutil.which("apt-get") is None:
        raise CannotStart(
            f"no apt-get to install {' and '.join(PACKAGES)} (missing: {', '.join(missing)}); "
            "install SLURM and munge with this system's package manager"
        )
    with services_not_started():
        result = apt_install()
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            run(["apt-get", "update", "-q"])
            result = apt_install()
    if result.returncode != 0 or missing_programs():
        raise CannotStart(
            f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-600:]}"
        )
    print(f"installed {' '.join(PACKAGES)}")


def apt_install() -> subprocess.CompletedProcess:
    """`apt-get install --no-install-recommends slurm-wlm munge`, non-interactive."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    return run(argv, env=env)


class services_not_started:
    """Context: packages' install scripts start no system daemons (a policy-rc.d that denies them).

    Without systemd, invoke-rc.d would start the distribution's munged and slurmd services, which
    would outlive the install and hold SLURM's default ports.
    """

    POLICY = Path("/usr/sbin/policy-rc.d")

    def __enter__(self) -> None:
        self.created = not self.POLICY.exists()
        if self.created:
            self.POLICY.write_text("#!/bin/sh\nexit 101\n")
            self.POLICY.chmod(0o755)

    def __exit__(self, *exc: object) -> None:
        if self.created:
            self.POLICY.unlink(missing_ok=True)


def hardware_node() -> dict[str, str]:
    """This machine's CPU layout and memory as slurmd detects them (`slurmd -C`).

    Not `nproc`: it obeys OMP_NUM_THREADS, and a node registered with fewer CPUs than it has
    leaves a job asking for more pending forever.
    """
    result = run([program("slurmd") or "slurmd", "-C"])
    first_line = result.stdout.splitlines()[0] if result.stdout else ""
    fields = dict(item.split("=", 1) for item in first_line.split() if "=" in item)
    if result.returncode != 0 or "CPUs" not in fields:
        raise CannotStart(
            f"`slurmd -C` did not describe this machine: {result.stderr.strip()[-300:]}"
        )
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    node = {key: fields[key] for key in keep if key in fields}
    node["RealMemory"] = str(int(int(fields["RealMemory"]) * MEMORY_SHARE))
    return node


def free_port() -> int:
    """A TCP port nothing listens on now (two clusters on one machine do not collide)."""
    with socket.socket() as probe:
        probe.bind((NODE_ADDR, 0))
        return probe.getsockname()[1]


def slurm_conf(state: Path, node: dict[str, str]) -> str:
    """slurm.conf for one node at 127.0.0.1: no cgroups, no accounting, fast requeue."""
    cpus = int(node["CPUs"])
    node_line = " ".join(f"{key}={value}" for key, value in node.items())
    lines = [
        "ClusterName=seglab",
        # slurmctld checks that it runs on the host this line names
        f"SlurmctldHost={socket.gethostname().split('.')[0]}({NODE_ADDR})",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # a requeued job may start again once its old credential expires: 5 s instead of 120 s
        f"AuthInfo=socket={state}/munge/munge.socket.2,cred_expire=5",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={state}/spool",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmctldLogFile={state}/log/slurmctld.log",
        f"SlurmdLogFile={state}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={state}/log/jobcomp.log",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SchedulerType=sched/builtin",
        # pending jobs (a requeued one whose begin time has come) are looked at every 2 s, not 60 s
        "SchedulerParameters=sched_interval=2",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        # a job that asks no memory gets its CPUs' share, not the whole node
        f"DefMemPerCPU={int(node['RealMemory']) // cpus}",
        "ReturnToService=2",
        f"NodeName={NODE_NAME} NodeAddr={NODE_ADDR} {node_line} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def check_traversable(folder: Path) -> None:
    """munged refuses a socket dir that not everyone can enter: check it and every dir above it."""
    for path in [folder, *folder.parents]:
        if not path.stat().st_mode & 0o001:
            raise CannotStart(
                f"{path} is not traversable by all users (mode {path.stat().st_mode & 0o777:o}); munged "
                f"refuses a socket dir below it: choose a --state-dir under /tmp"
            )


def start_daemon(state: Path, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start one daemon in its own session, output to log/<name>.out; its pid goes to pids/<name>."""
    with (state / "log" / f"{name}.out").open("w") as out:
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (state / "pids" / name).write_text(str(process.pid))
    return process.pid


def wait_until(
    ready: Callable[[], bool], what: str, state: Path, timeout: float = START_TIMEOUT_S
) -> None:
    """Poll `ready` until true; raise CannotStart with the daemons' output after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise CannotStart(f"{what} within {timeout:.0f} s; {log_tails(state)}")
        time.sleep(0.2)


def log_tails(state: Path) -> str:
    """The last lines each daemon printed, for an error message."""
    parts = []
    for log in sorted((state / "log").glob("*.out")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        parts.append(f"{log.name}: " + " | ".join(lines[-3:]))
    return "; ".join(parts) or "no daemon output"


def cluster_env(state: Path) -> dict[str, str]:
    """The variables SLURM's commands (and submitit) need to use this cluster."""
    path = os.environ.get("PATH", "")
    bin_dir = str(state / "bin")
    if path.split(os.pathsep)[0] != bin_dir:
        path = os.pathsep.join([bin_dir, path])
    return {"SLURM_CONF": str(state / "slurm.conf"), "PATH": path}


def node_state(env: dict[str, str]) -> str:
    """The node's state as sinfo reports it ('' while slurmctld does not answer)."""
    result = run(["sinfo", "--noheader", "--Node", "--format=%T"], env=env, timeout=10)
    return result.stdout.strip() if result.returncode == 0 else ""


def start(state: Path) -> dict[str, str]:
    """Start munged, slurmctld and slurmd from a fresh `state` dir; return the cluster's variables."""
    require_root("a local SLURM (its daemons run as root)")
    missing = missing_programs()
    if missing:
        raise CannotStart(
            f"not installed: {', '.join(missing)}; run `python {sys.argv[0]} install`"
        )
    state.parent.mkdir(parents=True, exist_ok=True)
    check_traversable(state.parent)
    stop(state, quiet=True)
    shutil.rmtree(state, ignore_errors=True)
    for sub in ("munge", "ctld", "spool", "log", "pids", "bin"):
        (state / sub).mkdir(parents=True)
        (state / sub).chmod(0o755)  # whatever the umask: munged checks its socket dir
    state.chmod(0o755)
    env = {**os.environ, **cluster_env(state)}
    try:
        launch(state, env)
    except CannotStart:
        stop(state, quiet=True)
        raise
    return cluster_env(state)


def launch(state: Path, env: dict[str, str]) -> None:
    """Write the key and config, start the three daemons and wait for an idle node."""
    munge = state / "munge"
    # a key of our own: munged refuses one not owned by the user it runs as (the package's is munge's)
    key = run([program("mungekey") or "mungekey", "--create", f"--keyfile={munge}/munge.key"])
    if key.returncode != 0:
        raise CannotStart(f"mungekey failed: {key.stderr.strip()}")
    start_daemon(state, "munged", [
        program("munged") or "munged", "--foreground", f"--key-file={munge}/munge.key", f"--socket={munge}/munge.socket.2",
        f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed", f"--log-file={state}/log/munged.log",
    ], env)  # fmt: skip
    wait_until((munge / "munge.socket.2").exists, "munged did not open its socket", state)
    (state / "slurm.conf").write_text(slurm_conf(state, hardware_node()))
    sacct = shutil.which("sacct", path="/usr/bin:/usr/local/bin") or "sacct"
    wrapper = state / "bin" / "sacct"
    wrapper.write_text(SACCT_WRAPPER.format(sacct=sacct))
    wrapper.chmod(0o755)
    start_daemon(state, "slurmctld", [program("slurmctld") or "slurmctld", "-D", "-i"], env)
    start_daemon(state, "slurmd", [program("slurmd") or "slurmd", "-D", "-N", NODE_NAME], env)
    wait_until(lambda: node_state(env) == "idle", "the node did not become idle", state)


def daemon_pids(state: Path) -> dict[str, int]:
    """The daemons this state dir started that are still alive (checked by their command line)."""
    alive = {}
    for name in DAEMONS:
        pid_file = state / "pids" / name
        try:
            pid = int(pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue
        if Path(command.decode()).name == name:
            alive[name] = pid
    return alive


def stop(state: Path, quiet: bool = False) -> None:
    """Cancel every job of this cluster, then stop its daemons (SIGTERM, SIGKILL after 10 s)."""
    alive = daemon_pids(state)
    if not alive:
        if not quiet:
            print(f"no SLURM daemons of {state} are running")
        return
    if "slurmctld" in alive:
        cancel_all_jobs({**os.environ, **cluster_env(state)})
    for name in ("slurmd", "slurmctld", "munged"):  # the node first: jobs end before the controller
        if name in alive:
            end_process(alive[name])
    if not quiet:
        print(f"stopped {', '.join(alive)} of {state}")


def cancel_all_jobs(env: dict[str, str], timeout: float = 30.0) -> None:
    """scancel every job and wait (up to `timeout`) until the queue is empty."""
    jobs = run(["squeue", "--noheader", "--format=%A"], env=env, timeout=10).stdout.split()
    if jobs:
        run(["scancel", *jobs], env=env, timeout=10)
    deadline = time.monotonic() + timeout
    while jobs and time.monotonic() < deadline:
        time.sleep(0.5)
        jobs = run(["squeue", "--noheader", "--format=%A"], env=env, timeout=10).stdout.split()


def end_process(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads (each daemon has its own session); SIGKILL after `grace` s."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return
            time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def status(state: Path) -> int:
    """Print which daemons run and the node's state; 0 when the node takes jobs."""
    alive = daemon_pids(state)
    node = node_state({**os.environ, **cluster_env(state)}) if "slurmctld" in alive else ""
    print(f"state dir {state}: daemons {', '.join(alive) or 'none'}; node {node or 'unreachable'}")
    up = set(alive) == set(DAEMONS) and node.rstrip("*") in ("idle", "mixed", "allocated")
    return 0 if up else 1


def main(argv: list[str] | None = None) -> int:
    """Command line: install | start | stop | status | env."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("install", "start", "stop", "status", "env"))
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}"
    )
    args = parser.parse_args(argv)
    state = args.state_dir.absolute()
    try:
        if args.command == "install":
            install()
        elif args.command == "start":
            print_exports(start(state))
        elif args.command == "stop":
            stop(state)
        elif args.command == "status":
            return status(state)
        else:
            print_exports(cluster_env(state))
    except CannotStart as reason:
        print(f"seglab: error: {reason}", file=sys.stderr)
        return 2
    return 0


def print_exports(env: dict[str, str]) -> None:
    """`export KEY=value` lines a shell can eval."""
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main())
