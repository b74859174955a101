"""The run folder of a pair run: the generic columns its score table gains, prompts as its texts,
pairs re-read from their sources and checked against their ids, per-response token losses."""

from __future__ import annotations

import pandas as pd
import pytest

from curation.runs.folder import Run, SourceChanged, read_pairs
from curation.runs.pair_tables import with_generic_columns
from tests.synthetic import make_pair_run, write_pair_sources


@pytest.fixture
def pair_run(tmp_path):
    return Run(make_pair_run(tmp_path / "run", write_pair_sources(tmp_path / "src")))


def test_a_pair_runs_scores_gain_example_id_and_both_responses_tokens(pair_run):
    raw = pd.read_parquet(pair_run.path / Run.SCORES)
    assert "example_id" not in raw.columns and "n_response_tokens" not in raw.columns  # the design's layout
    df = pair_run.scores()
    assert pair_run.holds_pairs and (df["example_id"] == df["pair_id"]).all()
    assert (df["n_response_tokens"] == raw["n_chosen_tokens"] + raw["n_rejected_tokens"]).all()
    assert with_generic_columns(df).equals(df)  # columns already there are left as they are


def test_a_pair_runs_texts_are_its_prompts_and_search_reads_both_responses(pair_run):
    pairs = {p.pair_id: p for p in pair_run.load_pairs()}
    texts = pair_run.texts()
    assert set(texts) == set(pair_run.scores()["example_id"])
    assert all(texts[i] == pairs[i].prompt[-1]["content"] for i in texts)  # one user turn: the prompt's text
    blue = pair_run.search("are blue")  # only in rejected responses
    assert blue == {i for i, p in pairs.items() if "are blue" in p.rejected}


def test_a_pair_is_reread_with_its_ratings_and_a_changed_source_is_refused(pair_run, tmp_path):
    row = pair_run.scores().iloc[2]
    pair = pair_run.pair(row["source"], row["source_index"], row["pair_id"])
    assert pair.pair_id == row["pair_id"] and pair.rating_margin == row["rating_margin"] and "XSS" in pair.chosen
    tokens = pair_run.pair_token_losses(row["pair_id"])
    assert set(tokens) == {"chosen", "rejected"} and tokens["chosen"]["example_id"] == pair.sft_id("chosen")
    src = tmp_path / "src" / "chat_pairs.jsonl"
    src.write_text(src.read_text().replace("Is this safe?", "Is this fine?"))
    with pytest.raises(SourceChanged, match="changed since the run scored it"):
        read_pairs(pair_run.meta(), [row.to_dict()])  # the file's fingerprint
    with pytest.raises(SourceChanged, match=r"#2: its content no longer matches pair"):
        pair_run.pair(row["source"], row["source_index"], row["pair_id"])  # the pair itself
