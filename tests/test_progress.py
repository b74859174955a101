"""The one progress shape and how its numbers are shown."""

from __future__ import annotations


def test_durations_are_formatted_once_for_the_cli_and_the_dashboard():
    from curation.progress import format_duration

    assert [format_duration(x) for x in (None, float("nan"), 0, 42.4, 185, 3725)] == ["-", "-", "0s", "42s", "3m 05s",
                                                                                     "1h 02m"]
    assert format_duration(None, "–") == "–"
