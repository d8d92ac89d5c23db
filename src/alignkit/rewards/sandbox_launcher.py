"""The sandbox's privileged first stage: ``python -I -S sandbox_launcher.py CONFIG_JSON`` (see ``sandbox``).

Standard library only, run as its own program (never imported by the package). It unshares the namespaces,
mounts the private tmpfs, and, with a pid namespace, forks an init (pid 1 of the namespace: mounts a fresh
/proc, reaps, reports) that forks the code stage; when the init exits, the kernel kills every process left in
the namespace. The code stage sets the limits, drops to the sandbox uid and execs the interpreter on
``main.py``. Messages go through ``pipe_fd``: "E:<error>" (the jail could not be set up) or "S:<wait status>"
(how the code ended); the pipe is close-on-exec in the code stage, so the sandboxed program cannot write to it.
SIGUSR1 to the launcher SIGKILLs the init, and with it the namespace (the wall-clock timeout).

The launcher does not depend on the trainer to end a run: it arms its own deadline (``deadline_s``, an
ITIMER_REAL; at expiry the init is SIGKILLed) and asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG);
the init asks the same of the launcher, so killing the trainer mid-run takes the namespace down. The code
stage, after dropping to the sandbox uid, sets PR_SET_PDEATHSIG again (a uid change clears it) and installs a
seccomp filter (``seccomp``) that fails ``unshare``, ``setns`` and namespace-creating ``clone`` with EPERM and
``clone3`` with ENOSYS (glibc falls back to ``clone``), so the code cannot create user (or any) namespaces.
Without a pid namespace the launcher execs into the code: the deadline and parent-death signal then live in
the code's own process, and the code could clear them (the trainer's wall clock and RLIMIT_CPU remain).
"""

import ctypes
import json
import os
import platform
import resource
import select
import signal
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 1 << 14, 1 << 18
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
# namespace flags clone(2) accepts in its flags word (CLONE_NEWTIME shares bits with the exit signal there)
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# (audit arch, clone, unshare, setns, clone3) per machine
SYSCALLS = {"x86_64": (0xC000003E, 56, 272, 308, 435), "aarch64": (0xC00000B7, 220, 97, 268, 435)}
EPERM, ENOSYS = 1, 38


def seccomp_program() -> bytes:
    """A classic-BPF seccomp filter: namespace creation fails (EPERM; clone3 ENOSYS); all else is allowed.
    Another ABI (i386, x32) gets ENOSYS for every call, so it cannot be used to slip past the numbers."""
    arch, nr_clone, nr_unshare, nr_setns, nr_clone3 = SYSCALLS[platform.machine()]
    ld_w, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, errno_ = 0x7FFF0000, 0x00050000
    prog = [
        (ld_w, 0, 0, 4),                          # 0: A = arch
        (jeq, 1, 0, arch),                        # 1: native arch -> 3
        (ret, 0, 0, errno_ | ENOSYS),             # 2: other ABI
        (ld_w, 0, 0, 0),                          # 3: A = nr
        (0x35, 0, 1, 0x40000000),                 # 4: jge x32 bit -> 5 else 6
        (ret, 0, 0, errno_ | ENOSYS),             # 5
        (jeq, 6, 0, nr_unshare),                  # 6: -> 13
        (jeq, 5, 0, nr_setns),                    # 7: -> 13
        (jeq, 5, 0, nr_clone3),                   # 8: -> 14
        (jeq, 0, 2, nr_clone),                    # 9: clone -> 10, else -> 12
        (ld_w, 0, 0, 16),                         # 10: A = low word of args[0] (clone flags)
        (jset, 1, 0, CLONE_NS_FLAGS),             # 11: any namespace flag -> 13
        (ret, 0, 0, allow),                       # 12
        (ret, 0, 0, errno_ | EPERM),              # 13
        (ret, 0, 0, errno_ | ENOSYS),             # 14
    ]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


