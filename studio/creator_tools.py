"""The studio's creator tools shared by every tab: the LoRA picker (the LoRA folder's files, and LoRAs a page
uploads for itself) and the prompt enhancer. What a page picks here is kept per session on the server
(`remember`) rather than sent with each generation, so that every endpoint keeps the inputs API clients send."""

from __future__ import annotations

import collections
import logging
import threading
import traceback
from pathlib import Path
from typing import Any

import gradio as gr

from studio.widgets import number

log = logging.getLogger("studio.app")

LORA_SLOTS = 4  # LoRAs one generation may stack from the studio (the command line takes up to 8)
NO_LORA = "(none)"
UPLOADED = "uploaded/"  # an uploaded LoRA's picker value: the prefix, then its file name (the folder's have no "/")
# What a page sets besides its tab's widgets, kept for its session: the LoRA picker's slots, the LoRAs it
# uploaded, and the record of the prompt the enhancer last wrote.
LORA_KEYS = (*(f"lora_{k}" for k in range(1, LORA_SLOTS + 1)), *(f"lora_strength_{k}" for k in range(1, LORA_SLOTS + 1)))
CREATOR = (*LORA_KEYS, "enhanced")  # what a request reads from the page besides its tab's widgets
KEPT = (*CREATOR, "lora_uploads")
KEPT_SESSIONS = 4096  # sessions whose picks are kept (the oldest forgotten first)
LORA_MARKS = ("lora", "lokr", "loha")  # a LoRA file's tensor names carry one (peft, kohya, musubi, diffusers)


class CreatorTools:
    def __init__(self, history: Any, info: Any, loras: Path | None, enhancer: str | None):
        self.history = history
        self.info = info
        self.loras = loras  # the folder the LoRA picker lists (launch.py --loras)
        self.enhancer_source = enhancer  # the prompt enhancer's language model (launch.py --enhancer), if any
        self._enhancer = None  # opened on first use
        self._enhancing = threading.Lock()  # one language model call at a time
        self._picks: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()  # by session
        self._picks_lock = threading.Lock()

    # what a page set, kept for its session -------------------------------------------------------------
    def remember(self, request: gr.Request | None, **values: Any) -> None:
        session = getattr(request, "session_hash", None)
        if not session:  # an API call without a session has no page whose picks to keep
            return
        with self._picks_lock:
            picks = self._picks.pop(session, {})
            picks.update({k: v for k, v in values.items() if k in KEPT})
            self._picks[session] = picks
            while len(self._picks) > KEPT_SESSIONS:
                self._picks.popitem(last=False)

    def picks(self, request: gr.Request | None) -> dict[str, Any]:
        """This session's picks: its LoRAs and enhanced prompt (another session's are never read)."""
        session = getattr(request, "session_hash", None)
        with self._picks_lock:
            return dict(self._picks.get(session, {})) if session else {}

    # LoRAs ---------------------------------------------------------------------------------------------
    def lora_files(self) -> list[str]:
        """The LoRA folder's .safetensors files, by name: the only ones the picker offers or a request takes."""
        if self.loras is None or not self.loras.is_dir():
            return []
        return sorted(p.name for p in self.loras.iterdir() if p.suffix == ".safetensors" and p.is_file())

    def lora_choices(self, request: gr.Request | None) -> list[str]:
        """The picker's choices for a session: none, the folder's files, then the LoRAs it uploaded."""
        uploads = self.picks(request).get("lora_uploads") or {}
        return [NO_LORA, *self.lora_files(), *(UPLOADED + name for name in uploads)]

    def chosen_loras(self, values: dict[str, Any]) -> tuple:
        """The picker's LoRAs with their strengths (pipelines.lora.Lora: hashed, checked)."""
        uploads = values.get("lora_uploads") or {}
        files = self.lora_files()
        chosen = []
        for k in range(1, LORA_SLOTS + 1):
            name = values.get(f"lora_{k}")
            if name in (None, "", NO_LORA):
                continue
            if isinstance(name, str) and name.startswith(UPLOADED) and name[len(UPLOADED):] in uploads:
                path = Path(uploads[name[len(UPLOADED):]])  # kept by this session's upload, never named by a request
            elif name in files:  # a name only: never a path from a request
                path = self.loras / name
            else:
                raise gr.Error(f"LoRA {name!r} is not in the LoRA folder: pick one of "
                               f"{', '.join(files) or 'none (the folder has no .safetensors files)'}")
            strength = number(values.get(f"lora_strength_{k}"), f"Strength of {name}", "a number from -4 to 4")
            chosen.append((path, strength))
        if not chosen:
            return ()
        from pipelines.lora import Lora  # torch: only once a LoRA is asked for (the page is served without it)

        return tuple(Lora.of_file(path, strength) for path, strength in chosen)

    def lora_values(self, loras: tuple, request: gr.Request | None = None) -> tuple[dict[str, Any], list[str]]:
        """(the picker's slots for a request's LoRAs, the names of those not found): each by its name in the
        LoRA folder, or among the LoRAs this page uploaded, where a file of the same sha256 is (what it was
        made with, wherever it lay then). Another page's uploads are never offered."""
        values: dict[str, Any] = {f"lora_{k}": NO_LORA for k in range(1, LORA_SLOTS + 1)}
        values |= {f"lora_strength_{k}": 1.0 for k in range(1, LORA_SLOTS + 1)}
        missing: list[str] = []
        if not loras:
            return values, missing
        from pipelines.lora import sha256_of

        def hashed(files: dict[str, Path]) -> dict[str, str]:  # sha256 -> picker value, of the files still there
            found = {}
            for value, path in files.items():
                try:
                    found[sha256_of(path)] = value
                except OSError:  # removed since it was listed
                    continue
            return found

        uploads = self.picks(request).get("lora_uploads") or {}
        by_sha = hashed({UPLOADED + name: Path(path) for name, path in uploads.items()})
        by_sha |= hashed({name: self.loras / name for name in self.lora_files()})  # the folder's name first
        for k, lora in enumerate(loras[:LORA_SLOTS], start=1):
            if lora.sha256 in by_sha:
                values[f"lora_{k}"], values[f"lora_strength_{k}"] = by_sha[lora.sha256], lora.strength
            else:
                missing.append(Path(lora.path).name)
        missing += [Path(lora.path).name for lora in loras[LORA_SLOTS:]]  # more than the picker holds
        return values, missing

    def upload_lora(self, file: Any, request: gr.Request | None) -> str:
        """Keep an uploaded LoRA for this session (a content-addressed copy in the outputs folder's uploads; the
        LoRA folder is never written) and offer it in this session's picker. Returns its picker value."""
        if not file:
            raise gr.Error("Choose a .safetensors LoRA file to upload.")
        path = Path(file if isinstance(file, str) else getattr(file, "name", file))
        if path.suffix != ".safetensors":
            raise gr.Error(f"{path.name} is not a LoRA file: upload a .safetensors file")
        check_lora_file(path)
        try:
            kept = self.history.keep_upload(path)
        except OSError as error:
            log.error("could not keep the LoRA upload %s\n%s", path.name, traceback.format_exc())
            raise gr.Error(f"The LoRA could not be kept in the outputs folder ({error.strerror or error}).") from None
        uploads = dict(self.picks(request).get("lora_uploads") or {})
        name = kept.name
        while name in uploads and uploads[name] != str(kept):  # another file of this name: keep both
            name = f"{Path(name).stem}-2.safetensors"
        uploads[name] = str(kept)
        self.remember(request, lora_uploads=uploads)
        return UPLOADED + name

    # the prompt enhancer ---------------------------------------------------------------------------------
    def enhance(self, prompt: str, request: gr.Request | None = None) -> str:
        """The prompt rewritten by the language model; the session keeps what it was rewritten from, for the
        request to record while the prompt is still this one."""
        if not self.enhancer_source:
            raise gr.Error("No language model is set for enhancing prompts: start the studio with --enhancer "
                           "(an instruct model's folder, or the URL of a local OpenAI-compatible or Ollama server).")
        from pipelines import enhancer

        try:
            with self._enhancing:
                if self._enhancer is None:
                    self._enhancer = enhancer.open_enhancer(self.enhancer_source)
                result = enhancer.enhance(self._enhancer, prompt or "", self.info.enhancer_style)
        except (enhancer.EnhancerUnavailable, TimeoutError, ValueError) as error:
            raise gr.Error(f"The prompt was not enhanced: {error}") from None
        self.remember(request, enhanced={"prompt": result.prompt, "original": result.original})
        return result.prompt


