"""The sandbox's privileged first stage: ``python -I -S sandbox_launcher.py CONFIG_JSON`` (see ``sandbox``).

Standard library only, run as its own program (never imported by the package). It unshares the namespaces,
mounts the private tmpfs, and, with a pid namespace, forks an init (pid 1 of the namespace: mounts a fresh
/proc, reaps, reports) that forks the code stage; when the init exits, the kernel kills every process left in
the namespace. The code stage sets the limits, drops to the sandbox uid and execs the interpreter on
``main.py``. Messages go through ``pipe_fd``: "E:<error>" (the jail could not be set up) or "S:<wait status>"
(how the code ended); the pipe is close-on-exec in the code stage, so the sandboxed program cannot write to it.
SIGUSR1 to the launcher SIGKILLs the init, and with it the namespace (the wall-clock timeout).
"""

import ctypes
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 1 << 14, 1 << 18
CLONE_NEWPID = 0x20000000
PR_SET_NO_NEW_PRIVS = 38


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

    def run(self) -> None:
        cfg = self.cfg
        with open(cfg["code_path"], "rb") as f:
            code = f.read()
        if cfg["unshare"]:
            self.check(self.libc.unshare(cfg["unshare"]), "unshare")
        if cfg["private_tmp"]:
            self.mount(b"none", "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates to the host
            for path, mb in cfg["tmpfs"]:
                self.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=%dm,mode=1777" % mb)
            for path in cfg["hide"]:
                self.mount(b"tmpfs", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=755")
        if cfg["unshare"] & CLONE_NEWPID:
            init = 0

            def kill_namespace(*_: object) -> None:
                if init > 0:
                    os.kill(init, signal.SIGKILL)

            signal.signal(signal.SIGUSR1, kill_namespace)
            init = os.fork()
            if init == 0:
                self.init_stage(code)
            os.waitpid(init, 0)
            os._exit(0)
        self.code_stage(code)

    def init_stage(self, code: bytes) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
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
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        self.check(self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
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
