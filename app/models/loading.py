"""Load a model for steering: ``load_model(spec=None, device=None) -> LoadedModel``.

``spec`` is a registry id, a local model directory, ``hub:<org>/<name>``, or None to let
``registry.auto_select`` pick; the pick and its reason are logged in one line.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.models import attention, kernels, registry

log = logging.getLogger(__name__)

# Config keys that say where or how a model was loaded, not what it is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
}


@dataclass
class LoadedModel:
    model_id: str  # registry id, or the local path given
    model: PreTrainedModel  # eval mode, on device
    tokenizer: PreTrainedTokenizerBase  # pad token set; padding_side="left"
    device: torch.device
    dtype: torch.dtype
    is_chat: bool  # the tokenizer has a chat template
    fingerprint: str  # stable short hex id: model id + config + hash of a few weight tensors
    reason: str  # the one log line of why this model was picked
    linear_kernel: str = "torch"  # matrix product behind nn.Linear (app.models.kernels.KernelChoice.summary)

    @property
    def config(self) -> Any:
        config: Any = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def format_prompt(self, user_text: str) -> str:
        """The chat-formatted prompt (generation prompt added) for chat models, else the text."""
        if not self.is_chat:
            return user_text
        messages = [{"role": "user", "content": user_text}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def pick_device(device: str | None) -> tuple[torch.device, torch.dtype]:
    """The device to load on (``device`` or the best one present) and its dtype."""
    if device is None:
        device = registry.detect_device().kind
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} asked for, but Apple MPS is not available here")
        return dev, torch.float16
    if dev.type != "cpu":
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev, torch.float32


def fingerprint(model_id: str, model: PreTrainedModel) -> str:
    """A short id that changes when the model changes and not when it is loaded again.

    Hashes the id, the config without load-time keys, and a few slices of weights rounded to
    bfloat16 (so a float32 CPU load and a bfloat16 GPU load of one checkpoint agree).
    """
    config = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest = hashlib.sha256(model_id.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    params = [p for _, p in model.named_parameters() if p.device.type != "meta"]  # not offloaded
    for tensor in (params[0], params[len(params) // 2], params[-1]):
        dense = kernels.dense_parameter(model, tensor)  # a packed or panel weight in torch's layout
        piece = dense.detach().reshape(-1)[:4096].to("cpu", torch.bfloat16)
        digest.update(piece.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def _tensors(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """Every parameter and buffer that has a storage, once (tied weights are one tensor).

    oneDNN's packed weights (an opaque layout) have no storage to look at and are left out."""
    found: dict[int, tuple[torch.nn.Module, str, torch.Tensor]] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.layout == torch.strided:
                    found.setdefault(id(tensor), (module, name, tensor))
    return list(found.values())


MAPS = Path("/proc/self/maps")  # the process's memory map (Linux)


def _mapped_checkpoints() -> list[tuple[int, int]]:
    """Address ranges where checkpoint files (``*.safetensors``) are mapped into this process."""
    try:
        lines = MAPS.read_text().splitlines()
    except OSError:  # no /proc (macOS, Windows): nothing is known to be mapped
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def _leave_the_file(model: torch.nn.Module) -> int:
    """Copy the tensors still in a mapped checkpoint file, when they are the smaller part.

    On a CPU, transformers maps the checkpoint file into memory and the weights are views of it.
    Packing (:mod:`app.models.kernels`) replaces most weights by copies, but the rest (embedding,
    norms) keeps the whole mapping alive, and every page that packing read stays resident: the
    process then counts most weights twice (Qwen 0.5B: 2.0 GB of file pages beside 2.4 GB of
    copies). Copying what is left lets the mapping go. When most weights are still in the file
    (torch's kernel), nothing is copied: the file's pages are then the weights themselves. Tied
    weights stay tied (a parameter's ``data`` is replaced in place), views stay views of one copy.
    Where the memory map cannot be read, nothing is done. Returns the bytes copied.
    """
    ranges = _mapped_checkpoints()
    tensors = _tensors(model)
    in_file: dict[int, list[tuple[torch.nn.Module, str, torch.Tensor]]] = {}
    for module, name, tensor in tensors:
        address = tensor.untyped_storage().data_ptr()
        if any(low <= address < high for low, high in ranges):
            in_file.setdefault(address, []).append((module, name, tensor))
    left = sum(users[0][2].untyped_storage().nbytes() for users in in_file.values())
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))  # packed ones too
    if not in_file or 2 * left > total:
        return 0
    for users in in_file.values():
        copy = users[0][2].untyped_storage().clone()  # one copy per storage: views stay views of it
        for module, name, tensor in users:
            moved = torch.empty(0, dtype=tensor.dtype).set_(
                copy, tensor.storage_offset(), tensor.shape, tensor.stride()
            )
            if isinstance(tensor, torch.nn.Parameter):
                tensor.data = moved
            else:
                module._buffers[name] = moved
    return left


def _give_back_freed_memory() -> None:
    """Hand the memory freed while packing back to the system.

    glibc keeps freed blocks for reuse, and after packing it kept up to 0.9 GB of Qwen 0.5B's
    (2 loads in 5), which the process then showed as resident. A C library without
    ``malloc_trim`` (macOS) keeps its own ways."""
    try:
        trim = _c_library().malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _c_library() -> Any:
    return ctypes.CDLL(None)  # the C library the process runs on


def load_model(spec: str | None = None, device: str | None = None) -> LoadedModel:
    """Load ``spec`` (id, local dir, ``hub:org/name``, or None for auto-selection) for steering.

    Raises:
        ValueError: unknown id or a path that is not a model; a device that is not present.
        registry.ModelNotAvailable: the model is not available here (the message says how to get it).
    """
    dev, dtype = pick_device(device)
    info = registry.detect_device(str(dev) if device else None) if spec is None else None
    resolved = registry.resolve_model(spec, info)
    log.info("%s", resolved.reason)

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(resolved.source)
    tokenizer.padding_side = "left"  # batched generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # device_map="auto" lets accelerate spread a big model over several GPUs.
    placement: dict[str, str] = {"device_map": "auto"} if dev.type == "cuda" and dev.index is None else {}
    model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=dtype, **placement)
    if not placement:
        model.to(dev)  # type: ignore[arg-type]  # transformers' stub types .to() for dtypes only
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    first: torch.device = model.get_input_embeddings().weight.device  # type: ignore[assignment]
    model_print = fingerprint(resolved.model_id, model)  # before packing: no weight to put back in torch's layout
    kernel = kernels.tune(model, first, dtype)
    if first.type == "cpu":
        _leave_the_file(model)  # after packing: what is left of the checkpoint's file mapping
        _give_back_freed_memory()
        attention.install(model)  # where our products make a row's result independent of its batch
    loaded = LoadedModel(
        model_id=resolved.model_id,
        model=model,
        tokenizer=tokenizer,
        device=first,
        dtype=dtype,
        is_chat=bool(getattr(tokenizer, "chat_template", None)),
        fingerprint=model_print,
        reason=resolved.reason,
        linear_kernel=kernel.summary,
    )
    log.info(
        "loaded %s from %s on %s (%s, linear kernel: %s) in %.1f s",
        loaded.model_id,
        resolved.source,
        first,
        str(dtype).removeprefix("torch."),
        kernel.summary,
        time.monotonic() - started,
    )
    return loaded
