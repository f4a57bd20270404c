"""The supervisor of one flow run's process, so that its exit status outlives the agent.

The agent runs this file by its path (not as part of the package: it imports nothing of
the agent and nothing outside the standard library, and starts in ~15 ms) as the leader
of the run's new session:

    python -I -S shim.py CTL STATUS RELAY RECORD -- COMMAND...

1. It waits for "go" on the CTL pipe: by then the agent has written the run's record (our
   pid and create time), so the exit status always has a record to land in. EOF instead
   means the agent died first: the command is not started and the record is removed.
2. It starts COMMAND as its child in its own process group, with the signal dispositions
   and mask the agent's own child would have had, and answers on the STATUS pipe: "ok", or
   "E<errno>" when the command could not be started (the agent raises its launch error).
   A warm start (zygote.py) forked the command already, as a Prefect engine waiting in
   this session; RELAY "1,PID,GO,OUT" names it, and "go" on GO is what starts it.
3. Only then does it ignore SIGTERM and SIGINT: a kill of the group reaches the command,
   and the shim lives on to record how it ended. SIGKILL to the group ends both (an agent
   that is alive then sees -9 from the shim, as it would from the command).
4. With RELAY "1" it copies the command's output to its stdout, the agent's pipe. When the
   agent is gone it keeps reading and drops the output, so a flow that prints does not die
   of a broken pipe; it keeps the last lines for the record.
5. It writes the exit status (a negative signal number for a signal) into RECORD atomically
   and exits the same way: the same code, or the same signal re-raised with its default
   action, so the agent's `wait` sees what it would have seen without the shim.
"""

import _signal as signal  # not `signal`: its enums cost a third of our start
import errno
import os
import select
import sys
import time

_TAIL_BYTES = 4096
_TAIL_LINES = 5
_DRAIN_SECONDS = 5.0  # output still coming from grandchildren after the command exited
_NOT_STARTED = 125
_CORE_NAMES = ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV", "SIGSYS", "SIGXCPU")
_CORE_SIGNALS = {getattr(signal, name) for name in (*_CORE_NAMES, "SIGXFSZ") if hasattr(signal, name)}
_GUARDED = {signal.SIGTERM, signal.SIGINT}


def main(argv):
    if len(argv) < 7 or argv[5] != "--":
        sys.stderr.write("usage: shim.py CTL STATUS RELAY RECORD -- COMMAND...\n")
        return 2
    ctl, status, record, command = int(argv[1]), int(argv[2]), argv[4], argv[6:]
    relay, *warm = argv[3].split(",")  # "1"/"0", or a warm fork's "1,PID,GO,OUT" (below)
    relay = relay == "1"
    os.set_inheritable(status, False)
    go = os.read(ctl, 2)
    os.close(ctl)
    if go != b"go":
        _forget(record)
        return _NOT_STARTED
    # Blocked, not ignored, until the command runs: its dispositions stay the defaults, and
    # a SIGTERM that comes meanwhile is discarded below instead of killing us unrecorded.
    signal.pthread_sigmask(signal.SIG_BLOCK, _GUARDED)
    if warm:
        pid, out_r = _release(*map(int, warm))
    else:
        out_r, out_w = os.pipe() if relay else (-1, -1)
        try:
            pid = _start(command, out_w)
        except OSError as exc:
            code = 127 if exc.errno == errno.ENOENT else 126
            _record(record, code, [])
            os.write(status, b"E%d" % (exc.errno or errno.EINVAL))
            return code
        finally:
            if relay:
                os.close(out_w)
    for sig in _GUARDED:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _GUARDED)
    os.write(status, b"ok")
    os.close(status)
    if relay:
        wait_status, tail = _relay(pid, out_r)
    else:
        wait_status, tail = os.waitpid(pid, 0)[1], []
    code = os.waitstatus_to_exitcode(wait_status)
    _record(record, code, tail)
    _exit_like(code)


