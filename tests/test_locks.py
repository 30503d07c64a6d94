"""The paper exchange's lock: one holder at a time, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading

import pytest

from eternal.store.db import connect
from eternal.store.locks import exclusive


@pytest.mark.db
def test_a_second_holder_waits_until_the_first_releases(db_url):
    engine = connect(db_url)
    first_in, release, second_in = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def first():
        with exclusive(engine, "paper"):
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    def second():
        first_in.wait(10)
        with exclusive(engine, "paper"):
            order.append("second in")
            second_in.set()

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start(), b.start()
    assert first_in.wait(10)
    assert not second_in.wait(0.3)           # blocked while the first holds the lock
    release.set()
    a.join(10), b.join(10)
    assert order == ["first in", "first out", "second in"]


@pytest.mark.db
def test_other_names_do_not_block(db_url):
    engine = connect(db_url)
    with exclusive(engine, "paper"):
        done = threading.Event()

        def other():
            with exclusive(engine, "something-else"):
                done.set()

        t = threading.Thread(target=other)
        t.start()
        assert done.wait(10)
        t.join(10)