class Launcher:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.pipe = cfg["pipe_fd"]
        self.libc = ctypes.CDLL(None, use_errno=True)

    def say(self, message: str) -> None:
        os.write(self.pipe, (message.replace("\n", " ") + "\n").encode("utf-8", "replace"))

    def fail(self, what: str) -> None:
        self.say("E:" + what)
        os._exit(127)

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            self.fail(f"{what}: {os.strerror(ctypes.get_errno())}")

    def mount(self, source: bytes, target: str, fstype: bytes | None, flags: int, options: bytes | None) -> None:
        self.check(self.libc.mount(source, target.encode(), fstype, flags, options), f"mount {target}")

    def die_with_parent(self) -> None:
        self.check(self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")

    def install_seccomp(self) -> None:
        prog = seccomp_program()
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
        self.check(self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0),
                   "prctl(PR_SET_SECCOMP)")

    def run(self) -> None:
        cfg = self.cfg
        self.die_with_parent()
        if os.getppid() != cfg["parent_pid"]:  # the trainer died before the line above
            self.fail("the trainer exited before the launcher started")
        with open(cfg["code_path"], "rb") as f:
            code = f.read()
        if cfg["unshare"]:
            self.check(self.libc.unshare(cfg["unshare"]), "unshare")
        if cfg["private_tmp"]:
            self.mount(b"none", "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates to the host
            for path, mb, mode in cfg["tmpfs"]:
                self.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=%dm,mode=%o" % (mb, mode))
            for path in cfg["mkdirs"]:  # e.g. /run/lock inside the fresh /run
                os.makedirs(path, exist_ok=True)
                os.chmod(path, 0o1777)
            for path in cfg["hide"]:
                self.mount(b"tmpfs", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=755")
        if cfg["unshare"] & CLONE_NEWPID:
            init = 0

            def kill_namespace(*_: object) -> None:
                if init > 0:
                    os.kill(init, signal.SIGKILL)

            signal.signal(signal.SIGUSR1, kill_namespace)
            signal.signal(signal.SIGALRM, kill_namespace)
            signal.setitimer(signal.ITIMER_REAL, cfg["deadline_s"])  # our own deadline, trainer or not
            alive_r, alive_w = os.pipe()  # the init sees EOF here once the launcher is gone
            init = os.fork()
            if init == 0:
                os.close(alive_w)
                self.init_stage(code, alive_r)
            os.close(alive_r)
            os.waitpid(init, 0)
            os._exit(0)
        signal.setitimer(signal.ITIMER_REAL, cfg["deadline_s"])  # kept across exec: SIGALRM ends the code
        self.code_stage(code)

    def init_stage(self, code: bytes, alive_fd: int) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.die_with_parent()
        if select.select([alive_fd], [], [], 0)[0]:  # EOF: the launcher died before the line above
            self.fail("the launcher exited before the init started")
        os.close(alive_fd)
        if self.cfg["private_tmp"]:
            self.mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        child = os.fork()
        if child == 0:
            self.code_stage(code)
        while True:
            pid, status = os.wait()
            if pid == child:
                self.say(f"S:{status}")
                os._exit(0)

    def code_stage(self, code: bytes) -> None:
        cfg, uid, work = self.cfg, self.cfg["uid"], self.cfg["workdir"]
        if cfg["private_tmp"]:
            os.mkdir(work, 0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        with open(os.path.join(work, "main.py"), "wb") as f:
            f.write(code)
        os.chdir(work)
        for name, value in cfg["limits"]:
            resource.setrlimit(getattr(resource, name), tuple(value))
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        self.check(self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        self.die_with_parent()  # after the uid change, which clears it
        if cfg["seccomp"]:
            self.install_seccomp()
        os.set_inheritable(self.pipe, False)
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-B", "main.py"], {"PATH": cfg["path"]})


def main() -> None:
    launcher = Launcher(json.loads(sys.argv[1]))
    try:
        launcher.run()
    except BaseException as e:  # in any stage: report, never fall through into the caller's code path
        launcher.fail(f"launcher: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
