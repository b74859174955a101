"""A small real workspace for the dashboard tests: data files, a learnability run on the tiny
fixture model (real scores, token losses, trajectories, S2L clusters), nothing synthetic."""

from __future__ import annotations

import json
from pathlib import Path

XSS = '<img src=x onerror="document.title=\'XSS-EXECUTED\'"><script>document.title="XSS-EXECUTED"</script>'

CHAT = [
    ("Give three tips for staying healthy.", "Eat a balanced diet, exercise, sleep well."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a function that doubles x.", "def f(x):\n    return x * 2\n"),
    ("Say something about foxes.", "The quick brown fox jumps over the lazy dog."),
    ("Summarise: the dog sleeps.", "A dog is sleeping."),
    ("Translate 'hello' to French.", "Bonjour."),
    ("Is this safe? " + XSS, "It is shown as text: " + XSS),
    ("Name a colour.", "Blue."),
    ("Count to five.", "1, 2, 3, 4, 5"),
    ("What do cats drink?", "Cats drink water, and some like milk."),
    ("Tell me a fact.", "Water boils at 100 degrees Celsius at sea level."),
    ("Give an antonym of hot.", "Cold."),
]
MATH = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?",
     "In May she sold 48 / 2 = 24 clips.\nAltogether 48 + 24 = 72.\n#### 72"),
    ("What is 1 + 1?", "1 + 1 = 2\n#### 2"),
    ("What is 2 * 3?", "2 * 3 = 6\n#### 6"),
    ("What is 10 / 4?", "10 / 4 = 2.5\n#### 2.5"),
    ("What is 7 + 5?", "7 + 5 = 12\n#### 12"),
    ("What is 9 - 4?", "9 - 4 = 5\n#### 5"),
    ("What is 3 * 3?", "3 * 3 = 9\n#### 9"),
    ("Half of 48?", "48 / 2 = 24\n#### 24"),
    ("What is 6 * 7?", "6 * 7 = 42\n#### 42"),
    ("What is 100 - 1?", "100 - 1 = 99\n#### 99"),
    ("What is 8 / 2?", "8 / 2 = 4\n#### 4"),
    ("What is 5 + 5 + 5?", "5 + 5 + 5 = 15\n#### 15"),
]


DEV_MATH = [("What is 4 + 4?", "4 + 4 = 8\n#### 8"), ("What is 12 / 3?", "12 / 3 = 4\n#### 4")]
DEV_CHAT = [("Name a vegetable.", "A carrot."), ("What is the capital of Spain?", "The capital of Spain is Madrid.")]


def write_data(ws: Path) -> list[str]:
    """The workspace data files (ShareGPT chat with one XSS probe, GSM8K-style math) as sources."""
    data = ws / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "chat.jsonl", "w") as f:
        for i, (q, a) in enumerate(CHAT):
            f.write(json.dumps({"id": f"c{i}", "conversations": [{"from": "human", "value": q},
                                                                   {"from": "gpt", "value": a}]}) + "\n")
    with open(data / "math.jsonl", "w") as f:
        for q, a in MATH:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    for d in ("runs", "selections", "exports", "validations", "mixes", "dev"):
        (ws / d).mkdir(exist_ok=True)
    with open(ws / "dev" / "math.jsonl", "w") as f:  # targets: like the pool's math, not in it
        for q, a in DEV_MATH:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    with open(ws / "dev" / "chat.jsonl", "w") as f:
        for q, a in DEV_CHAT:
            f.write(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
    return [f"chat={data / 'chat.jsonl'}", f"math={data / 'math.jsonl'}"]


EVAL_CHAT = [("Name a fruit.", "An apple."), ("What colour is the sky?", "The sky is blue."),
             ("Say hello in French.", "Bonjour."), ("What do dogs say?", "Dogs bark."),
             ("Give a synonym of big.", "Large."), ("What is ice?", "Frozen water.")]
EVAL_MATH = [(f"What is {k} + {k + 1}?", f"{k} + {k + 1} = {2 * k + 1}\n#### {2 * k + 1}") for k in range(20, 26)]


def build_scored_workspace(ws: Path, model_dir: Path) -> Path:
    """Data + eval sets + a finished learnability run with two reference runs (``runs/learn-fixture``),
    a saved davir selection and a finished validation of it, and a finished mix study of the run
    (``mixes/mix-fixture``), all on the tiny model; returns the run."""
    from curation.runs.learn import LearnConfig, run_learn
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from curation.validation.mix import MixConfig, run_mix
    from curation.validation.validate import ValidateConfig, run_validate

    sources = write_data(ws)
    cfg = LearnConfig(sources=sources, out=str(ws / "runs" / "learn-fixture"), model=str(model_dir),
                      checkpoints=2, epochs=2, device="cpu", dtype="float32", n_clusters=3,
                      cache=str(ws / "score-cache"), lr=1e-3, stability_runs=2)
    run = run_learn(cfg)
    (ws / "eval").mkdir(exist_ok=True)
    with open(ws / "eval" / "chat.jsonl", "w") as f:
        for q, a in EVAL_CHAT:
            f.write(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
    with open(ws / "eval" / "math.jsonl", "w") as f:
        for q, a in EVAL_MATH:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    sel = select_run(run, Recipe("davir", budget="50%"), ws / "selections" / "davir-fixture")
    run_validate(ValidateConfig(selections=[str(sel)], out=str(ws / "validations" / "validate-fixture"),
                                eval={"chat": str(ws / "eval" / "chat.jsonl"), "math": str(ws / "eval" / "math.jsonl")},
                                seeds=2, epochs=2, lr=1e-3, cache=str(ws / "score-cache"), device="cpu"))
    run_mix(MixConfig(run=str(run), out=str(ws / "mixes" / "mix-fixture"), budget="8", design="3", seeds=2, epochs=2,
                      lr=1e-3, bootstrap=100, cache=str(ws / "score-cache"), device="cpu",
                      eval={"chat": str(ws / "eval" / "chat.jsonl"), "math": str(ws / "eval" / "math.jsonl")}))
    return run


def build_pair_workspace(ws: Path, model_dir: Path) -> Path:
    """A workspace with preference pairs in ``pairs/`` (chat with ratings and an XSS probe in one
    pair's prompt and responses, math) and a finished pair run ``runs/pairs-fixture`` over them;
    returns the run.  The run is synthetic (tests.synthetic.make_pair_run, the design's layout, the
    tiny model's tokenizer) until the pair score run lands: swapping in the real one is the one line
    marked below."""
    from tests.synthetic import make_pair_run, write_pair_sources

    for d in ("data", "runs", "selections", "exports", "validations", "mixes", "dev", "eval"):
        (ws / d).mkdir(parents=True, exist_ok=True)
    sources = write_pair_sources(ws / "pairs", n_chat=12, n_math=12)
    return make_pair_run(ws / "runs" / "pairs-fixture", sources, model_dir=model_dir)  # the real run: swap this line
