"""Prompt enhancer: a language model rewrites a short prompt into the detailed captions a video model was
trained on. This is the re-captioning of the Sora technical report ("Video generation models as world
simulators", 2024), after DALL-E 3 (Betker et al., 2023): a model trained on long, descriptive captions
follows a long description better than a few words, so a user's words are expanded by a language model at
generation time. Wan's prompt extension (Qwen2.5 instruct models) does the same.

The language model is any of:
- a local folder or a Hugging Face cache entry of an instruct model that transformers' AutoModelForCausalLM
  loads (its tokenizer's chat template formats the messages), run greedily so that a prompt always
  enhances the same way;
- a local server given by URL: an OpenAI-compatible one (vLLM, llama.cpp's server, LM Studio:
  `http://localhost:8000/v1`) or Ollama (`http://localhost:11434/api/chat`).

The system prompt is the loaded model's caption style: the embedded model's studio.json describes its world
(`ModelDefaults.enhancer_style`); other models take the general video caption style below.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_TIMEOUT_S = 60.0
MAX_NEW_TOKENS = 200  # an enhanced caption is a paragraph
MIN_NEW_TOKENS = 8
MAX_PROMPT_CHARS = 2000  # what is kept of an answer: a caption, not an essay

# After Wan's English prompt-extension instruction (Wan2.1 repository, wan/utils/prompt_extend.py), shortened.
GENERAL_STYLE = (
    "You rewrite a user's short prompt for a text-to-video model into the detailed caption style the model "
    "was trained on. Keep the user's subject, action and intent; add concrete detail about the subject's "
    "appearance, the motion over time, the setting, the lighting, the camera and the visual style. Write one "
    "paragraph of 50 to 120 words in plain English, present tense, describing only what is seen. Answer "
    "with the rewritten prompt alone: no preamble, no quotes, no lists."
)

HOW_TO_GET_ONE = (
    "give --enhancer a folder of an instruct model that transformers loads (for example Qwen2.5-3B-Instruct, "
    "downloaded with `hf download Qwen/Qwen2.5-3B-Instruct --local-dir models/qwen`), a hub id already in "
    "the local cache, or the URL of a local OpenAI-compatible server (http://localhost:8000/v1) or of "
    "Ollama (http://localhost:11434/api/chat)"
)


class EnhancerUnavailable(Exception):
    """No language model can be reached: the message says what was tried and how to get one."""


@dataclass(frozen=True)
class Enhanced:
    prompt: str  # the rewritten prompt
    original: str  # the prompt as the user wrote it
    source: str  # the language model: a folder, a hub id or a URL


def open_enhancer(source: str | None, device: str = "cpu") -> LocalModel | Endpoint:
    """The language model `source` names (a URL, a folder or a cached hub id). Raises EnhancerUnavailable."""
    if not source:
        raise EnhancerUnavailable(f"no language model is set for enhancing prompts: {HOW_TO_GET_ONE}")
    if urlparse(source).scheme in ("http", "https"):
        return Endpoint(source)
    return LocalModel(source, device)


def enhance(enhancer: LocalModel | Endpoint, prompt: str, style: str | None = None,
            timeout: float = DEFAULT_TIMEOUT_S) -> Enhanced:
    """`prompt` rewritten in `style` (a system prompt; None: GENERAL_STYLE). Raises ValueError for an empty
    prompt or answer, TimeoutError past `timeout` seconds, EnhancerUnavailable when the model cannot run."""
    if not prompt or not prompt.strip():
        raise ValueError("there is no prompt to enhance: write a few words first")
    answer = enhancer.complete(style or GENERAL_STYLE, prompt.strip(), timeout)
    rewritten = _clean(answer)
    if not rewritten:
        raise ValueError(f"the language model ({enhancer.source}) answered with no prompt; the prompt is unchanged")
    return Enhanced(rewritten, prompt, enhancer.source)


def _clean(answer: str) -> str:
    """The answer as one prompt: whitespace folded, wrapping quotes and a "Prompt:" label dropped."""
    text = " ".join(str(answer).split())
    for label in ("Enhanced prompt:", "Rewritten prompt:", "Prompt:"):
        if text.lower().startswith(label.lower()):
            text = text[len(label):].strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text[:MAX_PROMPT_CHARS].strip()


def _messages(style: str, prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": style}, {"role": "user", "content": prompt}]


# ---- a model transformers loads ---------------------------------------------------------------------------
class LocalModel:
    """An instruct model from a folder or the local Hugging Face cache (never downloaded here)."""

    def __init__(self, source: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.source = source
        folder = Path(source).expanduser()
        if not folder.is_dir() and (folder.is_absolute() or source.startswith(".") or source.count("/") != 1):
            raise EnhancerUnavailable(f"the enhancer's language model {source!r} is not a folder: {HOW_TO_GET_ONE}")
        where = str(folder) if folder.is_dir() else source
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as error:
            raise EnhancerUnavailable(f"the enhancer's language model {source!r} could not be loaded "
                                      f"({str(error).splitlines()[0]}): {HOW_TO_GET_ONE}") from error
        if not getattr(self.tokenizer, "chat_template", None):
            raise EnhancerUnavailable(f"{source!r} has no chat template: an instruct (chat) model is needed")
        self.model.to(device).eval()
        self._lock = threading.Lock()  # one generation at a time on the model

    def complete(self, style: str, prompt: str, timeout: float) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(_messages(style, prompt), add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True).to(self.model.device)
        with self._lock, torch.no_grad():
            # Greedy: a prompt enhances the same way every time. max_time: generate stops at the deadline.
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                         min_new_tokens=MIN_NEW_TOKENS, max_time=timeout,
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]  # (T_new,)
        return self.tokenizer.decode(new, skip_special_tokens=True)


# ---- a local server -----------------------------------------------------------------------------------------
class Endpoint:
    """A local chat server: Ollama when the URL's path is /api/chat, else OpenAI-compatible (the URL is its
    base, as `http://localhost:8000/v1`, or its /chat/completions itself)."""

    def __init__(self, url: str, model: str | None = None):
        self.source = url
        path = urlparse(url).path.rstrip("/")
        self.ollama = path.endswith("/api/chat")
        self.url = url if self.ollama or path.endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model = model

    def complete(self, style: str, prompt: str, timeout: float) -> str:
        body: dict[str, Any] = {"messages": _messages(style, prompt), "stream": False,
                                "model": self.model or ("llama3.2" if self.ollama else "default")}
        if self.ollama:
            body["options"] = {"temperature": 0}
        else:
            body["temperature"] = 0
        answer: dict[str, Any] = {}

        def ask() -> None:  # in a thread: a server that drips its answer must still end at the deadline
            try:
                request = urllib.request.Request(self.url, json.dumps(body).encode(), method="POST",
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    answer["data"] = json.loads(response.read(1 << 20))
            except Exception as error:  # noqa: BLE001 - reported to the caller below
                answer["error"] = error

        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive() or isinstance(answer.get("error"), TimeoutError):
            raise TimeoutError(f"the enhancer at {self.source} did not answer within {timeout:g} s; the prompt is "
                               "unchanged")
        if "error" in answer:
            error = answer["error"]
            reason = getattr(error, "reason", None) or error
            raise EnhancerUnavailable(f"the enhancer at {self.source} could not be reached ({reason}): {HOW_TO_GET_ONE}")
        return _content(answer.get("data"), self.source)


def _content(data: Any, source: str) -> str:
    """The answer's text: OpenAI's choices[0].message.content, or Ollama's message.content."""
    try:
        message = data["message"] if "message" in data else data["choices"][0]["message"]
        content = message["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise EnhancerUnavailable(f"the enhancer at {source} answered in a form that is neither OpenAI's nor "
                                  "Ollama's chat format") from error
    if not isinstance(content, str):
        raise EnhancerUnavailable(f"the enhancer at {source} answered with no text")
    return content
