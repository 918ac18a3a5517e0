"""The ``hf`` planner: a local causal language model run by transformers, no server needed.

``model`` is a Hugging Face id, a local folder, or a ``.gguf`` file (or a folder/id plus
``gguf_file=``; transformers de-quantizes GGUF weights when the ``gguf`` package is installed).
The prompt is laid out by the model's own chat template.

Decoding is constrained to the plan's JSON Schema with **xgrammar**'s transformers logits
processor (``xgrammar.contrib.hf.LogitsProcessor``), so even a very small model can only emit a
schema-valid object. xgrammar was chosen because it is maintained, ships wheels for Linux, macOS
and Windows, plugs into ``model.generate(logits_processor=[...])`` without patching transformers,
compiles a schema once per tokenizer (cached here), and was verified with transformers 5.x and
SmolLM2; ``lm-format-enforcer``'s transformers integration failed to import with transformers 5,
and ``outlines`` replaces ``generate`` with its own API. The schema given to the decoder carries
length and count bounds (:func:`~rpg.planners.schema.plan_schema` with ``bounded=True``) so a
reply fits in a modest ``max_new_tokens``. Without xgrammar the planner falls back to the text
template and the tolerant parser.

Loaded models are kept in a module-level cache keyed by (model, gguf file, revision, device,
dtype), so planners made again and again (one per request, per CLI call in a session, per test)
load the weights once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError
from rpg.planners.chat import ChatMessage, ChatPlanner, ChatRequest, ReplyMode
from rpg.planners.schema import plan_schema

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MODEL", "HFPlanner", "LoadedModel", "clear_loaded_models", "pick_device"]

log = logging.getLogger("rpg.planners")

#: A small instruct model that plans reasonably on a CPU.
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"

_TRUE = {"1", "true", "yes", "on"}
_HOW_TO = "pass a local model folder or a .gguf file"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and (when constrained decoding is available) its plan grammar."""

    model: Any
    tokenizer: Any
    grammar: Any | None = None


