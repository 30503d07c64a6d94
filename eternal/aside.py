"""Work run beside this process, on the machine's other core, in a child process that dies with
it: a backfill's second replay (breakers off) beside its first (`eternal.replay`). Shell code:
processes, pipes and signals; the work itself is any module-level function.

Why not `concurrent.futures.ProcessPoolExecutor` or `multiprocessing.Pool`: both pickle the call
through a queue even when they fork (the market data, tens of MB, each time), and their spawn and
forkserver children import the caller's `__main__` again (a script without a `__name__` guard runs
twice). Here a fork shares the data as it is, and a spawned child is a plain `python -P -c`.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from eternal.errors import EternalError


class AsideError(EternalError):
    """The child ended without an answer (killed, out of memory), or its answer did not pickle."""


def _die_with(owner: int) -> None:
    """This child is killed when its parent process dies (Linux `PR_SET_PDEATHSIG`): a backfill
    killed by SIGTERM or SIGKILL leaves no replay running on, holding its --out lock (a fork
    inherits the lock's file). `owner`: the backfill's pid, its parent."""
    import ctypes
    import os
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):         # not Linux: the child ends when its replay does
        return
    if os.getppid() != owner:                 # the parent died before the line above
        os._exit(1)


def _aside_run(fn: Callable, args: tuple, name: str, mask=None) -> tuple[str, object, str | None]:
    """("ok", fn(*args), None) or ("error", the exception it raised (an AsideError when it does not
    pickle), the child's traceback as text: `result()` adds it as a note, which `--debug` prints).
    `mask`: the signal mask to restore first (a forked child's interrupts, held during the fork, are
    raised here: a KeyboardInterrupt is an answer like any exception)."""
    import pickle
    import signal
    import traceback

    try:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        out = ("ok", fn(*args), None)
    except BaseException as exc:                 # noqa: BLE001 - handed to the parent as is
        # the traceback travels as text: an exception's own pickling may drop its notes
        out = ("error", exc, f"raised in {name}, in its own process (eternal.aside):\n"
               + "".join(traceback.format_exception(exc)).rstrip())
    try:
        pickle.dumps(out)
    except Exception as exc:                     # an exception or a result that does not pickle
        out = ("error", AsideError(f"{type(out[1]).__name__}: {out[1]}") if out[0] == "error" else exc, out[2])
    return out


def _aside_forked(conn, fn: Callable, args: tuple, owner: int, name: str, mask) -> None:
    """The forked child: its answer sent back through `conn`."""
    _die_with(owner)
    out = _aside_run(fn, args, name, mask)
    try:
        conn.send(out)
    except BrokenPipeError:                      # the backfill no longer waits for it
        pass


def _aside_spawned() -> None:
    """The spawned child (`python -c`, argv: the parent's pid): its call read pickled from stdin,
    its answer pickled to stdout."""
    import pickle

    _die_with(int(sys.argv[1]))
    fn, args, name = pickle.load(sys.stdin.buffer)
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr                      # a print in the replay does not spoil the answer
    out = _aside_run(fn, args, name)
    try:
        answer.write(pickle.dumps(out))
        answer.flush()
    except BrokenPipeError:
        pass


class Aside:
    """`fn(*args)` (a module-level function) run in a child process, on the machine's other core,
    while this process goes on: the backfill's second replay (breakers off) beside its first.
    `result()` waits for it and raises what it raised; `cancel()` ends it; the child dies with this
    process. When this process runs one thread the child is forked (it shares the data read,
    nothing is imported again). Beside other threads (a Prefect flow run, a Dask worker) a fork
    could copy a lock another thread holds, and multiprocessing's spawn and forkserver import this
    process's `__main__` again in the child (a script without a `__name__` guard would run twice):
    the child is then a fresh `python -c` that imports eternal (about 1 s) and reads the call
    pickled through its stdin; with `spawn` False (work smaller than those imports: the charts) it
    then runs here, in process, at `result()`. On one core it runs here too, and when no process
    can be started (a fork or spawn refused: a process limit, memory). An exception raised in the
    child is raised here with the child's traceback as a note. A forked child is daemonic unless
    `daemon` is False (multiprocessing lets no daemonic process start its own: a child that forks
    work aside itself, `tasks.backfill.StartedJob`). `unpickled`: arguments after `args` that are
    only worth passing where nothing is pickled (a fork, or in process): a spawned child is called
    without them, so `fn` must do without (the first replay's market view: rebuilt faster than
    pickled)."""

    def __init__(self, fn: Callable, *args, name: str = "the work aside", spawn: bool = True,
                 daemon: bool = True, unpickled: tuple = ()) -> None:
        import gc
        import multiprocessing
        import os
        import threading

        self.fn, self.args, self.name, self.proc, self.conn, self.spawned = fn, args + unpickled, name, None, None, None
        if (os.cpu_count() or 1) < 2:
            return
        if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
            import signal

            ctx = multiprocessing.get_context("fork")
            self.conn, child_end = ctx.Pipe(duplex=False)
            # SIGINT and SIGTERM wait while the process forks: one landing in the fork's hooks (in
            # either process) raised its KeyboardInterrupt there, where Python drops it, and the
            # CLI's handler had already set both signals to be ignored: the interrupt was lost (a
            # backfill ran to its end and exited 0, or its job's child ignored the parent's stop)
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self.proc = ctx.Process(target=_aside_forked, args=(child_end, fn, self.args, os.getpid(), name, mask),
                                        daemon=daemon, name="eternal-aside")
                # what exists now is never collected in the child: garbage the parent still holds (a
                # finished backfill's database engine, in a reference cycle) would otherwise be freed
                # there by the cycle collector, closing the parent's SQLite connections in the child,
                # which SQLite forbids across a fork (CI found the ledger's -wal file left behind)
                frozen = gc.get_freeze_count()     # a caller's own freeze (`eternal backfill`'s) stays
                gc.freeze()
                try:
                    self.proc.start()
                except OSError:            # no fork now (a process limit, memory): the work runs here instead
                    self.proc = None
                    self.conn.close()
                    self.conn = None
                finally:
                    if not frozen:
                        gc.unfreeze()          # here, in the parent, everything is collected as before
                child_end.close()
            finally:
                try:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)     # one that came meanwhile: raised here
                except BaseException:
                    self.cancel()
                    raise
        elif spawn:
            self.args = args
            self._spawn()
            if self.spawned is None:          # it runs here instead: nothing to pickle
                self.args = args + unpickled

    def _spawn(self) -> None:
        import os
        import pickle
        import subprocess
        import threading

        # the child imports this very eternal: its directory first, and no working directory in
        # front of it (-P); one that cannot be found again (a relative path and a chdir since)
        # keeps the replay in this process
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(root, "eternal", "aside.py")):
            return
        # the call goes through a pipe, never a file: the settings in it may hold secrets
        call = pickle.dumps((self.fn, self.args, self.name), protocol=pickle.HIGHEST_PROTOCOL)
        paths = [root, *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
        try:
            self.spawned = subprocess.Popen([sys.executable, "-P", "-c", "from eternal.aside import _aside_spawned; "
                                             "_aside_spawned()", str(os.getpid())],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=env)
        except OSError:                # no new process now: the work runs here instead
            return

        def feed(pipe=self.spawned.stdin) -> None:       # while this process replays
            try:
                pipe.write(call)
                pipe.close()
            except (BrokenPipeError, ValueError):          # the child died or was cancelled
                pass

        self.feeder = threading.Thread(target=feed, daemon=True, name="eternal-aside-feed")
        self.feeder.start()

    def result(self):
        import pickle

        if self.spawned is not None:
            self.feeder.join()                    # the call written (or the child gone) first
            self.spawned.stdin = None             # closed by the feeder: communicate() reads only
            out, err = self.spawned.communicate()
            if self.spawned.returncode != 0 or not out:
                last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
                raise AsideError(f"{self.name}: its process ended with exit code {self.spawned.returncode} "
                                 f"and no result{': ' + last if last else ''}")
            status, value, where = pickle.loads(out)
        elif self.proc is not None:
            try:
                status, value, where = self.conn.recv()
            except EOFError:          # the child died without an answer (killed, out of memory)
                self.proc.join()
                raise AsideError(f"{self.name}: its process ended with exit code {self.proc.exitcode} "
                                 "and no result") from None
            finally:
                self.conn.close()
            self.proc.join()
        else:
            return self.fn(*self.args)
        if status == "error":
            if where:
                value.add_note(where)
            raise value
        return value

    def cancel(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        if self.conn is not None:
            self.conn.close()
        if self.spawned is not None and self.spawned.poll() is None:
            self.spawned.kill()
            self.spawned.wait()


def _primed(receive, send, prepare: Callable, fn: Callable, args: tuple):
    """`Primed`'s child: `prepare(*args)`, then `fn(prepared, value)` for the value sent (None
    without running `fn` when the parent closed its end without sending: it failed)."""
    send.close()                    # the parent's end: closed here, so its close is this end's EOF
    prepared = prepare(*args)
    try:
        value = receive.recv()
    except EOFError:
        return None
    finally:
        receive.close()
    return fn(prepared, value)


class Primed:
    """Work whose input comes later and whose preparation can start now: `prepare(*args)` (imports,
    a new ledger's schema) runs at once in a forked child (`Aside`) on the machine's other core
    while this process replays; `send(value)` hands it the input, the child runs
    `fn(prepared, value)`, and `result()` waits for its answer and raises what it raised. Where no
    child can be forked (beside threads, on one core, no process to be had) both run here, at
    `result()`. `cancel()` ends the child (a failed backfill: `fn` never runs). `daemon` as `Aside`'s
    (False for work that forks its own children). `prepare`, `fn`: module-level functions."""

    def __init__(self, prepare: Callable, fn: Callable, *args, name: str = "the work aside",
                 daemon: bool = True) -> None:
        import multiprocessing

        self.prepare, self.fn, self.args, self.name = prepare, fn, args, name
        self._value, self._sent, self._send = None, False, None
        receive, send = multiprocessing.Pipe(duplex=False)
        self._aside = None
        try:
            self._aside = Aside(_primed, receive, send, prepare, fn, args, name=name, spawn=False, daemon=daemon)
            receive.close()             # the child's end
            if self._aside.proc is None:
                send.close()
                self._aside = None
            else:
                self._send = send
        except BaseException:           # interrupted here: the child is not left to run on
            if self._aside is not None:
                self._aside.cancel()
            raise

    @property
    def beside(self) -> bool:
        """True while the work has a child of its own (False: it runs here, at `result()`)."""
        return self._aside is not None

    def send(self, value) -> None:
        """The input; sent once."""
        if self._sent:
            raise RuntimeError(f"{self.name}: its input was sent already")
        self._sent = True
        if self._aside is None:
            self._value = value
            return
        try:
            self._send.send(value)
        except (BrokenPipeError, ConnectionResetError):      # the child died: `result` says how
            pass
        finally:
            self._send.close()

    def result(self):
        if not self._sent:
            raise RuntimeError(f"{self.name}: result() before its input was sent")
        if self._aside is None:
            return self.fn(self.prepare(*self.args), self._value)
        return self._aside.result()

    def cancel(self) -> None:
        if self._send is not None:
            self._send.close()
        if self._aside is not None:
            self._aside.cancel()
