"""Caps on the machines a provider holds for scitq, as the providers file declares them: in all
and per region ("*" for the regions not named; a number caps each region), and what a wrong
value says."""
from __future__ import annotations

import json
import os

import pytest

from scitq_app.cloud.provider import load_providers
from scitq_app.errors import ConfigError
from scitq_app.models import Caps


def providers(tmp_path, **caps) -> str:
    path = tmp_path / "providers.yaml"
    path.write_text(json.dumps([{"name": "p", "type": "tests.support.static_provider:StaticProvider",
                                 "flavors": [], **caps}]))
    os.chmod(path, 0o600)
    return str(path)


def test_caps_are_read_from_the_providers_file(tmp_path):
    p = load_providers(providers(tmp_path, max_machines=10, max_machines_per_region={"GRA11": 4, "*": 2}))["p"]
    assert p.caps == Caps(machines=10, per_region={"GRA11": 4, "*": 2})
    assert p.caps.room(held=9, held_in_region=0, region="GRA11") == 1
    assert p.caps.room(held=3, held_in_region=3, region="GRA11") == 1
    assert p.caps.room(held=3, held_in_region=3, region="SBG5") == -1
    p = load_providers(providers(tmp_path, max_machines_per_region=3))["p"]
    assert p.caps == Caps(per_region={"*": 3})
    assert load_providers(providers(tmp_path))["p"].caps.room(held=1000, held_in_region=1000, region="x") is None


@pytest.mark.parametrize("caps, says", [
    ({"max_machines": -1}, "max_machines must be a whole number, 0 or more"),
    ({"max_machines": "ten"}, "max_machines must be a whole number, 0 or more"),
    ({"max_machines": True}, "max_machines must be a whole number, 0 or more"),
    ({"max_machines_per_region": {"GRA11": 2.5}}, "max_machines_per_region[GRA11] must be a whole number"),
    ({"max_machines_per_region": "3"}, "max_machines_per_region must be a whole number"),
])
def test_a_wrong_cap_names_the_entry_and_the_key(tmp_path, caps, says):
    with pytest.raises(ConfigError) as e:
        load_providers(providers(tmp_path, **caps))
    assert "providers.yaml, entry 1: " + says in e.value.message
