"""The battery's two profiles: the CI one (part of the plain `pytest` run) and the long one (`pytest --long`).

docs/reliability.md sizes each test for 2 shared cores. The CI profile keeps the
counts it asks for (20 collector kills, 50 SDK kills, 200 partitions, 500
stateful examples) and shrinks the durations that would not fit a 30-minute CI
run: every shrunk figure is listed in docs/reliability.md next to its full
value, which the long profile uses. The long profile takes the nightly figures
where docs/reliability.md gives them (200 kills, 5,000 ev/s, a 10-minute outage,
10x fuzzing budgets) and the full durations elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CI", "LONG", "Profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # T1: collector kills under load, and the power-loss variant (kills per durability mode).
    t1_kills: int
    t1_rate_ev_s: int
    t1_power_kills: int
    # T2: SDK host kills over one workload.
    t2_kills: int
    t2_events: int
    # T3: outage length while the SDK tracks.
    t3_outage_s: float
    # T5: how long 429s last; the fleet's outage.
    t5_throttle_s: float
    t5_fleet_outage_s: float
    # T7: lost acknowledgements.
    t7_duration_s: float
    t7_rate_ev_s: int
    # T8: slow, then blackholed collector; slowloris connections.
    t8_slow_s: float
    t8_blackhole_s: float
    # T8: honest senders beside 300 slow bodies without credentials.
    t8_slow_bodies_s: float
    # T9: resets mid-body.
    t9_resets: int
    # T20: stateful examples per machine; seconds per atheris target; schemathesis examples per operation.
    t20_examples: int
    t20_fuzz_s: int
    t20_api_examples: int
    # pytest-timeout per battery test (pyproject: 300 s); the long profile's runs take longer.
    test_timeout_s: float


CI = Profile(
    name="ci",
    t1_kills=20,
    t1_rate_ev_s=2000,
    t1_power_kills=10,
    t2_kills=50,
    t2_events=10_000,
    t3_outage_s=30.0,  # long profile: 90 s
    t5_throttle_s=12.0,  # long profile: 30 s
    t5_fleet_outage_s=20.0,  # long profile: 60 s
    t7_duration_s=20.0,  # long profile: 60 s
    t7_rate_ev_s=1000,
    t8_slow_s=12.0,  # long profile: 60 s
    t8_blackhole_s=12.0,  # long profile: 60 s
    t8_slow_bodies_s=15.0,  # long profile: 120 s
    t9_resets=200,
    t20_examples=500,
    t20_fuzz_s=20,  # long profile: 5 min per target
    t20_api_examples=40,
    test_timeout_s=300.0,
)

LONG = Profile(
    name="long",
    t1_kills=200,
    t1_rate_ev_s=5000,
    t1_power_kills=50,
    t2_kills=200,
    t2_events=40_000,
    t3_outage_s=600.0,
    t5_throttle_s=30.0,
    t5_fleet_outage_s=60.0,
    t7_duration_s=60.0,
    t7_rate_ev_s=1000,
    t8_slow_s=60.0,
    t8_blackhole_s=60.0,
    t8_slow_bodies_s=120.0,
    t9_resets=2000,
    t20_examples=5000,
    t20_fuzz_s=300,
    t20_api_examples=400,
    test_timeout_s=3 * 3600.0,  # T1's 200 kills at 5,000 ev/s and T3's 10-minute outage run for many minutes
)
