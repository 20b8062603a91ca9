"""The studio in a real browser: Debian's Chromium driven by Selenium. Generate from the UI, see a playable
video, cancel a second run, save a screenshot.

Skipped when Chromium or its driver is missing, unless STUDIO_REQUIRE_BROWSER=1 (set by .ci/run, which
installs them), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import launched_studio  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--window-size=1400,1000")

if not (CHROMIUM and DRIVER):
    if os.environ.get("STUDIO_REQUIRE_BROWSER") == "1":
        raise RuntimeError("chromium and chromium-driver are required (apt-get install chromium chromium-driver)")
    pytest.skip("chromium / chromium-driver not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def studio_url(tiny_model_dir, tmp_path_factory):
    # --memory auto, as `python launch.py` serves it: the planner times the model on the first generation.
    with launched_studio(tiny_model_dir, tmp_path_factory.mktemp("browser-outputs"), memory_mode="auto") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def status_text(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#status").text


def test_generate_play_cancel_and_screenshot(browser, studio_url, tmp_path):
    wait = WebDriverWait(browser, 120)
    browser.get(studio_url)
    prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#t2v-prompt textarea")))
    prompt.send_keys("a red ball bounces on a floor")
    browser.find_element(By.CSS_SELECTOR, "#t2v-generate").click()

    # A finished generation shows a video element whose source the browser can load and play.
    wait.until(lambda d: "Done in" in status_text(d))
    video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#result-video video")))
    wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration > 0;", video))
    source = video.get_attribute("src")
    assert source and source.startswith("http")
    duration = browser.execute_script("return arguments[0].duration;", video)
    assert 1.0 <= duration <= 1.3  # 9 frames at 8 fps
    assert browser.execute_script("return arguments[0].videoWidth;", video) == 32

    # Under the button, the plan of the tab's settings: known once the first generation measured the model.
    def planned_seconds(d) -> int | None:
        found = re.search(r"Time and memory: about (\d+) (s|min), [\d.]+ of [\d.]+ GB", d.find_element(
            By.CSS_SELECTOR, "#t2v-plan").text)
        return found and int(found.group(1)) * (60 if found.group(2) == "min" else 1)

    first_plan = wait.until(planned_seconds)

    # The test's own folder unless asked for elsewhere: never the user's outputs/.
    screenshots = Path(os.environ.get("STUDIO_SCREENSHOTS", tmp_path / "screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshots / "studio.png"))
    assert (screenshots / "studio.png").stat().st_size > 10_000

    # A long second run, cancelled from the UI mid-way: 100 steps of 96x96 over 10 s at 12 fps (121 frames, the
    # most the tiny model's position encoding takes), so the denoising cannot finish between seeing a step and
    # the click landing. At 32x32 it did, and the cancel landed in the decode; at 64x64 it came within 27 steps.
    size = browser.find_element(By.CSS_SELECTOR, "#t2v-size input")
    size.click()
    size.send_keys(Keys.CONTROL, "a")
    size.send_keys("96x96", Keys.ENTER)
    browser.find_element(By.CSS_SELECTOR, "#t2v-advanced button").click()
    steps = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#t2v-steps input[type=number]")))
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("100", Keys.TAB)
    seconds = browser.find_elements(By.CSS_SELECTOR, "input[type=number][aria-label*='Duration']")
    assert seconds, "the t2v tab has a duration input"
    seconds[0].send_keys(Keys.CONTROL, "a")
    seconds[0].send_keys("10", Keys.TAB)
    fps = browser.find_elements(By.CSS_SELECTOR, "input[type=number][aria-label='Frames per second']")
    assert fps, "the t2v tab has a frames-per-second input"
    fps[0].send_keys(Keys.CONTROL, "a")
    fps[0].send_keys("12", Keys.TAB)
    wait.until(lambda d: (planned_seconds(d) or 0) > first_plan)  # it follows the settings: more work, more time
    browser.find_element(By.CSS_SELECTOR, "#t2v-generate").click()
    wait.until(lambda d: "step" in status_text(d) and "/100" in status_text(d))
    browser.find_element(By.CSS_SELECTOR, "#cancel").click()
    wait.until(lambda d: "Cancelled" in status_text(d) or "Done in" in status_text(d))
    assert "Cancelled" in status_text(browser), f"the run was not cancelled: {status_text(browser)!r}"
    text = status_text(browser)
    step = int(text.split("cancelled at step ")[1].split(" ")[0])
    assert step < 100
    browser.save_screenshot(str(screenshots / "studio-cancelled.png"))


def test_animate_and_extend_from_files_uploaded_in_the_page(browser, studio_url, tmp_path):
    """The upload widgets (studio/widgets.py) render as Gradio's own Image and Video and take a file."""
    from conftest import moving_square
    from pipelines.video_io import write_mp4, write_png

    write_png(tmp_path / "still.png", moving_square(1, 48, 32)[0])
    write_mp4(tmp_path / "clip.mp4", moving_square(9), 8)
    wait = WebDriverWait(browser, 120)
    browser.get(studio_url)
    for tab, upload, name in (("Animate Image", tmp_path / "still.png", "animate"),
                              ("Extend & Loop", tmp_path / "clip.mp4", "extend")):
        wait.until(lambda d: any(b.text == tab for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")))
        next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == tab).click()
        field = wait.until(lambda d: [i for panel in d.find_elements(By.CSS_SELECTOR, "[role=tabpanel]")
                                      if panel.is_displayed()
                                      for i in panel.find_elements(By.CSS_SELECTOR, "input[type=file]")])
        field[0].send_keys(str(upload))  # the tab's first upload: the still, the clip
        wait.until(lambda d: any(e.is_displayed() for e in  # the server read it and shows it fitted
                                 d.find_elements(By.XPATH, "//*[contains(text(), 'the model makes')]")))
        browser.find_element(By.CSS_SELECTOR, f"#{name}-prompt textarea").send_keys("a square moves")
        before = status_text(browser)  # "Ready.", then the animation's "Done in ...: 9 frames", unlike extend's
        browser.find_element(By.CSS_SELECTOR, f"#{name}-generate").click()
        wait.until(lambda d: "Done in" in status_text(d) and status_text(d) != before)


def test_the_lora_picker_and_the_enhance_button(browser, tiny_model_dir, tmp_path_factory):
    """A LoRA picked from the folder and a prompt enhanced in the page reach the output's request."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    from tiny_lm import save_tiny_instruct

    base = tmp_path_factory.mktemp("creator")
    loras = base / "loras"
    transformer = WanTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["attn1.to_q", "attn1.to_v"],
                                       init_lora_weights=False), adapter_name="style")
    transformer.save_lora_adapter(loras, adapter_name="style", weight_name="style.safetensors")
    language_model = save_tiny_instruct(base / "tiny-instruct")
    outputs = base / "outputs"
    with launched_studio(tiny_model_dir, outputs, loras=loras, enhancer=str(language_model)) as (url, _):
        wait = WebDriverWait(browser, 120)
        browser.get(url)
        wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@id='loras']//*[text()='LoRAs']"))).click()
        picker = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#lora-1 input")))
        picker.click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#lora-1 li[aria-label='style.safetensors']"))).click()
        wait.until(lambda d: picker.get_attribute("value") == "style.safetensors")
        # A LoRA uploaded in the page goes into the first empty slot (kept for this page only).
        # Another adapter: saving "style" again gives its weights, whose file differs from the first only in
        # the header's key order, which varies from save to save (so the two were at times the same file,
        # rightly refused as one LoRA given twice).
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["attn1.to_q", "attn1.to_v"],
                                           init_lora_weights=False), adapter_name="mine")
        transformer.save_lora_adapter(base / "mine", adapter_name="mine", weight_name="mine.safetensors")
        browser.find_element(By.XPATH, "//*[@id='lora-upload']/..//input[@type='file']").send_keys(str(base / "mine" /
                                                                                               "mine.safetensors"))
        second = browser.find_element(By.CSS_SELECTOR, "#lora-2 input")
        wait.until(lambda d: second.get_attribute("value") == "uploaded/mine.safetensors")
        prompt = browser.find_element(By.CSS_SELECTOR, "#t2v-prompt textarea")
        prompt.send_keys("a red ball")
        browser.find_element(By.CSS_SELECTOR, "#t2v-enhance").click()
        wait.until(lambda d: prompt.get_attribute("value") not in ("", "a red ball"))  # shown before use
        enhanced = prompt.get_attribute("value")
        browser.find_element(By.CSS_SELECTOR, "#t2v-generate").click()
        wait.until(lambda d: "Done in" in status_text(d))
    sidecar, = outputs.glob("*.mp4.json")
    request = json.loads(sidecar.read_text())["request"]
    assert [(Path(x["path"]).name, x["strength"]) for x in request["loras"]] == [("style.safetensors", 1.0),
                                                                               ("mine.safetensors", 1.0)]
    assert not (loras / "mine.safetensors").exists()  # the LoRA folder is the studio's, never written by a page
    assert request["prompt"] == enhanced and request["enhanced_from"] == "a red ball"


def test_a_two_by_two_variations_grid_then_render_final(browser, tiny_model_dir, tmp_path_factory, tmp_path):
    """A prompt with a {red|blue} group and 2 seeds makes 4 cells and a contact sheet; a picked cell plays, and
    Render final renders it at the full steps with the step cache off."""
    outputs = tmp_path_factory.mktemp("grid-browser")
    with launched_studio(tiny_model_dir, outputs) as (url, _):
        wait = WebDriverWait(browser, 120)
        browser.get(url)
        prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#t2v-prompt textarea")))
        prompt.send_keys("a {red|blue} ball")
        browser.find_element(By.XPATH, "//*[@id='t2v-variations']//*[text()='Variations']").click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#t2v-grid"))).click()
        wait.until(lambda d: "4 cells" in status_text(d))
        sheet = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#grid-sheet img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth;", sheet))
        assert browser.execute_script("return arguments[0].naturalWidth;", sheet) >= 2 * 3 * 160

        picker = browser.find_element(By.CSS_SELECTOR, "#grid-cell input")
        picker.click()
        options = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid-cell li[role='option']"))
        assert [o.get_attribute("aria-label").split(", seed")[0] for o in options] == [
            "1. red", "2. red", "3. blue", "4. blue"]
        options[2].click()
        wait.until(lambda d: picker.get_attribute("value").startswith("3. blue"))
        cells = {json.loads(p.read_text())["grid"]["cell"]: p.name.removesuffix(".json")
                 for p in outputs.glob("*.mp4.json")}
        video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#result-video video")))
        wait.until(lambda d: cells[3] in (video.get_attribute("src") or ""))  # the picked cell plays
        screenshots = Path(os.environ.get("STUDIO_SCREENSHOTS", tmp_path))
        screenshots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(screenshots / "studio-variations.png"))

        browser.find_element(By.CSS_SELECTOR, "#grid-final").click()
        wait.until(lambda d: "Done in" in status_text(d) and " fps" in status_text(d))  # the grid's said "4 cells"
        finals = [json.loads(p.read_text()) for p in outputs.glob("*.mp4.json") if "final_of" in json.loads(p.read_text())]
    assert len(finals) == 1 and finals[0]["final_of"] == cells[3]
    draft = json.loads((outputs / f"{cells[3]}.json").read_text())
    assert finals[0]["request"]["prompt"] == draft["request"]["prompt"] == "a blue ball"
    assert finals[0]["request"]["seed"] == draft["request"]["seed"]
    assert finals[0]["request"]["steps"] == draft["grid"]["final_steps"] > draft["request"]["steps"]
    assert finals[0]["step_cache"] is None and draft["step_cache"] is not None


def test_the_storyboard_tab_renders_a_take_of_the_planned_length(browser, studio_url):
    """Two shots typed into the Storyboard tab render as one take: its video plays for the planned length and
    the drift table has a row per shot."""
    wait = WebDriverWait(browser, 120)
    browser.get(studio_url)
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[@role='tab'][text()='Storyboard']"))).click()
    first = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#sb-prompt-1 textarea")))
    first.send_keys("a red ball")
    browser.find_element(By.CSS_SELECTOR, "#sb-prompt-2 textarea").send_keys("the ball turns blue")
    # the tiny model's 9-frame window leaves room for 5 context frames at most: the field offers what fits
    assert browser.find_element(By.CSS_SELECTOR, "#sb-context input").get_attribute("value") == "5"
    browser.find_element(By.CSS_SELECTOR, "#sb-render").click()
    status = lambda d: d.find_element(By.CSS_SELECTOR, "#sb-status").text  # noqa: E731
    wait.until(lambda d: "Done in" in status(d))
    assert "3 windows, 17 frames at 8 fps" in status(browser)  # 1 s fresh: 9 frames; 1 s continuing: 8 more
    video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#sb-video video")))
    wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration > 0;", video))
    assert abs(browser.execute_script("return arguments[0].duration;", video) - 17 / 8) < 0.2
    grid = browser.find_element(By.CSS_SELECTOR, "#sb-drift [role=grid]")
    assert grid.get_attribute("aria-rowcount") == "3"  # the header and a row per shot (test_storyboard_tab.py
    # checks their figures)
