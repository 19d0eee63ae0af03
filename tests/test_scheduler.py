"""The scheduler's admission rules (pure, no torch)."""

from __future__ import annotations

import pytest

from runtime.scheduler import QueueFull, Scheduler, SchedulerConfig, SchedulerError


class R:
    """A request (the scheduler keys requests by identity)."""


a, b, c = R(), R(), R()


def make(**kw) -> Scheduler[R]:
    return Scheduler(SchedulerConfig(**{"max_running": 2, "max_waiting": 3, "max_tokens": 100, **kw}))


def test_fifo_admission_up_to_max_running():
    s = make()
    for r in (a, b, c):
        s.submit(r, 10)
    assert [s.admit(), s.admit()] == [a, b]
    assert not s.can_admit()  # two running
    s.finish(a)
    assert s.can_admit() and s.admit() == c
    s.check()
    assert s.reserved == 20


def test_the_queue_is_bounded():
    s = make(max_waiting=2)
    s.submit(a, 1)
    s.submit(b, 1)
    assert not s.can_submit()
    with pytest.raises(QueueFull):
        s.submit(c, 1)
    s.admit()
    s.submit(c, 1)  # room again
    s.check()


def test_the_token_budget_holds_back_admission():
    s = make(max_running=5, max_tokens=50)
    s.submit(a, 40)
    s.submit(b, 20)
    assert s.admit() == a
    assert not s.can_admit()  # 40 + 20 > 50
    with pytest.raises(SchedulerError):
        s.admit()
    s.finish(a)
    assert s.admit() == b
    with pytest.raises(SchedulerError, match="can never fit"):
        s.submit(c, 51)


def test_cancel_from_the_queue_or_the_running_set():
    s = make()
    s.submit(a, 5)
    s.submit(b, 7)
    s.admit()
    assert s.cancel(b) and s.cancel(a)
    assert not s.cancel(a)
    assert s.idle and s.reserved == 0
    with pytest.raises(SchedulerError):
        s.finish(a)
    s.check()


def test_check_catches_broken_bookkeeping():
    s = make()
    s.submit(a, 5)
    s.admit()
    s.reserved = 3
    with pytest.raises(SchedulerError, match="reserved"):
        s.check()


def test_bad_config():
    with pytest.raises(ValueError):
        Scheduler(SchedulerConfig(max_running=0))


def test_a_turn_computes_a_first_chunk_at_once_and_later_ones_as_decodes_pay():
    stepping: set[int] = set()
    s = Scheduler(SchedulerConfig(max_running=3, max_waiting=3, max_tokens=100, prefill_share=0.5),
                  has_step=lambda r: id(r) in stepping)
    for r in (a, b):
        s.submit(r, 5)
        s.start_prefill(s.admit())
    assert s.decode_batch() == []
    assert s.next_prefill() is a and s.next_prefill() is b  # each prompt's first chunk: at once
    s.prefilled(a)
    stepping.add(id(a))
    assert s.decode_batch() == [a]
    s.paid_prefill(1.0)  # b's chunks owe a second of decode time (at share 0.5: one second)
    assert s.next_prefill() is None
    s.paid_decode(0.5)
    assert s.next_prefill() is None
    s.paid_decode(0.5)
    assert s.next_prefill() is b
    stepping.clear()
    s.paid_prefill(5.0)
    assert s.next_prefill() is b  # nothing decodes: prompts run at once
    s.check()
    s.cancel(b)
    assert s.next_prefill() is None and not s.prefilling
    with pytest.raises(SchedulerError):
        s.start_prefill(c)  # not running
    s.check()
