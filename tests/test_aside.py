"""eternal.aside: work beside this process, in a child that dies with it (the backfill's second
replay runs there; tests/test_governance.py and tests/test_cli.py run that through the CLI)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_child_that_dies_without_an_answer_is_one_line_naming_it():
    """A forked child killed (here SIGABRT) before it answers: the caller gets an AsideError
    naming the work and the exit code, not an EOFError from the pipe."""
    code = ("import os; from eternal.aside import Aside; "
            "Aside(os.abort, name='the second replay (breakers off)').result()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("eternal.aside.AsideError: the second replay (breakers off): "
                                                    "its process ended with exit code -6 and no result")


def test_work_smaller_than_a_spawn_stays_in_process_beside_other_threads():
    """Beside another thread a fork is unsafe and a spawned child imports eternal again (about
    1 s): work that takes less than that (the charts: `spawn=False`) runs in this process, at
    `result()`; with one thread it is forked, in a process of its own."""
    code = ("import os, threading; from eternal.aside import Aside\n"
            "alone = Aside(os.getpid, spawn=False)\n"
            "stop = threading.Event(); threading.Thread(target=stop.wait).start()\n"
            "beside = Aside(os.getpid, spawn=False)\n"
            "print(alone.proc is not None, alone.result() != os.getpid(), beside.proc, beside.spawned, "
            "beside.result() == os.getpid()); stop.set()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True", "None", "None", "True"], done.stderr


def test_unpickled_arguments_reach_a_forked_child_and_work_in_process_but_not_a_spawned_child():
    """The breakers-off replay is handed the first replay's market view where nothing is pickled
    (a fork shares it; in process it is there): a spawned child (beside another thread) is called
    without it and builds its own, rather than the parent pickling 2.6 MB on its critical path."""
    code = ("import os, threading; from eternal.aside import Aside\n"
            "forked = Aside(os.path.join, 'a', unpickled=('b',))\n"
            "stop = threading.Event(); threading.Thread(target=stop.wait, daemon=True).start()\n"
            "spawned = Aside(os.path.join, 'a', unpickled=('b',))\n"
            "here = Aside(os.path.join, 'a', spawn=False, unpickled=('b',))\n"
            "print(forked.proc is not None, forked.result(), spawned.spawned is not None, spawned.result(), "
            "here.result()); stop.set()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "a/b", "True", "a", "a/b"], done.stderr


def test_no_process_to_be_had_runs_the_work_here_and_a_childs_failure_says_where():
    """A fork refused (a process limit, memory: ENOMEM) is no failure of a finished backfill: the
    work runs in this process instead (before, the whole backfill ended on `OSError: [Errno 12]`
    at its charts and its outputs were removed). And an exception raised in the child carries the
    child's traceback as a note, which `--debug` prints: it names the function that failed."""
    code = ("import errno, os\n"
            "from eternal.aside import Aside\n"
            "def refuse(): raise OSError(errno.ENOMEM, 'Cannot allocate memory')\n"
            "real, os.fork = os.fork, refuse\n"
            "print(Aside(os.getpid, name='the charts').result() == os.getpid())\n"
            "os.fork = real\n"
            "import json\n"
            "try:\n"
            "    Aside(json.loads, '{', name='the charts').result()\n"
            "except ValueError as exc:\n"
            "    print(type(exc).__name__, 'in its own process' in exc.__notes__[0], 'json/decoder.py' in exc.__notes__[0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "JSONDecodeError", "True", "True"], done.stderr


INTERRUPTED_DURING_THE_FORK = """
import os, signal, sys
from eternal import cli
from eternal.aside import Aside

cli._interrupt_on_signals()              # as `eternal backfill` runs
side = sys.argv[1]
# the interrupt lands while the process forks (in the parent's or the child's after-fork hooks)
os.register_at_fork(**{f"after_in_{side}": lambda: os.kill(os.getpid(), signal.SIGINT)})
try:
    aside = Aside(sum, [1, 2], name="the work aside")
    print("answer", aside.result())
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("side", ["parent", "child"])
def test_an_interrupt_landing_while_the_work_aside_is_forked_is_not_lost(side, tmp_path):
    """Ctrl-C or SIGTERM at the moment a backfill forks work aside (its charts, its job's child)
    raised its KeyboardInterrupt inside the fork's hooks, where Python drops it ("Exception ignored
    in ... _releaseLock"), and the CLI's handler had already set the signals to be ignored: the
    backfill ran to its end and exited 0, or its job's child ignored every later stop (a fresh
    user's finding). Held during the fork, the interrupt is raised after it, in the process it hit."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_DURING_THE_FORK, side], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["interrupted"] and "Exception ignored" not in done.stderr, done.stderr


PRIMED = """
import os, sys, threading, time
from eternal.aside import Primed

def prepare(path):                  # runs at once, before any input: leaves a mark with its pid
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return path

def add(path, value):
    return (open(path).read(), value + 1)

def refuse(path):
    raise ValueError("no schema for " + path)

forked = Primed(prepare, add, sys.argv[1] + "/forked", name="the ledger's writer")
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1] + "/forked") and time.monotonic() < deadline:
    time.sleep(0.01)                # prepared before anything is sent
forked.send(41)
pid, answer = forked.result()
print(forked.beside, pid != str(os.getpid()), answer)
failed = Primed(refuse, add, "x", name="the ledger's writer")
failed.send(1)
try:
    failed.result()
except ValueError as exc:
    print(type(exc).__name__, str(exc), "in its own process" in exc.__notes__[0])
stop = threading.Event(); threading.Thread(target=stop.wait).start()
here = Primed(prepare, add, sys.argv[1] + "/here")
print(here.beside, os.path.exists(sys.argv[1] + "/here"))
here.send(1)
pid, answer = here.result()
print(pid == str(os.getpid()), answer)
stop.set()
"""


def test_primed_work_prepares_in_its_child_before_its_input_and_in_process_beside_threads(tmp_path):
    """`Primed` (a backfill's ledger writer and charts): its preparation runs in a forked child at
    once, before anything is sent (there the schema or matplotlib loads beside the replay); the
    input sent later reaches it; a failure in the preparation is raised at `result()` with the
    child's traceback as a note. Beside another thread nothing is forked: both run here, at
    `result()`, with the same answer."""
    done = subprocess.run([sys.executable, "-c", PRIMED, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["True True 42", "ValueError no schema for x True", "False False",
                                        "True 2"], done.stderr