def _start(command, out_w):
    """Fork and exec the command (found on the PATH of our environment, which is the run's);
    raises the OSError its exec raised. Not posix_spawn: glibc's leaves its two internal
    signals ignored in the new program."""
    err_r, err_w = os.pipe()  # close-on-exec: EOF once the exec succeeded
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, until exec
        try:
            os.close(err_r)
            # what the agent's own child would get: SIGPIPE and SIGXFSZ restored (Python
            # ignores them, subprocess restores them), an empty mask, output to the relay
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            if out_w >= 0:
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execvpe(command[0], command, os.environ)
        except OSError as exc:
            os.write(err_w, b"%d" % (exc.errno or errno.EINVAL))
        finally:
            os._exit(127)
    os.close(err_w)
    failed = b""
    while True:
        chunk = os.read(err_r, 16)
        if not chunk:
            break
        failed += chunk
    os.close(err_r)
    if failed:
        os.waitpid(pid, 0)
        number = int(failed)
        raise OSError(number, os.strerror(number))
    return pid


def _release(pid, go, out_r):
    """A warm fork (zygote.py) made us in place of the exec: the command is our child
    already, waiting in the run's session for "go". Returns (its pid, its output's end)."""
    os.set_inheritable(go, False)
    if out_r >= 0:
        os.set_inheritable(out_r, False)
    os.write(go, b"go")
    os.close(go)
    return pid, out_r


def _relay(pid, out_r):
    """Copy the command's output to stdout until it exits; (wait status, last lines if the
    agent was gone)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or an old kernel: poll for the exit
        pidfd = None
    watch = [out_r] + ([pidfd] if pidfd is not None else [])
    tail, broken, wait_status = b"", False, None
    while wait_status is None:
        ready = select.select(watch, [], [], None if pidfd is not None else 0.25)[0]
        if out_r in ready:
            chunk = os.read(out_r, 65536)
            if chunk:
                tail, broken = _pass_on(chunk, tail, broken)
            else:  # the command closed its output; it may still run
                watch.remove(out_r)
        if pidfd is None or pidfd in ready:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                wait_status = st
    if out_r in watch:
        deadline = time.monotonic() + _DRAIN_SECONDS
        while select.select([out_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            tail, broken = _pass_on(chunk, tail, broken)
    os.close(out_r)
    if pidfd is not None:
        os.close(pidfd)
    return wait_status, _lines(tail) if broken else []


def _pass_on(chunk, tail, broken):
    tail = (tail + chunk)[-_TAIL_BYTES:]
    while chunk and not broken:
        try:
            chunk = chunk[os.write(1, chunk) :]
        except OSError:  # the agent is gone (EPIPE): keep draining, drop the output
            broken = True
    return tail, broken


def _lines(tail):
    # Raw lines, neither stripped nor cut: the shim knows no secrets, so the agent masks
    # them before it strips or cuts (issue 13). A full window starts mid-line: that
    # partial first line (maybe the end of a secret) is dropped.
    lines = tail.decode(errors="replace").split("\n")
    if len(tail) >= _TAIL_BYTES:
        lines = lines[1:]
    return [line for line in lines if line.strip()][-_TAIL_LINES:]


def _load(path):
    """The record if it is still ours (a later launch of the same run may have replaced it)."""
    if path == "-":
        return None
    import json

    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("pid") == os.getpid() else None


def _record(path, code, tail):
    """Add the exit status to the record, atomically; best effort (the exit is what counts)."""
    data = _load(path)
    if data is None:
        return
    import json

    data.update(exit=code, ended_at=time.time())
    if tail:
        data["tail"] = tail
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        pass


def _forget(path):
    if _load(path) is not None:
        try:  # noqa: SIM105 - contextlib is one import too many for a fast start
            os.unlink(path)
        except OSError:
            pass


def _exit_like(code):
    if code >= 0:
        os._exit(code)
    sig = -code
    if sig in _CORE_SIGNALS:  # the command may have dumped core; the shim must not add one
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    try:
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    except (OSError, ValueError):  # SIGKILL has no handler to reset
        pass
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default action does not end a process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
