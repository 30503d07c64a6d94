"""eternal.aside: work beside this process, in a child that dies with it (the backfill's second
replay runs there; tests/test_governance.py and tests/test_cli.py run that through the CLI)."""
from __future__ import annotations

import subprocess
import sys


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
