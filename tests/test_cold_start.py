"""Cold start: each process imports what it uses, when it uses it. Checked on `sys.modules` of fresh
processes (what was imported, not how long it took: benchmarks/startup.py measures the time)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.text import prompt_clean
from studio.serve import PendingPipeline

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "gradio")


def imported_by(code: str, *args: str) -> tuple[int, set[str], str]:
    """(exit status, names in sys.modules at the end, stderr) of `code` run in a fresh interpreter."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\nsys.exit(rc)\n"
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, set(json.loads(done.stdout.strip().splitlines()[-1])), done.stderr


def pipeline_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("diffusers.pipelines."))


def test_the_command_line_imports_no_library_before_it_runs():
    rc, modules, err = imported_by("import studio.cli\nrc = 0")
    assert rc == 0, err
    assert not set(HEAVY) & modules
    assert not pipeline_modules(modules)


def test_an_unknown_flag_is_refused_before_torch_and_diffusers_load():
    rc, modules, err = imported_by("import launch\nrc = launch.main(sys.argv[1:])", "generate", "t2v", "--bogus")
    assert rc == 2
    assert err.strip() == "error: unrecognized arguments: --bogus"
    assert not set(HEAVY) & modules


def test_a_value_the_model_refuses_is_refused_before_diffusers_loads():
    """The model's configs are read (its family, its VAE's frame counts), but no library that loads weights."""
    rc, modules, err = imported_by("import launch\nrc = launch.main(sys.argv[1:])",
                                   "generate", "t2v", "--prompt", "a ball", "--frames", "6")
    assert rc == 2
    assert err.strip().startswith("error: --frames 6 is not valid")
    assert "pipelines.families.wan" in modules  # the check really read the model
    assert not {"diffusers", "transformers", "gradio"} & modules


def test_a_generation_imports_model_classes_not_diffusers_pipelines(tmp_path):
    out = tmp_path / "still.png"
    rc, modules, err = imported_by("import launch\nrc = launch.main(sys.argv[1:])",
                                   "generate", "image", "--prompt", "a red ball", "--steps", "1", "--seed", "0",
                                   "--device", "cpu", "--quiet", "--out", str(out))
    assert rc == 0, err
    assert out.is_file()
    assert "diffusers.models.transformers.transformer_wan" in modules  # the embedded model did run
    assert not pipeline_modules(modules)
    assert "gradio" not in modules


def test_the_studio_page_is_built_before_diffusers_loads(tmp_path):
    """`python launch.py` serves its page from the model's configs; the weights load after."""
    code = (f"from pathlib import Path\nfrom studio.serve import PendingPipeline, create\n"
            f"demo, _ = create('embedded', Path({str(tmp_path)!r}), pipe=PendingPipeline('embedded', 'cpu'))\nrc = 0")
    rc, modules, err = imported_by(code)
    assert rc == 0, err
    assert "gradio" in modules
    assert not {"diffusers", "transformers"} & modules


def test_a_pending_pipeline_shows_the_loaded_ones_facts_and_makes_users_wait(tiny_model_dir):
    from studio.app import ModelInfo

    pending = PendingPipeline(str(tiny_model_dir), "cpu")
    before = ModelInfo.of(pending)  # what the page is built from, before any weights
    found = {}
    waiter = threading.Thread(target=lambda: found.update(device=pending.device))  # not known from configs
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not found  # waits for the load
    pending.load()
    waiter.join(60)
    assert str(found["device"]) == "cpu"
    assert ModelInfo.of(pending) == before == ModelInfo.of(pending._pipe)
    assert type(pending.family).__name__ == "Wan"  # the loaded adapter now, not the class


def test_a_pending_pipeline_that_failed_to_load_says_so(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    pending = PendingPipeline(str(folder), "cpu")  # its configs are fine
    with pytest.raises(Exception):
        pending.load()
    with pytest.raises(RuntimeError, match="the model did not load"):
        pending.generate


AWKWARD = [
    "", "   ", "  a  red\tball\n\nbounces  ", "\r\nwindows\r\nlines\r\n",
    "&amp;lt;b&amp;gt;twice escaped&amp;lt;/b&amp;gt;", "&#x1F600; &nbsp;x &quot;quoted&quot; &bogus; &amp",
    "cafÃ© mojibake â€™s and Ã¼ber", "‘curly’ “quotes” — dash … ellipsis", "ﬁne ligature ﬂow",
    "\x1c\x1dseparators\x1e\x1f are not whitespace to regex", "\u00a0nbsp\u2028line\u2029para\u3000ideo\x85nel",
    "zero\u200bwidth\ufeffbom\u180emongolian", "\x00nul\x07bell\x1bescape", "emoji 🎬 and 漢字 and e\u0301 combining",
    "tabs\u000band\u000cfeeds", "\udc80lone surrogate",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_prompt_clean_is_diffusers_own(text):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as theirs

    assert outcome(prompt_clean, text) == outcome(theirs, text)


def test_prompt_clean_is_diffusers_own_on_random_text():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as theirs

    rng = random.Random(0)
    pieces = [" ", "\t", "\n", "\x1c", "\u00a0", "\u3000", "\u200b", "&amp;", "&lt;", "&#39;", "Ã©", "â€™", "a",
              "Z", "9", "é", "‘", "…", "ﬁ", "漢", "🎬", "\x85", "\u2028", ";", "&"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24)))
        assert outcome(prompt_clean, text) == outcome(theirs, text), repr(text)


def outcome(clean, text: str) -> tuple[str, str]:
    try:
        return "ok", clean(text)
    except Exception as error:  # both must fail alike where they fail
        return "raised", type(error).__name__
