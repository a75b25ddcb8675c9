"""The worker protocol's timing as the fleet grows (beats.rhythm)."""
from __future__ import annotations

from scitq_app.beats import rhythm


def test_a_small_fleet_keeps_the_configured_timing(config):
    r = rhythm(100, config)
    assert (r.heartbeat, r.lease, r.offline_after, r.come_back) == (
        config.worker.heartbeat, config.dispatcher.lease, config.dispatcher.offline_after, config.server.claim_wait)


def test_a_large_fleet_beats_less_often_with_longer_leases(config):
    rate = config.server.heartbeat_rate
    for fleet in (2_000, 5_000, 20_000):
        r = rhythm(fleet, config)
        # the whole fleet sends heartbeat_rate beats a second, not more
        assert fleet / r.heartbeat == rate
        assert r.lease >= 3 * r.heartbeat and r.offline_after >= 2 * r.lease
        assert r.come_back == min(60.0, fleet / rate)
    assert rhythm(5_000, config).heartbeat < rhythm(20_000, config).heartbeat
