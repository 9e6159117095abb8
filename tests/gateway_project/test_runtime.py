"""The configuration snapshot (gateway_project.runtime): consistent parts, and never a newer name than content."""

from __future__ import annotations

import pytest

from gateway_project import runtime


@pytest.fixture
def changing_part():
    """A part whose every load sees the configuration change right after it was read (a burst of commits)."""
    loads: list[int] = []

    def load():
        loads.append(runtime.db_state()[0])
        runtime.bump()  # commits at once: no transaction is open here
        return loads[-1]

    runtime.register("changing", load, empty=None)
    yield loads
    del runtime._loaders["changing"]


def test_a_snapshot_loaded_while_changes_keep_committing_is_reloaded_by_the_next_check(transactional_db, changing_part):
    runtime.bump()
    snapshot = runtime.load()
    assert len(changing_part) == 3  # three tries, each overtaken by a change
    # The snapshot is named after the revision read before its parts, not the newer one in the database, so
    # the watcher sees it is behind and loads again.
    assert snapshot.revision == changing_part[-1]
    assert snapshot["changing"] == changing_part[-1]
    assert runtime.db_state()[1] != snapshot.token


def test_a_snapshot_loaded_while_nothing_changes_names_the_current_revision(transactional_db):
    runtime.bump()
    snapshot = runtime.load()
    assert (snapshot.revision, snapshot.token) == runtime.db_state()
