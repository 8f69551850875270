"""Hypothesis budgets for the fuzzers in this directory.

CI runs a small, derandomized budget (the same examples on every run, so a red build is a real
regression, not bad luck). A long run explores far more, with fresh randomness each time:

    TUSFAST_FUZZ=long python -m pytest tests/reliability/test_stateful_fuzz.py \
        tests/reliability/test_parser_fuzz.py

`TUSFAST_FUZZ_EXAMPLES=N` overrides the example count of either profile (e.g. for a night-long run);
`TUSFAST_FUZZ_SHRINK=0` reports a failure as found instead of shrinking it (shrinking a long
stateful run against a live server can take many minutes).
Profiles are built here as settings objects and never loaded globally, so other tests keep theirs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

LONG = os.environ.get("TUSFAST_FUZZ", "").strip().lower() == "long"
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

# deadline=None everywhere: a live server's timing is not what these tests judge (and a hang is
# caught by socket timeouts or an alarm, not by hypothesis' per-example deadline).
settings.register_profile("tusfast-fuzz-ci", deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_SLOW_OK)
settings.register_profile("tusfast-fuzz-long", deadline=None, derandomize=False, print_blob=True,
                          suppress_health_check=_SLOW_OK)
PROFILE = settings.get_profile("tusfast-fuzz-long" if LONG else "tusfast-fuzz-ci")


def budget(ci: int, long: int) -> int:
    override = os.environ.get("TUSFAST_FUZZ_EXAMPLES")
    if override:
        return int(override)
    return long if LONG else ci


def fuzz_settings(ci_examples: int, long_examples: int, ci_steps: int | None = None,
                  long_steps: int | None = None) -> settings:
    """Settings for one fuzz test: the profile plus its example (and, for state machines, step) budget."""
    chosen = settings(PROFILE, max_examples=budget(ci_examples, long_examples))
    if ci_steps is not None and long_steps is not None:
        chosen = settings(chosen, stateful_step_count=long_steps if LONG else ci_steps)
    if os.environ.get("TUSFAST_FUZZ_SHRINK", "1") == "0":     # report the first failure as found
        chosen = settings(chosen, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    return chosen
