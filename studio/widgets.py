"""The studio's own widgets: upload widgets that hand it the uploaded file itself, undecoded, and the one
reading of a number widget's value.

Gradio's own input handling runs before any handler: `gr.Image` opens the file with Pillow (so a text file
named .png fails with Gradio's raw "Could not preprocess input component" message) and decodes a `data:`
URL given in place of a file, whatever its size, before `--max-upload` or the studio's 50 MP check; a file
whose path is an http(s) URL is downloaded. These widgets take only files uploaded to this server and pass
their paths on, so that every input reaches `pipelines.media_check` as a file, whose headers are checked
before anything decodes it. The browser shows them as Gradio's own Image and Video.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import utils


def number(value: Any, field: str, valid: str, whole: bool = False) -> Any:
    """A widget's value as the number it is, never rounded: a gr.Error naming the field and what is valid
    for anything else (empty, NaN, text, 2.7 where a whole number is needed)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise gr.Error(f"{field} is empty: enter {valid}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            try:
                value = float(value.strip())
            except ValueError:
                raise gr.Error(f"{field} {value!r} is not valid: {valid}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)) or \
            (whole and isinstance(value, float) and not value.is_integer()):
        raise gr.Error(f"{field} {value!r} is not valid: {valid}")
    return int(value) if whole else float(value)


NOT_A_FILE = "{what} must be sent as a file uploaded to the studio; links and data: URLs are not accepted"


def _local(path: Any, what: str, cache: str) -> str:
    """The path of a file uploaded to this server, or a gr.Error saying what to send instead."""
    if not isinstance(path, str) or not path:
        raise gr.Error(f"{what} arrived without its file; upload it again")
    if path.startswith(("http://", "https://", "data:")) or "://" in path:
        raise gr.Error(NOT_A_FILE.format(what=what))
    if not utils.is_in_or_equal(path, cache):
        raise gr.Error(f"{what} ({Path(path).name}) was not uploaded to the studio; upload the file")
    return path


class _Undecoded:
    """Refuses remote files before Gradio downloads them (its cache step runs before `preprocess`), and has the
    browser draw it as Gradio's own component `drawn_as` (not as a custom component of its own name)."""

    what = "The file"
    drawn_as: type = gr.File

    def get_block_name(self) -> str:
        return self.drawn_as.__name__.lower()  # what gr.Image / gr.Video name themselves

    def get_block_class(self) -> str:
        return self.drawn_as.__name__.lower()

    @classmethod
    def get_component_class_id(cls) -> str:
        return cls.drawn_as.get_component_class_id()

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        if isinstance(url_or_file_path, str) and "://" in url_or_file_path:
            raise gr.Error(NOT_A_FILE.format(what=self.what))
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path):
        if isinstance(url_or_file_path, str) and "://" in url_or_file_path:
            raise gr.Error(NOT_A_FILE.format(what=self.what))
        return super().move_resource_to_block_cache(url_or_file_path)


class ImageFile(_Undecoded, gr.Image):
    """`gr.Image` whose value is the uploaded file's path; the picture is never opened here."""

    what = "The image"
    drawn_as = gr.Image

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            raise gr.Error(NOT_A_FILE.format(what=self.what))
        return _local(payload.path, self.what, self.GRADIO_CACHE)


class VideoFile(_Undecoded, gr.Video):
    """`gr.Video` that takes only uploaded files (never a link); it already passes the path undecoded."""

    what = "The clip"
    drawn_as = gr.Video

    def preprocess(self, payload) -> str | None:
        path = super().preprocess(payload)
        return None if path is None else _local(path, self.what, self.GRADIO_CACHE)
