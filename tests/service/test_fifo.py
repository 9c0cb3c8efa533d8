"""The model lock serves waiting requests in arrival order and honours timeouts."""

from __future__ import annotations

import threading
import time

from safety_lora.service.fifo import FifoLock


def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FifoLock()
    assert lock.acquire()
    order: list[int] = []

    def wait(i: int) -> None:
        assert lock.acquire(timeout=10)
        order.append(i)
        lock.release()

    threads = []
    for i in range(5):
        thread = threading.Thread(target=wait, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(0.05)  # arrive one after another
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    lock = FifoLock()
    assert lock.acquire()
    began = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - began < 2
    lock.release()
    assert lock.acquire(timeout=0)  # free again: the timed-out waiter did not keep a place
    lock.release()
