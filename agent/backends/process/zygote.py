"""The warm engine: a Python process with Prefect imported, forking one run at a time.

The agent never imports Prefect; it starts this file by its path, with its own Python
(warm.py), and talks to it over one SOCK_SEQPACKET socket, one JSON message each way:

    <- {"ready": true, "paths": [...], "version": "3.8.8"}  or  {"failed": "<why>"}
    -> {"op": "fork", "id": N, "argv": [...], "env": {...}, "cwd": ..., "relay": bool}
       with the run's CTL, STATUS (and, when relayed, OUT) pipe ends attached
    <- {"id": N, "pid": P}  or  {"id": N, "errno": E}
    <- {"exit": P, "code": C}             P has ended; it stays a zombie until ...
    -> {"op": "reap", "pid": P}           ... the agent has taken the code, so its pid is
                                          never reused while the agent may still signal it
    -> {"op": "retire"}                   fork no more; exit once every child is reaped

A fork becomes what a cold launch makes, in the same places: the forked process (P) starts
its own session, moves into the run's working directory, forks the engine (E) and then
execs the supervisor (shim.py) with the argv the agent built, so P is the run's group
leader, records its exit status and carries the record path in its command line exactly
as a cold supervisor does. E waits until the supervisor says "go" (the agent has written
the record), takes the run's environment and runs `prefect.engine` as `python -m
prefect.engine` would. Prefect's settings and logging, built at import from this process's
environment (the agent starts one engine per run environment, but for the PREFECT__* run
variables), are kept when the run would build them from the same sources, else built again.

This process stays single-threaded and never runs flow code, never talks to the API and
never opens Prefect's control channel: a fork only copies the thread that forks, and
whatever a flow imports is imported in its own fork, where a slow import delays only that
run. Standard library and Prefect only; nothing of the agent.
"""

import contextlib
import functools
import gc
import json
import os
import select
import socket
import sys
import time

_MESSAGE_LIMIT = 1 << 20  # bytes of one request (argv + env); larger ones start cold
_NOT_STARTED = 125  # the supervisor's code for "never told to go"
_PLACEHOLDERS = ("<ctl>", "<status>", "<relay>")