_LOADED: dict[tuple[str, str, str, str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def clear_loaded_models() -> None:
    """Forget every loaded model (frees their memory once nothing else refers to them)."""
    with _LOAD_LOCK:
        _LOADED.clear()


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def pick_device(device: str | None = None) -> str:
    """``device`` as given, else the best available: ``cuda``, then ``mps``, then ``cpu``
    (:func:`rpg.devices.resolve_device`)."""
    if device and device != "auto":
        return device
    from rpg.devices import resolve_device

    return str(resolve_device("auto"))


def _pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    """The dtype named (:func:`rpg.devices.dtype_named`: ``"bf16"`` works), else bfloat16 on
    GPUs that have it (LLMs are trained in it), float16 on MPS, float32 on the CPU."""
    import torch

    from rpg.devices import dtype_named

    if dtype and dtype != "auto":
        return dtype_named(dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32  # half precision is slow or unsupported for many CPU kernels


class HFPlanner(ChatPlanner):
    """Plans with a local transformers causal LM, constrained to the plan schema.

    A hub id is read from the local Hugging Face cache only, like the diffusion models: it is
    downloaded only with ``allow_download=True`` (CLI: ``--allow-download``) and never while
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set; otherwise planning fails at once with a
    :class:`~rpg.errors.ModelNotFoundError` that says how to get the model. ``local_files_only``
    is the older spelling (``False`` allows downloads). ``constrained`` is ``None`` to use
    xgrammar when it is installed, ``True`` to require it, ``False`` to decode freely (text
    template). ``temperature`` 0 decodes greedily. The model is loaded on the first
    :meth:`plan` (or :meth:`load`) and shared by every planner with the same model, file,
    revision, device and dtype.
    """

    name = "hf"
    supports_images = False

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        gguf_file: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int = 384,
        temperature: float = 0.0,
        constrained: bool | None = None,
        allow_download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        validation_retries: int = 2,
    ) -> None:
        source = str(model) if model is not None else DEFAULT_MODEL
        path = Path(source).expanduser()
        if gguf_file is None and path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise ModelNotFoundError(f"GGUF file not found: {path}")
            source, gguf_file = str(path.parent), path.name
        self.source = source
        self.gguf_file = gguf_file
        self.model = f"{source}/{gguf_file}" if gguf_file else source
        self.revision = revision
        self.device = pick_device(device)
        self.dtype = dtype or "auto"
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        if local_files_only is not None:
            allow_download = not local_files_only
        self.allow_download = allow_download and not _offline()
        self.local_files_only = not self.allow_download
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.trust_remote_code = trust_remote_code
        if constrained is None:
            constrained = _xgrammar_available()
        elif constrained and not _xgrammar_available():
            raise ConfigurationError(
                "constrained decoding needs xgrammar: pip install 'rpg-diffusion[local]'"
            )
        self.constrained = constrained
        super().__init__(structured=constrained, validation_retries=validation_retries)

    def __repr__(self) -> str:
        return f"HFPlanner(model={self.model!r}, device={self.device!r})"

    def cache_identity(self) -> dict[str, Any]:
        return {
            **super().cache_identity(),
            "revision": self.revision,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "constrained": self.constrained,
        }

    # -- loading

    def _key(self) -> tuple[str, str, str, str, str]:
        return (self.source, self.gguf_file or "", self.revision or "", self.device, self.dtype)

    def load(self) -> LoadedModel:
        """Load (once per process) the model, tokenizer and grammar, and return them."""
        key = self._key()
        with _LOAD_LOCK:
            loaded = _LOADED.get(key)
            if loaded is None:
                loaded = self._load()
                _LOADED[key] = loaded
            elif self.constrained and loaded.grammar is None:
                loaded.grammar = _compile_grammar(loaded)
        return loaded

    def resolve(self) -> None:
        """Check, without loading anything or touching the network, that the model can load.

        A local folder is used as it is; a hub id must be in the local Hugging Face cache unless
        downloads are allowed. :meth:`load` calls it first, so a missing model fails in
        milliseconds instead of after the hub client's retries.
        """
        from rpg.backbones.loading import hub_file, is_repo_id

        if Path(self.source).expanduser().is_dir():
            return
        if not is_repo_id(self.source):
            raise ModelNotFoundError(
                f"planner model {self.source!r} is neither a local folder nor a hub id like "
                f"'org/name'; {_HOW_TO}"
            )
        hub_file(
            self.source,
            self.gguf_file or "config.json",
            allow_download=self.allow_download,
            cache_dir=self.cache_dir,
            revision=self.revision,
            what="planner model",
            how_to=_HOW_TO,
        )

    def _load(self) -> LoadedModel:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:  # pragma: no cover - transformers is a core dependency
            raise ConfigurationError("the hf planner needs transformers") from None
        dtype = _pick_dtype(self.dtype, self.device)
        self.resolve()
        common: dict[str, Any] = {
            "local_files_only": self.local_files_only,
            "trust_remote_code": self.trust_remote_code,
        }
        if self.cache_dir is not None:
            common["cache_dir"] = self.cache_dir
        if self.revision:
            common["revision"] = self.revision
        if self.gguf_file:
            common["gguf_file"] = self.gguf_file
        log.info("loading %s on %s (%s)", self.model, self.device, dtype)
        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(self.source, **common)
            model: Any = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, **common)
        except OSError as exc:
            if self.local_files_only:
                raise ModelNotFoundError(
                    f"planner model {self.model!r} is not completely in the local Hugging Face "
                    f"cache and downloads are off; download it first ('hf download "
                    f"{self.source}') or allow it (--allow-download, allow_download=True), or "
                    f"{_HOW_TO}"
                ) from None
            raise ModelNotFoundError(
                f"could not load model {self.model!r}: {exc}".splitlines()[0]
            ) from None
        except ImportError as exc:  # e.g. a GGUF file without the gguf package
            raise ConfigurationError(f"cannot load {self.model!r}: {exc}".splitlines()[0]) from None
        model.to(self.device)
        model.eval()
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigurationError(
                f"{self.model!r} has no chat template; use an instruct/chat model"
            )
        loaded = LoadedModel(model=model, tokenizer=tokenizer)
        if self.constrained:
            loaded.grammar = _compile_grammar(loaded)
        return loaded

    # -- generation

    def _encode(self, tokenizer: Any, messages: list[ChatMessage]) -> Any:
        try:
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except Exception as exc:  # jinja2 TemplateError: e.g. a template without a system role
            if messages[0]["role"] != "system":
                raise PlannerError(f"the chat template of {self.model} failed: {exc}") from None
            merged = [
                {
                    "role": "user",
                    "content": f"{messages[0]['content']}\n\n{messages[1]['content']}",
                },
                *messages[2:],
            ]
            return tokenizer.apply_chat_template(
                merged, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )

    def _complete(self, request: ChatRequest) -> str:
        import torch

        loaded = self.load()
        tokenizer, model = loaded.tokenizer, loaded.model
        inputs = self._encode(tokenizer, request.messages).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
        kwargs["pad_token_id"] = pad if pad is not None else tokenizer.eos_token_id
        schema = request.mode is ReplyMode.SCHEMA and request.reply_format is None
        if schema and loaded.grammar is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # one processor per generate() call: it holds the matcher's state
            kwargs["logits_processor"] = [LogitsProcessor(loaded.grammar)]
        with torch.inference_mode():
            output = model.generate(**inputs, **kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text: str = tokenizer.decode(new_tokens, skip_special_tokens=True)
        if len(new_tokens) >= self.max_new_tokens:
            log.info("%s stopped at max_new_tokens=%d", self.planner_id, self.max_new_tokens)
        return text.strip()


def _xgrammar_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None


def _compile_grammar(loaded: LoadedModel) -> Any:
    import xgrammar as xgr

    # The logits may be wider than the tokenizer (padded embeddings): size the mask to them.
    vocab_size = int(loaded.model.get_output_embeddings().weight.shape[0])
    info = xgr.TokenizerInfo.from_huggingface(loaded.tokenizer, vocab_size=vocab_size)
    compiler = xgr.GrammarCompiler(info)
    # Compact JSON: free whitespace lets a small model waste its token budget on newlines.
    return compiler.compile_json_schema(json.dumps(plan_schema(bounded=True)), any_whitespace=False)
