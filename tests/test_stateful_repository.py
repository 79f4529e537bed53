"""The repository always equals a model of it (issue 11): a hypothesis state machine
(`butler.testing._stateful.RepositoryMachine`) puts, replaces, removes, removes runs, hands runs
over, gets and queries as two users in three long-lived processes of their own, on every backend
(on PostgreSQL and MariaDB the users are database roles), and checks after every step that the
repository holds exactly the model, verifies clean and has an empty journal.
"""

from __future__ import annotations

import multiprocessing

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from butler.testing import TEST_ROLES, share_repository
from butler.testing._stateful import CLIENTS, UserProcess, bind_machine, prepare_repository

ALICE, BOB = TEST_ROLES


@pytest.fixture
def user_processes(repo_factory, tmp_path):
    """(administrator's Butler, {client name: UserProcess}): alice twice, bob once."""
    admin = repo_factory()
    prepare_repository(admin)
    envs = share_repository(admin, str(tmp_path), TEST_ROLES)
    ctx = multiprocessing.get_context("spawn")
    users = {"alice": ALICE, "alice2": ALICE, "bob": BOB}
    clients = {name: UserProcess(ctx, admin.root, envs[users[name]], name) for name in CLIENTS}
    try:
        for client in clients.values():
            client.wait_ready()
        assert {name: c.user for name, c in clients.items()} == users
        yield admin, clients
    finally:
        for client in clients.values():
            client.close()


def test_repository_equals_the_model(user_processes):
    admin, clients = user_processes
    machine = bind_machine(admin, clients)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
