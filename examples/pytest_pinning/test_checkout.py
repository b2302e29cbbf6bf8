"""Pinning a downstream version in tests with graylb's pytest fixtures and markers.

Run: pytest examples/pytest_pinning           (ORDERS_VERSION=3.0.0 shows a pin failing loudly)
"""

import os
import threading

import pytest

PINNED = os.environ.get("ORDERS_VERSION", "2.0.0")


def test_checkout_against_the_canary(checkout, graylb_pin):
    graylb_pin("orders", PINNED)  # every call to orders in this test, from any thread
    assert all(checkout() == f"order placed by orders {PINNED}" for _ in range(20))


def test_pin_reaches_threads_the_code_starts_itself(checkout, graylb_pin):
    graylb_pin("orders", PINNED)
    answers = []
    workers = [threading.Thread(target=lambda: answers.append(checkout())) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert answers == [f"order placed by orders {PINNED}"] * 4


@pytest.mark.graylb_lane("beta")
def test_checkout_in_the_beta_lane(checkout):
    assert checkout() == "order placed by orders 2.1.0"


def test_unpinned_traffic_follows_the_rules(checkout):
    answers = [checkout() for _ in range(200)]
    assert answers.count("order placed by orders 1.4.2") > 150  # 95 % stable, never the lane


@pytest.mark.graylb_registry("memory", "consul", "nacos")
@pytest.mark.graylb_pin("orders", "1.4.2")
def test_same_test_on_every_registry(checkout):
    assert checkout() == "order placed by orders 1.4.2"