def check_lora_file(path: Path) -> None:
    """gr.Error unless `path` is a safetensors file whose tensors include LoRA weights (read from its header;
    whether they fit the loaded model is checked when a generation loads it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as opened:
            names = list(opened.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise gr.Error(f"{path.name} is not a readable safetensors file ({str(error)[:120]})") from None
    if not any(mark in name.lower() for name in names for mark in LORA_MARKS):
        raise gr.Error(f"{path.name} holds no LoRA weights (none of its {len(names)} tensors is named as a LoRA's "
                       "are): upload a LoRA, not a model")


def build_picker(tools: CreatorTools) -> dict[str, Any]:
    """The LoRA picker (an accordion, shared by every tab); returns its widgets by CREATOR key."""
    widgets: dict[str, Any] = {}
    with gr.Accordion("LoRAs", open=False, elem_id="loras"):
        gr.Markdown("No LoRA folder is set." if tools.loras is None else
                    f"The .safetensors files in `{tools.loras.name}/` (launch.py --loras), and any you upload "
                    "here (kept for this page only).")
        for k in range(1, LORA_SLOTS + 1):
            with gr.Row():
                widgets[f"lora_{k}"] = gr.Dropdown([NO_LORA, *tools.lora_files()], value=NO_LORA, label=f"LoRA {k}",
                                                   elem_id=f"lora-{k}", scale=3)
                widgets[f"lora_strength_{k}"] = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Strength", scale=2,
                                                          elem_id=f"lora-strength-{k}")
        with gr.Row():
            refresh = gr.Button("Refresh the list", size="sm")
            upload = gr.UploadButton("Upload a LoRA", file_types=[".safetensors"], size="sm", elem_id="lora-upload")
    slots = [widgets[f"lora_{k}"] for k in range(1, LORA_SLOTS + 1)]

    def pick(request: gr.Request, *values: Any) -> None:
        tools.remember(request, **dict(zip(widgets, values, strict=True)))

    for widget in widgets.values():
        widget.change(pick, list(widgets.values()), None, queue=False, api_visibility="private")

    def refreshed(request: gr.Request) -> list[Any]:
        return [gr.update(choices=tools.lora_choices(request))] * LORA_SLOTS

    def uploaded(request: gr.Request, file: Any, *current: Any) -> list[Any]:
        """The upload offered in every slot, and put in the first empty one."""
        value = tools.upload_lora(file, request)
        empty = next((k for k, name in enumerate(current) if name in (None, "", NO_LORA)), None)
        choices = tools.lora_choices(request)
        return [gr.update(choices=choices, value=value) if k == empty else gr.update(choices=choices)
                for k in range(LORA_SLOTS)]

    refresh.click(refreshed, None, slots, queue=False, api_visibility="private")
    upload.upload(uploaded, [upload, *slots], slots, queue=False, api_visibility="private")
    return widgets
