"""The command line's own pieces: the progress bars."""

from __future__ import annotations

from curation.cli import TqdmProgress
from curation.progress import Reporter


def test_every_phase_that_counts_done_of_a_total_gets_a_bar_in_its_unit(capsys):
    bars = TqdmProgress()
    report = Reporter(bars)  # as a run reports: the whole state on every update
    report(phase="loading data", done=0, total=3)  # no unit: a line, not a bar
    report(phase="evaluating held-out loss", done=0, total=4, unit="trainings")  # no name prefix to guess from
    assert bars.bar is not None and bars.bar.unit == "trainings" and bars.bar.total == 4
    report(done=3)
    assert bars.bar.n == 3
    report(phase="scoring checkpoint 0/2", done=0, total=10, unit="examples")
    assert bars.bar.unit == "ex" and bars.bar.desc == "scoring checkpoint 0/2"
    report(phase="training reference model", done=2, total=8, unit="steps", train_loss=1.5, tokens_per_s=10.0)
    assert bars.bar.unit == "step" and bars.bar.n == 2 and "loss 1.5000" in bars.bar.postfix
    report(phase="writing tables")
    assert bars.bar is None
    bars.close()
    err = capsys.readouterr().err
    assert "[loading data]" in err and "[writing tables]" in err and "[evaluating" not in err

