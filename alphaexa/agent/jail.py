"""The sandbox's launcher: sets up the isolation, then runs one untrusted program inside it.

Run as ``python -I jail.py SPEC_JSON`` by :mod:`alphaexa.agent.sandbox`, never imported by
the package (it is self-contained so that it starts in milliseconds).  Steps:

1. ``unshare`` a new network, mount and PID namespace (plus a user namespace when not
   root).  The network namespace has only a loopback interface, which is down.
2. Build a new root on a private tmpfs: the read-only paths (the Python install, system
   libraries and programs) and the scratch directory (read-write, as ``/scratch``) are
   bind-mounted into it; nothing else of the host's file system exists there.
3. Fork the namespace's init (PID 1).  It dies with this launcher (``PR_SET_PDEATHSIG``),
   and the kernel kills every process of a PID namespace when its init dies: one kill of
   the launcher ends a fork bomb's whole tree.
4. In that child: ``chroot``, resource limits, drop to an unprivileged uid/gid with no
   supplementary groups (as root), scrubbed environment, ``execve``.

The launcher reports on the status file descriptor given in the spec, as one JSON line:
``{"init_pid": N}`` (the host pid of the jail's init, the one to kill) after the fork, then
``{"setup_error": "..."}`` when the isolation cannot be established (the program never
ran), otherwise ``{"exit": N}`` or ``{"signal": N}``.
"""
import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
# os.statvfs flag bits -> mount flags that a remount of a bind mount must keep (locked in a user namespace)
STATVFS_TO_MOUNT = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                    (os.ST_NOEXEC, MS_NOEXEC))
SCRATCH = "/scratch"
DEVICES = ("null", "zero", "urandom", "random")
RLIMITS = {"cpu_s": resource.RLIMIT_CPU, "address_space": resource.RLIMIT_AS, "processes": resource.RLIMIT_NPROC,
           "open_files": resource.RLIMIT_NOFILE, "file_size": resource.RLIMIT_FSIZE}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces(as_root: bool) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | (0 if as_root else CLONE_NEWUSER)
    _check(libc.unshare(flags), "cannot create network/mount/PID namespaces (unshare)")
    if not as_root:
        # Identity map: the program keeps the caller's uid, and so holds no capability after execve.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _bind(source: str, target: str, read_only: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    kept = 0
    for statvfs_flag, mount_flag in STATVFS_TO_MOUNT:
        if os.statvfs(source).f_flag & statvfs_flag:
            kept |= mount_flag
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | kept | (MS_RDONLY if read_only else 0))


def _build_root(root: str, read_only: list[str], scratch: str) -> None:
    _mount("alphaexa-jail", root, "tmpfs", MS_NOSUID, "size=1m,mode=755")
    for path in read_only:
        inside = root + path
        os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
        if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems
            if not os.path.lexists(inside):
                os.symlink(os.readlink(path), inside)
            continue
        if os.path.isdir(path):
            os.makedirs(inside, mode=0o755, exist_ok=True)
        elif os.path.exists(path):
            open(inside, "w").close()
        else:
            continue
        _bind(path, inside, read_only=True)
    os.makedirs(root + "/dev", mode=0o755)
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    os.mkdir(root + SCRATCH, 0o755)
    _bind(scratch, root + SCRATCH, read_only=False)
    _mount(None, root, None, MS_REMOUNT | MS_NOSUID | MS_RDONLY)


def _become_program(spec: dict, error_fd: int) -> None:
    """In the namespace's init: confine, limit, drop privileges and exec; never returns."""
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.chroot(spec["root"])
        os.chdir(SCRATCH)
        for name, limit in spec["limits"].items():
            resource.setrlimit(RLIMITS[name], (limit, limit))
        if spec["as_root"]:
            os.setgroups([])
            os.setgid(spec["uid"])
            os.setuid(spec["uid"])
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except (OSError, SetupError) as e:
        os.write(error_fd, f"cannot start {spec['argv'][0]}: {e}".encode()[:2000])
    os._exit(127)


def main() -> int:
    spec = json.loads(sys.argv[1])
    status = os.fdopen(spec["status_fd"], "w")
    try:
        _enter_namespaces(spec["as_root"])
        _build_root(spec["root"], spec["read_only"], spec["scratch"])
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except (OSError, SetupError) as e:
        status.write(json.dumps({"setup_error": str(e)}) + "\n")
        return 125
    if pid == 0:
        os.close(error_r)
        status.close()
        _become_program(spec, error_w)
    status.write(json.dumps({"init_pid": pid}) + "\n")
    status.flush()
    os.close(error_w)
    exec_error = os.read(error_r, 4096).decode(errors="replace")
    _, wait_status = os.waitpid(pid, 0)
    if exec_error:
        status.write(json.dumps({"setup_error": exec_error}) + "\n")
    elif os.WIFSIGNALED(wait_status):
        status.write(json.dumps({"signal": os.WTERMSIG(wait_status)}) + "\n")
    else:
        status.write(json.dumps({"exit": os.WEXITSTATUS(wait_status)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
