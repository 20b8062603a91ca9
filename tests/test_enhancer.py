"""The prompt enhancer (pipelines/enhancer.py): a tiny random instruct model built here, local chat servers
started here (OpenAI's format and Ollama's), a server that never answers, and none at all."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines import enhancer
from pipelines.families import inspect_model
from pipelines.loading import MODELS
from tiny_lm import save_tiny_instruct


@pytest.fixture(scope="module")
def tiny_instruct(tmp_path_factory) -> Path:
    return save_tiny_instruct(tmp_path_factory.mktemp("instruct") / "tiny-qwen2")


class ChatServer:
    """A local chat server: answers each POST with `reply(path, body)` after `delay` seconds."""

    def __init__(self, reply, delay: float = 0.0):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append((self.path, body))
                time.sleep(delay)
                data = json.dumps(reply(self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_local_instruct_model_rewrites_the_prompt_the_same_way_each_time(tiny_instruct):
    model = enhancer.open_enhancer(str(tiny_instruct))
    first = enhancer.enhance(model, "  a red ball  ", "Describe the scene.")
    again = enhancer.enhance(model, "  a red ball  ", "Describe the scene.")
    other = enhancer.enhance(model, "a red ball", "Describe something else entirely, at length.")
    assert first.prompt and first == again  # greedy: no sampling
    assert first.original == "  a red ball  " and first.source == str(tiny_instruct)
    assert len(first.prompt) <= enhancer.MAX_PROMPT_CHARS and "\n" not in first.prompt
    assert other.prompt != first.prompt  # the system prompt is part of what it reads


def test_the_cli_enhances_before_generating_and_records_both(tiny_instruct, tiny_model_dir, tmp_path, monkeypatch,
                                                             capsys):
    import launch

    monkeypatch.delenv("STUDIO_ENHANCER", raising=False)
    out = tmp_path / "enhanced.mp4"
    assert launch.main(["generate", "t2v", "--model", str(tiny_model_dir), "--prompt", "a red ball", "--enhance",
                        "--enhancer", str(tiny_instruct), "--frames", "5", "--steps", "1", "--memory", "full",
                        "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    shown = next(line for line in printed.splitlines() if line.startswith("enhanced the prompt"))
    request = json.loads(out.with_name(out.name + ".json").read_text())["request"]
    assert request["enhanced_from"] == "a red ball" and request["prompt"] != "a red ball"
    assert shown.endswith(f"with {tiny_instruct}: {request['prompt']}")  # shown before use, as used

    # Reproduce runs the recorded prompt: no language model is needed, and none is asked.
    again = tmp_path / "again.mp4"
    assert launch.main(["generate", "reproduce", "--request", str(out.with_name(out.name + ".json")), "--device", "cpu",
                        "--quiet", "--memory", "full",
                        "--out", str(again)]) == 0
    assert json.loads(again.with_name(again.name + ".json").read_text())["request"]["prompt"] == request["prompt"]
    assert "enhanced the prompt" not in capsys.readouterr().out


@pytest.mark.parametrize("path, answer, expected", [
    ("/v1", {"choices": [{"message": {"content": '  "A red ball\n bounces."  '}}]}, "A red ball bounces."),
    ("/api/chat", {"message": {"role": "assistant", "content": "Prompt: a blue star spins"}}, "a blue star spins"),
])
def test_a_local_server_answers_in_openai_or_ollama_format(path, answer, expected):
    server = ChatServer(lambda *_: answer)
    try:
        style = inspect_model("embedded").defaults.enhancer_style
        result = enhancer.enhance(enhancer.open_enhancer(server.url + path), "a ball", style, timeout=10)
    finally:
        server.close()
    assert result.prompt == expected and result.original == "a ball"
    (asked, body), = server.received
    assert asked == ("/api/chat" if path == "/api/chat" else "/v1/chat/completions")
    assert body["messages"] == [{"role": "system", "content": style}, {"role": "user", "content": "a ball"}]
    assert body["stream"] is False


def test_the_embedded_models_caption_style_names_its_world():
    style = inspect_model("embedded").defaults.enhancer_style
    for word in ("ball", "triangle", "crimson", "bounces", "at sunset", "pixel-art"):
        assert word in style
    assert all(entry.defaults.enhancer_style is None for entry in MODELS.values())  # the general video style


def test_a_server_that_does_not_answer_in_time_is_given_up(capsys):
    server = ChatServer(lambda *_: {"message": {"content": "too late"}}, delay=6)
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"did not answer within 1 s; the prompt is unchanged"):
            enhancer.enhance(enhancer.open_enhancer(server.url + "/api/chat"), "a ball", timeout=1)
        assert time.perf_counter() - started < 3
    finally:
        server.close()


def test_with_no_language_model_it_says_how_to_get_one(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import launch
    from conftest import free_port

    with pytest.raises(enhancer.EnhancerUnavailable, match="hf download"):
        enhancer.open_enhancer(None)
    with pytest.raises(enhancer.EnhancerUnavailable, match="is not a folder"):
        enhancer.open_enhancer(str(tmp_path / "no-such-model"))
    with pytest.raises(enhancer.EnhancerUnavailable, match="could not be loaded"):
        enhancer.open_enhancer("nobody/not-in-the-cache")
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(enhancer.EnhancerUnavailable, match="could not be reached"):
        enhancer.enhance(enhancer.open_enhancer(nobody), "a ball", timeout=5)
    with pytest.raises(ValueError, match="no prompt to enhance"):
        enhancer.enhance(enhancer.open_enhancer(nobody), "  ")

    monkeypatch.delenv("STUDIO_ENHANCER", raising=False)
    out = tmp_path / "never.mp4"
    code = launch.main(["generate", "t2v", "--model", str(tiny_model_dir), "--prompt", "a ball", "--enhance",
                        "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: no language model is set"), err
    assert "Traceback" not in err and not out.exists()


def test_the_studio_button_shows_the_enhanced_prompt_and_the_request_records_both(tiny_instruct, tiny_model_dir,
                                                                                 tmp_path):
    import gradio as gr

    from pipelines import VideoPipeline
    from studio.app import ModelInfo, StudioApp, build
    from studio.engine import Engine
    from studio.outputs import History

    pipe = VideoPipeline.from_pretrained(str(tiny_model_dir), device="cpu")
    engine = Engine(pipe, History(tmp_path / "outputs"))
    app = StudioApp(engine, ModelInfo.of(pipe), enhancer=str(tiny_instruct))
    class Page:  # a browser session, as Gradio names it to handlers
        def __init__(self, session_hash: str):
            self.session_hash = session_hash

    mine, theirs = Page("mine"), Page("theirs")
    prompt = app.creator.enhance("a red ball", mine)  # into the prompt box, editable, before anything runs
    assert prompt and prompt != "a red ball"
    values = dict(prompt=prompt, negative="", seed=1, steps=1, guidance=4.0, sampler="default", size="32x32",
                  seconds=1.0, fps=8)
    assert app.request("t2v", {**values, **app.creator.picks(mine)}).enhanced_from == "a red ball"
    # Edited after enhancing: the prompt is the user's own again, and nothing claims otherwise.
    assert app.request("t2v", {**values, **app.creator.picks(mine), "prompt": prompt + " at dusk"}).enhanced_from is None
    # Another session's generation never reads this one's record.
    assert app.creator.picks(theirs) == {} and app.request("t2v", {**values, **app.creator.picks(theirs)}).enhanced_from is None

    plain = StudioApp(engine, ModelInfo.of(pipe))
    with pytest.raises(gr.Error, match="No language model is set for enhancing prompts: start the studio with "
                                       "--enhancer"):
        plain.creator.enhance("a red ball")
    buttons = {enhancer: next(block for block in build(engine, ModelInfo.of(pipe), enhancer=enhancer).blocks.values()
                              if getattr(block, "elem_id", None) == "t2v-enhance")
               for enhancer in (None, str(tiny_instruct))}
    assert buttons[None].interactive is False and buttons[str(tiny_instruct)].interactive is True