def main(argv):
    sock = socket.socket(fileno=int(argv[1]))
    # passed to us inheritable: no supervisor may keep it open (the agent would not see EOF
    # when this process dies while a run it forked is still going)
    sock.set_inheritable(False)
    del sys.path[0]  # this file's directory: never a place to import from
    try:
        os.close(os.pidfd_open(os.getpid()))  # Linux >= 5.3: how we learn of each exit
        import threading

        import prefect
        import prefect.engine  # noqa: F401 - what each run needs already imported
        import prefect.flow_engine  # noqa: F401

        _preload()
        imported = _imported_with()
        tls = _tls_contexts()
        if threading.active_count() != 1:  # e.g. a sitecustomize that starts a thread
            raise RuntimeError(
                f"{threading.active_count()} threads after importing prefect; forking needs one"
            )
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the agent starts runs cold
        _send(sock, {"failed": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    gc.collect()
    gc.freeze()  # what the forks share stays shared: the collector never writes to it
    _send(sock, {"ready": True, "paths": paths, "version": prefect.__version__})
    run = _serve(sock)
    return 0 if run is None else _run_engine(*run, imported=imported, tls=tls)


# What an engine imports after `prefect.engine` on its way to the flow's first line (measured
# with -X importtime on 3.8.8: ~0.2 s): Prefect's pull steps and storage, and libraries. None
# reads a setting's value at import. Imported here, they cost a run nothing and are shared.
_PRELOAD = (
    "prefect.deployments.steps",
    "prefect.runner.storage",
    "prefect._internal.infrastructure_exit_codes",
    "prefect._internal.observers",
    "pydantic.v1",
    "anyio._core._sockets",
    "anyio.streams.tls",
    "encodings.idna",
    "rich._emoji_codes",
    "anyio._backends._asyncio",  # anyio imports its event loop's backend at first use
    "runpy",
)


def _preload():
    import importlib

    for name in _PRELOAD:
        # another Prefect version may lack one: the run imports what it needs itself
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _complete_models()


def _complete_models():
    """Build every pydantic model Prefect defers (252 in 3.8.8: its client schemas) as each
    run would at its first use: ~2 MiB of a fork's private memory, built once and shared."""
    for model in _models():
        if not model.__dict__.get("__pydantic_complete__", True):
            _complete(model)


def _models():
    import pydantic

    seen, todo = set(), [pydantic.BaseModel]
    while todo:
        for model in todo.pop().__subclasses__():
            if model not in seen:
                seen.add(model)
                todo.append(model)
    return seen


def _complete(model):
    # its own frame: pydantic resolves names in the caller's namespace too, and this one
    # holds no name but `model`; one that cannot be built fails in the run that uses it
    with contextlib.suppress(Exception):
        model.model_rebuild(raise_errors=False)


# Prefect builds one TLS context per API client (prefect.client, prefect._internal.websockets,
# httpx), from SSL_CERT_FILE or else certifi's bundle: ~20 ms of CPU each, nine on an
# engine's way to the flow's first line (3.8.8), even for an http:// API. Each fork inherits
# this many, built here once; each is handed out once, so no context is ever shared, and
# each is what the call would have built from the same unchanged file.
_TLS_CONTEXTS = 12


def _tls_contexts():
    import ssl

    try:
        import certifi

        bundle = os.environ.get("SSL_CERT_FILE") or certifi.where()
        stamp = _stamp(bundle)
        return bundle, stamp, [ssl.create_default_context(cafile=bundle) for _ in range(_TLS_CONTEXTS)]
    except Exception:  # noqa: BLE001 - no certifi, no bundle: every run builds its own
        return None


def _stamp(path):
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


def _use_tls_contexts(tls):
    """In an engine's fork: `ssl.create_default_context(cafile=<that bundle>)` takes a
    prebuilt context while there are some left and the file is unchanged, then the original
    function is back in place."""
    import ssl

    bundle, stamp, contexts = tls
    original = ssl.create_default_context

    @functools.wraps(original)
    def create_default_context(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
        if purpose is ssl.Purpose.SERVER_AUTH and cafile == bundle and capath is None and cadata is None:
            try:
                if _stamp(bundle) == stamp:
                    return contexts.pop()
            except (OSError, IndexError):  # gone, or another thread took the last one
                pass
            finally:
                if not contexts:
                    ssl.create_default_context = original
        return original(purpose, cafile=cafile, capath=capath, cadata=cadata)

    ssl.create_default_context = create_default_context


# Prefect builds its settings from the environment, the profiles file and these files in the
# working directory (3.8.8: settings/base.py), and its logging from the settings and its
# logging file. Built at import here, they are what a run would build, as long as all these
# are the same for it: ~90 ms and ~3 MiB of private memory a fork then saves.
_CWD_SETTINGS = (".env", "prefect.toml", "pyproject.toml")


def _imported_with():
    """What this process's settings and logging were built from at import; None when its
    working directory had a say (then every run builds its own)."""
    from prefect.settings import PREFECT_LOGGING_SETTINGS_PATH, get_current_settings

    if _cwd_settings():
        return None
    files = (str(get_current_settings().profiles_path), str(PREFECT_LOGGING_SETTINGS_PATH.value()))
    return _settings_env(os.environ), files, [_stamp_or_none(path) for path in files]


def _as_imported(imported, env):
    """Whether a run, in its working directory, would build its settings and logging from
    what this process built them from at import."""
    if imported is None or _cwd_settings():
        return False
    settings_env, files, stamps = imported
    return _settings_env(env) == settings_env and [_stamp_or_none(path) for path in files] == stamps


def _cwd_settings():
    return any(os.path.exists(name) for name in _CWD_SETTINGS)


def _settings_env(env):
    # PREFECT__* are a run's context for the engine (ids, the control token), not settings
    return {k: v for k, v in env.items() if not k.startswith("PREFECT__")}


def _stamp_or_none(path):
    try:
        return _stamp(path)
    except OSError:
        return None


def _send(sock, message):
    sock.send(json.dumps(message).encode())


def _serve(sock):
    """Answer requests until the agent is gone or retired us with no child left. Returns
    None in this process, or (request, fds to close, go pipe, output) in an engine fork."""
    children, zombies, accepting = {}, set(), True  # pidfd -> pid; exited, not yet reaped
    while accepting or children or zombies:
        ready = select.select([sock.fileno(), *children], [], [])[0]
        for fd in ready:
            if fd in children:
                pid = children.pop(fd)
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                os.close(fd)
                zombies.add(pid)
                _send(sock, {"exit": pid, "code": _exit_code(info)})
                continue
            data, fds, flags, _ = socket.recv_fds(sock, _MESSAGE_LIMIT, 4)
            if not data:  # the agent is gone: its runs' supervisors live on without us
                return None
            request = json.loads(data)
            op = request.get("op")
            if op == "fork" and accepting and not flags & socket.MSG_TRUNC:
                run = _fork(sock, request, fds, children)
                if run is not None:
                    return run
            elif op == "fork":
                for received in fds:
                    os.close(received)
                _send(sock, {"id": request.get("id"), "errno": 11})  # EAGAIN: start it cold
            elif op == "reap" and request.get("pid") in zombies:
                zombies.discard(request["pid"])
                os.waitpid(request["pid"], 0)
            elif op == "retire":
                accepting = False
    return None


def _exit_code(info):
    # as subprocess reports it: the code, or minus the signal that ended the process
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _fork(sock, request, fds, children):
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        for received in fds:
            os.close(received)
        _send(sock, {"id": request["id"], "errno": exc.errno or 12})
        return None
    if pid == 0:
        try:
            for pidfd in children:  # other runs' business
                os.close(pidfd)
            return _supervisor(sock, request, fds)
        except BaseException:  # noqa: BLE001 - never back into the server's loop
            os._exit(127)
    for received in fds:
        os.close(received)
    children[os.pidfd_open(pid)] = pid
    _send(sock, {"id": request["id"], "pid": pid})
    return None


def _supervisor(sock, request, fds):
    """In the forked process: become the run's session leader, fork its engine, then exec
    the supervisor. Returns only in the engine's fork."""
    ctl, status = fds[0], fds[1]
    out = fds[2] if len(fds) > 2 else os.open(os.devnull, os.O_WRONLY)
    os.setsid()
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        os.write(status, b"E%d" % (exc.errno or 2))
        os._exit(127)
    go_r, go_w = os.pipe()
    relay_r, relay_w = os.pipe() if request["relay"] else (-1, -1)
    engine = os.fork()
    if engine == 0:
        sock.close()
        for fd in (ctl, status, out, go_w, relay_r):
            if fd >= 0:
                os.close(fd)
        return request, go_r, relay_w
    os.close(go_r)
    if relay_w >= 0:
        os.close(relay_w)
    # the supervisor's stdio, as the agent gives its own child: the output pipe (or nothing)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in (ctl, status, go_w, relay_r):
        if fd >= 0:
            os.set_inheritable(fd, True)
    relay = f"{int(request['relay'])},{engine},{go_w},{relay_r}"
    fill = dict(zip(_PLACEHOLDERS, (str(ctl), str(status), relay), strict=True))
    argv = [fill.get(arg, arg) for arg in request["argv"]]
    try:
        os.execve(argv[0], argv, request["env"])
    except OSError as exc:
        os.write(status, b"E%d" % (exc.errno or 2))
    os._exit(127)


def _run_engine(request, go_r, out, imported, tls):
    """In the engine's fork: wait for "go", become the run's interpreter, run the engine."""
    target = out if out >= 0 else os.open(os.devnull, os.O_WRONLY)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    go = os.read(go_r, 2)
    os.close(go_r)
    if go != b"go":  # the supervisor ended first (the agent never said go): start nothing
        os._exit(_NOT_STARTED)
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    if tls is not None and "SSLKEYLOGFILE" not in env:  # a key log is set up per context
        _use_tls_contexts(tls)
    if not env.get("PYTHONSAFEPATH"):  # what `python -m` puts first: the working directory
        sys.path.insert(0, os.getcwd())
    import runpy

    if not _as_imported(imported, env):
        # Settings and logging were built at import, from other sources: build them again
        # from the run's (without this the engine would talk to no API at the wrong levels).
        import prefect.context
        from prefect.logging.configuration import setup_logging

        prefect.context.refresh_global_settings_context()
        setup_logging(incremental=False)
    sys.modules.pop("prefect.engine", None)  # run as __main__, not the imported copy
    sys.argv = [""]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
