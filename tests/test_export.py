"""Export: reload equality for every input format x style x output format, manifest, atomicity."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from curation.export.writer import ExportConfig, ExportError, download_payload, export_selection, load_export
from curation.data.load import example_id
from curation.selection.folder import select_run
from curation.selection.recipe import Recipe
from tests.conftest import math_rows, write_jsonl
from tests.synthetic import make_run, make_selection


@pytest.fixture(scope="module")
def four_sources(tmp_path_factory):
    """One source per input file type, each with its own record shape."""
    d = tmp_path_factory.mktemp("sources")
    gsm = write_jsonl(d / "gsm.jsonl", [
        {"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(20)])
    alpaca = d / "alpaca.json"
    alpaca.write_text(json.dumps([
        {"instruction": f"Describe colour number {k}.", "input": "" if k % 2 else f"in {k} words",
         "output": f"Colour {k} is a \"warm\" shade,\nlike ünïcödé 🦊 sunsets."} for k in range(20)],
        ensure_ascii=False))
    conv = d / "conv.parquet"
    pd.DataFrame({"messages": [[{"role": "user", "content": f"Hi {k}"}, {"role": "assistant", "content": f"Hello {k}!"},
                                {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Sure, " * k + "done."}]
                               for k in range(20)]}).to_parquet(conv, index=False)
    tips = d / "tips.csv"
    with tips.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "response"])
        w.writeheader()
        for k in range(20):
            w.writerow({"prompt": f"Tip {k}, please", "response": f"Tip {k}: drink water, \"often\", k={k}."})
    return {"math": gsm, "chat": alpaca, "conv": conv, "tips": tips}


@pytest.fixture(scope="module")
def selection(four_sources, tmp_path_factory):
    d = tmp_path_factory.mktemp("sel")
    run = make_run(d / "run", [f"{k}={v}" for k, v in four_sources.items()], seed=4)
    return select_run(run, Recipe("davir", budget="40%", mix="natural"), d / "sel")


def original_records(four_sources) -> dict[tuple[str, int], dict]:
    out = {}
    for k, p in four_sources.items():
        if p.suffix == ".jsonl":
            recs = [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".json":
            recs = json.loads(p.read_text())
        elif p.suffix == ".parquet":
            recs = pd.read_parquet(p).to_dict("records")
            recs = [{"messages": [dict(m) for m in r["messages"]]} for r in recs]
        else:
            recs = list(csv.DictReader(p.open(newline="")))
        for i, r in enumerate(recs):
            out[(p.name, i)] = r
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
@pytest.mark.parametrize("style", ["original", "messages"])
def test_export_reloads_exactly_the_selected_rows(selection, four_sources, tmp_path, fmt, style):
    out = export_selection(ExportConfig(str(selection), str(tmp_path / "exp"), fmt, style))
    selected = pd.read_parquet(selection / "selected.parquet")
    assert set(selected["domain"]) == {"math", "chat", "conv", "tips"}
    ds = load_export(out)
    assert len(ds) == len(selected)
    originals = original_records(four_sources)
    for row, sel in zip(ds, selected.itertuples()):
        orig = originals[(sel.source, sel.source_index)]
        if style == "original":
            # exactly the source record; columns other sources bring in are null here
            assert {k: row[k] for k in orig} == orig
            assert all(row[k] is None for k in row if k not in orig)
        else:
            assert list(row) == ["messages"]
            assert example_id(row["messages"]) == sel.example_id
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["example_id"] for e in manifest["examples"]] == selected["example_id"].tolist()
    assert manifest["counts"]["examples"] == len(selected)
    assert manifest["counts"]["by_domain"]["math"]["examples"] == int((selected["domain"] == "math").sum())
    assert manifest["counts"]["tokens"] == int(selected["n_tokens"].sum())
    assert manifest["recipe"]["method"] == "davir" and manifest["format"] == fmt and manifest["style"] == style
    assert manifest["provenance"]["model"]["fingerprint"] == "sha256:synthetic"
    assert manifest["code_version"]["source_fingerprint"].startswith("sha256:")
    assert all(e["content_sha256"].startswith("sha256:") for e in manifest["examples"])


def test_jsonl_original_lines_reparse_to_the_source_objects(selection, four_sources, tmp_path):
    out = export_selection(ExportConfig(str(selection), str(tmp_path / "exp"), "jsonl", "original"))
    selected = pd.read_parquet(selection / "selected.parquet")
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    originals = original_records(four_sources)
    assert [json.loads(x) for x in lines] == [originals[(s.source, s.source_index)] for s in selected.itertuples()]


def test_export_refuses_a_changed_source_and_leaves_nothing(four_sources, tmp_path):
    src = tmp_path / "gsm.jsonl"
    src.write_text(four_sources["math"].read_text())
    run = make_run(tmp_path / "run", [f"math={src}"])
    sel = select_run(run, Recipe("davir", budget="5"), tmp_path / "sel")
    src.write_text(src.read_text().replace("What is", "What's"))
    with pytest.raises(ExportError, match="changed since the run"):
        export_selection(ExportConfig(str(sel), str(tmp_path / "exp")))
    assert not (tmp_path / "exp").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]  # no temp folder left behind


def test_export_replaces_a_previous_export_atomically(selection, tmp_path):
    out = tmp_path / "exp"
    export_selection(ExportConfig(str(selection), str(out), "jsonl", "messages"))
    export_selection(ExportConfig(str(selection), str(out), "parquet", "messages"))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "train.parquet"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="does not hold a previous export"):
        export_selection(ExportConfig(str(selection), str(tmp_path / "other")))


def test_export_config_and_folder_errors(tmp_path):
    with pytest.raises(ExportError, match="format 'csv'"):
        ExportConfig("s", "o", format="csv")
    with pytest.raises(ExportError, match="style 'alpaca'"):
        ExportConfig("s", "o", style="alpaca")
    with pytest.raises(ExportError, match="not a selection folder: selected.parquet is missing"):
        export_selection(ExportConfig(str(tmp_path), str(tmp_path / "o")))


@pytest.mark.integration
def test_done_means_on_real_rows(default_pool, tmp_path, capsys):
    """select davir 10% chat=0.5,math=0.5, export jsonl messages: half chat, half math, top davir."""
    import datasets

    from curation.cli import main

    run = make_run(tmp_path / "run", [f"math={default_pool['math']}", f"chat={default_pool['chat']}"], limit=100)
    assert main(["select", str(run), "--method", "davir", "--budget", "10%", "--mix", "chat=0.5,math=0.5",
                 "--out", str(tmp_path / "sel")]) == 0
    assert main(["export", str(tmp_path / "sel"), "--format", "jsonl", "--style", "messages",
                 "--out", str(tmp_path / "exp")]) == 0
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "exp" / "train.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    scores = pd.read_parquet(run / "scores.parquet")
    selected = pd.read_parquet(tmp_path / "sel" / "selected.parquet")
    ids = [example_id(r["messages"]) for r in ds]
    assert ids == selected["example_id"].tolist() and len(ids) == 20
    by_domain = scores.set_index("example_id").loc[ids, "domain"].value_counts().to_dict()
    assert by_domain == {"chat": 10, "math": 10}
    for d in ("chat", "math"):
        top = scores[scores["domain"] == d].nlargest(10, "davir")["example_id"]
        assert set(top) == set(selected.loc[selected["domain"] == d, "example_id"])


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    """A failure while writing (here: one column with two types) leaves no half-written folder."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": k, "question": f"q{k}?", "answer": f"a{k}"} for k in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"x{k}", "question": f"Q{k}?", "answer": f"A{k}"} for k in range(5)])
    run = make_run(tmp_path / "run", [f"math={a}", f"chat={b}"])
    sel = select_run(run, Recipe("davir", budget="100%"), tmp_path / "sel")
    out = tmp_path / "exp"
    export_selection(ExportConfig(str(sel), str(out), "jsonl", "messages"))
    before = (out / "manifest.json").read_text()
    with pytest.raises(ExportError, match="different types in different sources.*--style messages"):
        export_selection(ExportConfig(str(sel), str(out), "parquet", "original"))
    assert (out / "manifest.json").read_text() == before and (out / "train.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "exp", "run", "sel"]


def test_cli_export_errors(tmp_path, capsys):
    from curation.cli import main

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a selection folder" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# Preference pairs: --style dpo (TRL DPOTrainer's rows) and original


@pytest.fixture(scope="module")
def pair_selection(tmp_path_factory):
    from tests.synthetic import make_pair_run, write_pair_sources

    d = tmp_path_factory.mktemp("pairsel")
    run = make_pair_run(d / "run", write_pair_sources(d / "src"))
    return select_run(run, Recipe("reward_margin", budget="40%", decisions="none"), d / "sel")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_a_dpo_export_loads_back_as_exactly_the_selected_pairs(pair_selection, tmp_path, fmt):
    from curation.data.pairs import pair_id

    out = export_selection(ExportConfig(str(pair_selection), str(tmp_path / "exp"), fmt))  # dpo: a pair's default
    selected = pd.read_parquet(pair_selection / "selected.parquet")
    ds = load_export(out)
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    ids = [pair_id(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in ds]
    assert ids == selected["example_id"].tolist()
    assert all(r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user"
               for r in ds)
    m = json.loads((out / "manifest.json").read_text())
    assert m["data"] == "pairs" and m["style"] == "dpo" and m["counts"]["examples"] == len(selected)
    assert m["counts"]["tokens"] == int(selected["n_tokens"].sum())
    card = (out / "README.md").read_text()
    assert f"{len(selected)} preference pairs" in card and "- dpo" in card and "| domain | pairs | tokens |" in card
    assert "TRL's `DPOTrainer` takes them as they are" in card and "Method **reward_margin** (high first)" in card


def test_a_dpo_jsonl_is_read_by_datasets_and_by_the_pair_loader_as_the_same_pairs(pair_selection, tmp_path):
    import datasets

    from curation.data.load import SourceSpec
    from curation.data.pairs import load_pairs

    out = export_selection(ExportConfig(str(pair_selection), str(tmp_path / "exp"), "jsonl", "dpo"))
    ds = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    selected = pd.read_parquet(pair_selection / "selected.parquet")
    again = load_pairs([SourceSpec(str(out / "train.jsonl"), domain="x")])
    assert [p.pair_id for p in again.pairs] == selected["example_id"].tolist() and not again.rejected
    assert len(ds) == len(selected) and ds[0]["chosen"] == [{"role": "assistant", "content": again.pairs[0].chosen}]


def test_a_pair_selection_exports_its_source_rows_as_they_were(pair_selection, tmp_path):
    with pytest.raises(ExportError, match="different types in different sources; export with --style dpo"):
        export_selection(ExportConfig(str(pair_selection), str(tmp_path / "exp"), "jsonl", "original"))
    run = json.loads((pair_selection / "summary.json").read_text())["run"]["dir"]
    chat = select_run(run, Recipe("reward_margin", budget="10", mix="chat=1,math=0", decisions="none"), tmp_path / "sel")
    out = export_selection(ExportConfig(str(chat), str(tmp_path / "exp"), "jsonl", "original"))
    selected = pd.read_parquet(chat / "selected.parquet")
    src = json.loads((chat / "summary.json").read_text())["run"]["sources"]
    files = {s["source"]: s["abs_path"] for s in src}
    want = [json.loads(open(files[r.source]).read().splitlines()[r.source_index]) for r in selected.itertuples()]
    assert [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()] == want


def test_cli_export_of_a_pair_selection_says_pairs_and_dpo(pair_selection, tmp_path, capsys):
    from curation.cli import main

    assert main(["export", str(pair_selection), "--out", str(tmp_path / "exp")]) == 0
    n = len(pd.read_parquet(pair_selection / "selected.parquet"))
    assert capsys.readouterr().out.startswith(f"exported {n} pairs (chat ")
    assert main(["export", str(pair_selection), "--style", "messages", "--out", str(tmp_path / "exp2")]) == 2
    err = capsys.readouterr().err
    assert "holds preference pairs; --style messages writes SFT examples" in err and "Traceback" not in err


def test_sft_styles_on_pairs_and_dpo_on_sft_examples_are_refused_in_one_line(pair_selection, selection, tmp_path):
    for style in ("messages", "prompt-completion"):
        with pytest.raises(ExportError, match=f"holds preference pairs; --style {style} writes SFT examples: use "
                                              "--style dpo or original"):
            export_selection(ExportConfig(str(pair_selection), str(tmp_path / "exp"), "jsonl", style))
    with pytest.raises(ExportError, match="holds SFT examples; --style dpo writes preference pairs: use --style "
                                          "messages or prompt-completion or original"):
        export_selection(ExportConfig(str(selection), str(tmp_path / "exp"), "jsonl", "dpo"))
    assert not (tmp_path / "exp").exists()


@pytest.mark.integration
def test_trls_dpo_trainer_loads_a_dpo_export_and_trains_a_tiny_model_a_step(pair_selection, tmp_path, tiny_model_dir):
    """The export is DPOTrainer's own format: trl (1.16, requirements.txt) tokenizes it with the chat
    template and takes an optimizer step on the tiny fixture model, without any conversion."""
    import numpy as np

    pytest.importorskip("trl", reason="TRL is a test dependency (requirements.txt); make setup installs it")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ds = load_export(export_selection(ExportConfig(str(pair_selection), str(tmp_path / "exp"), "jsonl", "dpo")))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, learning_rate=1e-3, dataloader_num_workers=0,
                     beta=0.1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    before = next(model.parameters()).detach().clone()
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
    assert not next(model.parameters()).detach().equal(before)  # the step changed the weights


def test_a_killed_exports_leftovers_are_removed_and_reported(tmp_path, capsys):
    import os

    from curation.cli import main

    data = write_jsonl(tmp_path / "qa.jsonl", math_rows(6))
    run = make_run(tmp_path / "run", [f"math={data}"])
    select_run(run, Recipe("davir", budget="3"), tmp_path / "sel")
    dead_pid = 2 ** 22 + 12345  # above the kernel's pid range: never running
    for name in (f".exp.{dead_pid}-abcd.tmp", f".exp.{dead_pid}-ef01.old"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "data.arrow").write_bytes(b"x" * 2_000_000)
    alive = tmp_path / f".exp.{os.getpid()}-9999.tmp"  # a writer still running: left alone
    alive.mkdir()
    assert main(["export", str(tmp_path / "sel"), "--out", str(tmp_path / "exp")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: removed .exp.") == 2 and "(2.0 MB)" in err and "killed" in err
    assert sorted(p.name for p in tmp_path.glob(".exp.*")) == [alive.name]


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "manifest.json", "train.jsonl"])
def test_an_export_serves_only_its_own_data_file(tmp_path, name):
    run, sel = make_selection(tmp_path)
    out = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "exp")))
    manifest = json.loads((out / "manifest.json").read_text())
    if name == "train.jsonl":  # the right name, but a link to a file outside the export
        (out / "train.jsonl").unlink()
        (out / "train.jsonl").symlink_to("/etc/hosts")
    manifest["files"]["data"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    for read in (download_payload, load_export):
        with pytest.raises(ExportError, match="not a data file of this export"):
            read(out)


def test_non_finite_numbers_export_as_strict_json(tmp_path):
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(f'{{"question": "What is {k}?", "answer": "{k}", "weight": {v}}}\n'
                           for k, v in enumerate(["NaN", "Infinity", "-Infinity", "1.5"] * 3)))
    run = make_run(tmp_path / "run", [f"math={src}"])
    sel = select_run(run, Recipe("random", budget="12"), tmp_path / "sel")
    notes = []
    out = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "exp"), style="original"), notes=notes)

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")

    rows = [json.loads(line, parse_constant=strict) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted(map(str, (r["weight"] for r in rows))) == ["1.5"] * 3 + ["None"] * 9
    m = json.loads((out / "manifest.json").read_text())
    assert m["non_finite_values"]["count"] == 9 and any("written as null" in n for n in notes)
