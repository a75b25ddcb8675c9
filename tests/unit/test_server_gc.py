"""The server leaves the objects that exist at its start out of the garbage collector's passes:
they live as long as the process, and a full pass stops every thread while it walks them."""
from __future__ import annotations

import gc

from scitq_app.server import freeze_startup_objects


def test_the_objects_made_at_start_are_left_out_of_the_collectors_passes():
    before = gc.get_freeze_count()
    made = [[i] for i in range(1000)]  # objects the collector tracks
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= before + len(made)
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in made)  # a full pass no longer walks them
    finally:
        gc.unfreeze()
