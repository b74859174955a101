"""What this installation has, for the landing page: versions, the device, the default model."""

from __future__ import annotations

import platform

from curation import __version__


def info() -> dict:
    """Describe the installation without loading a model (fast enough for a page render)."""
    import torch

    from curation.scoring.models import DEFAULT_MODEL_NAME, ModelError, cache_dir, default_gguf_path

    cuda = torch.cuda.is_available()
    out = {
        "curation": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": "bfloat16" if cuda else "float32",
        "default_model": DEFAULT_MODEL_NAME,
    }
    try:
        gguf = default_gguf_path()
        out["default_model_file"] = str(gguf)
        prepared = sorted((cache_dir() / "models").glob(f"{gguf.stem}-*/model.safetensors"))
        out["default_model_prepared"] = str(prepared[0].parent) if prepared else None
    except ModelError as e:
        out["default_model_file"] = None
        out["default_model_error"] = str(e)
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        out["transformers"] = None
    return out
