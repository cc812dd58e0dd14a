"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download). The page talks to `t2i serve --model demo` only through /sdapi/v1."""

import base64
import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# without these, Chromium spends its start-up on connections this machine's closed network refuses
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail("no Chromium: `apt-get install chromium` (CI does), or deselect with -m 'not browser'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(demo_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def settings(page, **values):
    for field, value in values.items():
        page.fill(f"#{field}", str(value))


def image_pixels(page, figure: int = 0) -> np.ndarray:
    source = page.locator("#gallery figure img").nth(figure).get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


def test_generate_with_ctrl_enter_shows_the_image_and_its_settings(page, tmp_path):
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig

    page.fill("#prompt", "a red circle")
    settings(page, steps=10, width=32, height=32, seed=7, cfg=5)
    page.select_option("#sampler", "DPM++ 2M")
    page.select_option("#scheduler", "karras")
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert caption.startswith("a red circle\n") and "Seed: 7" in caption and "Sampler: DPM++ 2M" in caption
    assert "Schedule type: Karras" in caption and "Steps: 10" in caption
    model = load_model(ModelConfig(model="demo", device="cpu"))
    expected, = generate(model, GenerationConfig(prompts=("a red circle",), steps=10, seed=7, guidance_scale=5,
                                                 sampler="dpmpp-2m-karras"), progress=False)
    assert np.array_equal(image_pixels(page), np.asarray(expected.image))

    page.click("#random-seed")
    assert page.input_value("#seed") == "-1"
    page.click("#reuse-seed")
    assert page.input_value("#seed") == "7"

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(float)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50, "the screenshot is not blank"


def test_interrupt_stops_a_long_run(page):
    page.fill("#prompt", "a slow blue square")
    settings(page, steps=150, width=96, height=96, seed=1, **{"batch-count": 4})
    page.click("#generate")
    page.wait_for_function("document.getElementById('progress').value > 0")
    assert page.is_enabled("#interrupt") and not page.is_enabled("#generate")
    assert "step" in page.inner_text("#eta") and "ETA" in page.inner_text("#eta")
    page.click("#interrupt")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=30_000)
    assert page.inner_text("#status").startswith("Interrupted") and page.inner_text("#error") == ""
    assert page.locator("#gallery figure").count() < 4


def test_inpainting_with_the_brush(page, init_image):
    page.check("input[name=mode][value=img2img]")
    page.set_input_files("#init-file", str(init_image))
    page.wait_for_function("document.getElementById('mask-canvas').width === 32")
    settings(page, steps=10, seed=3, strength=0.9, **{"mask-blur": 0})
    page.fill("#prompt", "a green circle")
    box = page.locator("#mask-canvas").bounding_box()  # drawn 320 px wide: 10 screen px an image pixel
    page.mouse.move(box["x"] + 40, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 120, box["y"] + 120, steps=8)
    page.mouse.up()
    assert "Mask painted" in page.inner_text("#mask-state")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert "Denoising strength: 0.9" in caption
    got, original = image_pixels(page).astype(int), np.asarray(Image.open(init_image).convert("RGB")).astype(int)
    assert np.array_equal(got[20:, :], original[20:, :]), "far from the stroke nothing changes"
    assert np.abs(got[5:11, 5:11] - original[5:11, 5:11]).mean() > 5, "under the stroke it is repainted"


def test_png_info_by_dropping_an_image(page, demo_server):
    import requests

    answer = requests.post(f"{demo_server.api}/txt2img", json={"prompt": "a dropped cat", "seed": 11, "steps": 3,
                                                                "width": 32, "height": 32}).json()
    page.evaluate("""async (data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "cat.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer}));
    }""", answer["images"][0])
    page.wait_for_function("document.getElementById('png-info').textContent.includes('Seed: 11')")
    assert page.inner_text("#png-info").startswith("a dropped cat\n")
    page.click("#use-info")  # and its settings fill the fields on request
    assert (page.input_value("#prompt"), page.input_value("#seed"), page.input_value("#steps")) == (
        "a dropped cat", "11", "3")


def test_a_jpeg_from_a1111_dropped_shows_its_settings(page):
    import base64
    import io

    import piexif
    import piexif.helper
    from PIL import Image

    text = "a jpeg cat\nSteps: 20, Sampler: Euler a, Seed: 12, Size: 32x32"
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text,
                                                                                              encoding="unicode")}})
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, format="JPEG", exif=exif)
    page.evaluate("""async (data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "cat.jpg", {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer}));
    }""", base64.b64encode(buffer.getvalue()).decode())
    page.wait_for_function("document.getElementById('png-info').textContent.includes('Seed: 12')")
    assert page.inner_text("#png-info").startswith("a jpeg cat\n")


def test_a_failed_checkpoint_switch_puts_the_dropdown_back_on_the_servers_model(page):
    current = page.input_value("#model")
    other = next(v for v in page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") if v != current)

    def refuse(route):  # as a checkpoint that fails to load answers
        if route.request.method == "POST":
            route.fulfill(status=500, content_type="application/json",
                          body='{"error": "LoadError", "detail": "junk.safetensors: not a checkpoint", "body": "", '
                               '"errors": ""}')
        else:
            route.continue_()

    page.route("**/sdapi/v1/options", refuse)
    page.select_option("#model", other)
    page.wait_for_function("document.getElementById('error').textContent.includes('not a checkpoint')")
    page.wait_for_function(f"document.getElementById('model').value === {current!r}")
    page.unroute("**/sdapi/v1/options")


def test_loading_the_page_requests_nothing_that_fails(browser, demo_server):
    context = browser.new_context()
    page = context.new_page()
    failed = []
    page.on("response", lambda response: failed.append((response.url, response.status)) if response.status >= 400
            else None)
    page.goto(demo_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    page.wait_for_load_state("networkidle")
    # headless Chromium never asks for /favicon.ico, so that 404 (seen in a desktop browser) is checked
    # where it starts: the page names an inline icon, and a browser then asks for none
    icon = page.evaluate("document.querySelector('link[rel=icon]')?.getAttribute('href')")
    context.close()
    assert failed == [], f"failed requests: {failed}"
    assert icon == "data:,"


def test_hires_fix_from_the_page(page):
    page.fill("#prompt", "a red circle")
    settings(page, steps=6, width=32, height=32, seed=4)
    page.check("#hires-on")
    settings(page, **{"hires-scale": 2, "hires-steps": 4, "hires-denoise": 0.5})
    page.select_option("#hires-upscaler", "Latent (bicubic antialiased)")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert "Size: 32x32" in caption and "Hires upscale: 2" in caption and "Hires steps: 4" in caption
    assert "Hires upscaler: Latent (bicubic antialiased)" in caption and "Denoising strength: 0.5" in caption
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig

    expected, = generate(load_model(ModelConfig(model="demo", device="cpu")), GenerationConfig(
        prompts=("a red circle",), steps=6, seed=4, guidance_scale=7, width=32, height=32, hires_scale=2,
        hires_steps=4, hires_denoise=0.5, hires_upscaler="Latent (bicubic antialiased)"), progress=False)
    assert image_pixels(page).shape == (64, 64, 3) and np.array_equal(image_pixels(page), np.asarray(expected.image))


def test_outpainting_from_the_page_keeps_the_original(page, init_image):
    page.check("input[name=mode][value=img2img]")
    assert page.locator("#hires").is_hidden(), "hires fix is a txt2img setting"
    page.set_input_files("#init-file", str(init_image))
    page.wait_for_function("document.getElementById('mask-canvas').width === 32")
    page.fill("#prompt", "a red circle")
    settings(page, steps=5, seed=2, strength=0.9)
    page.check("#outpaint-on")
    settings(page, **{"outpaint-pixels": 16, "outpaint-blur": 1})
    for side in ("up", "down"):
        page.uncheck(f"input[name=outpaint-direction][value={side}]")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    assert "Outpaint: " in page.locator("#gallery figcaption").first.inner_text()
    got = image_pixels(page).astype(int)
    original = np.asarray(Image.open(init_image).convert("RGB")).astype(int)
    assert got.shape == (64, 64, 3)  # 32 + 16 + 16 wide, the height rounded to 64 as A1111 rounds it
    assert np.array_equal(got[0:22, 16 + 10:16 + 22], original[0:22, 10:22]), "the original is kept byte for byte"
    assert np.abs(got[:, :8] - 0).mean() > 5, "the new border is painted, not left black"


def test_an_edit_with_words_from_the_page_is_t2i_edit(page, tmp_path, run_cli):
    from t2i.shapes.world import Shape, make_image

    init = tmp_path / "red-circle.png"
    make_image(Shape("red", "circle", 12, 14, 18)).save(init)
    page.check("input[name=mode][value=img2img]")
    page.set_input_files("#init-file", str(init))
    page.wait_for_function("document.getElementById('mask-canvas').width === 32")
    page.fill("#prompt", "")
    page.select_option("#sampler", "DPM++ 2M SDE")
    settings(page, steps=8, seed=3, cfg=3.5)
    page.check("#edit-on")
    page.fill("#edit-words", "+blue\n-red")
    settings(page, **{"edit-scale": 2})
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert 'LEDITS++: "+blue:2:0.9:0, -red:2:0.9:0"' in caption, caption
    code, out, err = run_cli("edit", init, "--model", "demo", "--edit", "+blue", "--edit", "-red", "--edit-scale", 2,
                             "--steps", 8, "--seed", 3, "--out", tmp_path / "cli")
    assert code == 0, err
    assert np.abs(image_pixels(page).astype(int) - np.asarray(Image.open(out.strip()).convert("RGB"), int)).max() <= 1
    page.fill("#edit-words", "")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error').textContent.includes('at least one line')")


# ---- the page as people use it: one job at a time, its own progress, a brush you can see, a history ---------


def screenshot(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)


def test_a_second_ctrl_enter_while_running_queues_nothing(page):
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.url.endswith("/txt2img") else None)
    page.fill("#prompt", "a red circle")
    settings(page, steps=40, width=64, height=64, seed=1)
    page.press("#prompt", "Control+Enter")
    page.wait_for_function("document.getElementById('generate').disabled")
    page.press("#negative", "Control+Enter")  # anywhere on the form, as in A1111
    page.keyboard.press("Control+Enter")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=60_000)
    assert len(posts) == 1 and page.locator("#gallery figure").count() == 1
    assert page.is_disabled("#interrupt")


def test_progress_and_interrupt_are_the_pages_own_job(page, demo_server):
    """Another client's long job runs; the page's job waits behind it and says so; Escape takes the page's
    job out of the line while the other keeps running."""
    import threading
    import time

    import requests

    other = {"prompt": "another client's blue square", "steps": 150, "n_iter": 8, "width": 96, "height": 96, "seed": 5,
             "force_task_id": "task(other-client)"}
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(requests.post(f"{demo_server.api}/txt2img", json=other,
                                                                         timeout=300).json()))
    thread.start()
    try:
        def api_progress(task):
            return requests.post(f"{demo_server.url}/internal/progress", json={"id_task": task}, timeout=10).json()

        deadline = time.monotonic() + 60
        while not api_progress("task(other-client)")["active"]:
            assert time.monotonic() < deadline, "the other job never started"
            time.sleep(0.1)
        page.fill("#prompt", "my red circle")
        settings(page, steps=4, width=32, height=32, seed=2)
        page.click("#generate")
        page.wait_for_function("document.getElementById('eta').textContent.includes('queued: in line: 1 job')")
        page.wait_for_function("document.getElementById('queue').textContent.includes('(yours)')")
        items = page.locator("#queue li").all_inner_texts()
        assert len(items) == 2 and "running" in items[0] and "(yours)" not in items[0] and "(yours)" in items[1]
        page.keyboard.press("Escape")
        page.wait_for_function("!document.getElementById('generate').disabled", timeout=30_000)
        assert page.inner_text("#status") == "Interrupted: 0 image(s) finished."
        assert api_progress("task(other-client)")["active"], "the other client's job keeps running"
    finally:
        requests.post(f"{demo_server.api}/interrupt", json={"id_task": "task(other-client)"}, timeout=10)
        thread.join(120)
    assert json.loads(answer["info"])["interrupted"] is True  # stopped by its own id, at the end


def test_the_brush_is_seen_over_a_white_image_and_a_new_image_clears_it(page, tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), (250, 250, 250)).save(white)
    page.check("input[name=mode][value=img2img]")
    page.set_input_files("#init-file", str(white))
    page.wait_for_function("document.getElementById('mask-canvas').width === 64")
    assert page.input_value("#brush") == "4" and page.inner_text("#brush-size") == "4 px"  # a sixteenth of 64
    assert page.eval_on_selector("#mask-canvas", "c => getComputedStyle(c).touchAction") == "none"
    box = page.locator("#mask-canvas").bounding_box()  # 320 px on screen: 5 screen px an image pixel
    page.mouse.move(box["x"] + 20, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 100, steps=2)  # two far-apart events: a line, not two dots
    page.mouse.up()
    shot = screenshot(page)
    row = int(box["y"] + 100)
    line = shot[row, int(box["x"]) + 40:int(box["x"]) + 280]  # between the events, where no event landed
    assert (line[:, 0] > 200).all() and (line[:, 1] < 150).all(), "the stroke is seen, magenta over white"
    above = shot[row - 40, int(box["x"]) + 40:int(box["x"]) + 280]
    assert (above > 240).all(), "and only where it was painted"

    # a touch drag (pointer events from a finger) paints too
    page.evaluate("""() => {
        const canvas = document.getElementById('mask-canvas');
        const box = canvas.getBoundingClientRect();
        const at = (type, x, y) => canvas.dispatchEvent(new PointerEvent(type, {pointerId: 7, pointerType: 'touch',
            clientX: box.left + x, clientY: box.top + y, bubbles: true}));
        at('pointerdown', 100, 250); at('pointermove', 200, 250); at('pointerup', 200, 250);
    }""")
    shot = screenshot(page)
    assert shot[int(box["y"] + 250), int(box["x"] + 150), 1] < 150, "the touch stroke is painted"

    other = tmp_path / "other.png"
    Image.new("RGB", (48, 48), (20, 20, 20)).save(other)
    page.set_input_files("#init-file", str(other))
    page.wait_for_function("document.getElementById('mask-canvas').width === 48")
    assert page.inner_text("#mask-state").startswith("No mask")
    painted = page.evaluate("""() => { const c = document.getElementById('mask-canvas');
        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0); }""")
    assert not painted
    bodies = []
    page.on("request", lambda request: bodies.append(request.post_data_json) if request.url.endswith("/img2img")
            else None)
    page.fill("#prompt", "x")
    settings(page, steps=2, seed=1)
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    assert bodies and "mask" not in bodies[0], "a new image without strokes is plain img2img"


def test_the_page_offers_only_sampler_and_schedule_pairs_that_run(page):
    from t2i.sampling.samplers import resolve_sampler

    offered = 0
    for sampler in page.eval_on_selector_all("#sampler option", "os => os.map(o => o.value)"):
        page.select_option("#sampler", sampler)
        for schedule in page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.value)"):
            resolve_sampler(sampler, schedule)  # raises for a pair t2i refuses
            offered += 1
    assert offered > 60
    page.select_option("#sampler", "Euler a")
    schedules = page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.textContent)")
    assert "Karras" not in schedules and "Automatic" in schedules


def test_results_are_kept_across_a_reload_with_download_view_send_to_and_settings(page, demo_server):
    page.fill("#prompt", "a kept green square")
    settings(page, steps=3, width=32, height=48, seed=21, cfg=4)
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    made = image_pixels(page)
    page.reload()
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    page.wait_for_selector("#gallery figure img")
    assert np.array_equal(image_pixels(page), made), "the image is there after the reload"
    assert "Seed: 21" in page.locator("#gallery figcaption").first.inner_text()
    shot = screenshot(page)
    box = page.locator("#gallery figure img").first.bounding_box()
    region = shot[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    assert region.std() > 10, "the kept image is drawn on the page"
    link = page.locator("#gallery figure a").first
    assert link.get_attribute("download").endswith("-21.png") and link.get_attribute("href").startswith("data:image/png")

    page.locator("#gallery figure img").first.click()
    assert page.is_visible("#lightbox") and "Seed: 21" in page.inner_text("#lightbox-text")
    assert page.locator("#lightbox-image").bounding_box()["width"] >= 400, "the larger view is larger"
    page.click("#lightbox-close")

    page.fill("#prompt", "")
    settings(page, steps=20, seed=-1)
    page.locator("#gallery figure button", has_text="Use settings").first.click()
    page.wait_for_function("document.getElementById('prompt').value === 'a kept green square'")
    assert (page.input_value("#seed"), page.input_value("#steps"), page.input_value("#cfg")) == ("21", "3", "4")
    assert (page.input_value("#width"), page.input_value("#height")) == ("32", "48")

    page.locator("#gallery figure button", has_text="To img2img").first.click()
    page.wait_for_function("document.getElementById('mask-canvas').width === 32")
    assert page.is_checked("input[name=mode][value=img2img]") and page.is_visible("#paint")
    page.click("#clear-history")
    page.wait_for_function("document.getElementById('history-count').textContent === 'No images yet.'")
    page.reload()
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    assert page.locator("#gallery figure").count() == 0


def test_a_phone_wide_page_fits_its_screen(browser, demo_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(demo_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    width = page.evaluate("document.documentElement.scrollWidth")
    boxes = {selector: page.locator(selector).bounding_box() for selector in ("#scheduler", "#sampler", "#generate",
                                                                              "#prompt", "#model")}
    context.close()
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    for selector, box in boxes.items():
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)


def test_lora_picker_token_counter_and_keyboard_reach(page):
    page.fill("#prompt", "a red circle")
    page.wait_for_function("document.getElementById('prompt-tokens').textContent === '3/75'")
    page.select_option("#lora-pick", "cross")
    assert page.input_value("#prompt") == "a red circle <lora:cross:1> "
    page.wait_for_function("document.getElementById('prompt-tokens').textContent === '3/75'")  # tags are no tokens
    page.fill("#prompt", " ".join(["red"] * 80))
    page.wait_for_function("document.getElementById('prompt-tokens').textContent === '80/150'")
    page.focus("#drop .link")
    assert page.evaluate("document.activeElement.id") == "choose-info", "'choose one' is reached by Tab"
    for control in ("brush", "strength"):  # labels name their controls
        assert page.evaluate(f"document.getElementById('{control}').labels.length") == 1


def test_a_controlnet_unit_from_the_page(page, tmp_path, server_files):
    """Add a unit, give it the shapes mask, preview its map, generate: the image equals t2i generate with the
    same unit, and its object sits on the mask."""
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig
    from t2i.sampling.control import ControlUnit
    from t2i.sampling.control_maps import detect
    from t2i.shapes.analyser import foreground
    from t2i.shapes.world import Shape, control_image

    mask = control_image(Shape("blue", "square", 14, 16, 15), "mask")
    mask.save(tmp_path / "mask.png")
    page.fill("#prompt", "a blue square")
    settings(page, steps=8, width=32, height=32, seed=3, cfg=7)
    page.select_option("#sampler", "Euler")
    page.click("#controlnet summary")
    page.click("#add-unit")
    unit = page.locator("#controlnet-units .unit").first
    assert unit.locator(".unit-model").input_value().startswith("shapes-mask [")
    unit.locator(".unit-file").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_function("!document.querySelector('#controlnet-units .unit-map').hidden")
    preview = unit.locator(".unit-map").get_attribute("src")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(shown, np.asarray(mask))  # module none: the map is the image
    unit.locator(".unit-module").select_option("canny")
    page.wait_for_function("(before) => document.querySelector('#controlnet-units .unit-map').src !== before",
                           arg=preview)
    edges = unit.locator(".unit-map").get_attribute("src")
    canny = np.asarray(Image.open(io.BytesIO(base64.b64decode(edges.split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(canny, np.asarray(detect(mask, "canny")))
    unit.locator(".unit-module").select_option("none")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert 'ControlNet 0: "Module: none, Model: shapes-mask [' in caption
    net = str(server_files / "controlnet" / "shapes-mask.safetensors")
    expected, = generate(load_model(ModelConfig(model="demo", device="cpu")), GenerationConfig(
        prompts=("a blue square",), steps=8, seed=3, guidance_scale=7, width=32, height=32, sampler="euler",
        controls=(ControlUnit(net, mask),)), progress=False)
    got = image_pixels(page)
    assert np.array_equal(got, np.asarray(expected.image))
    drawn, target = foreground(Image.fromarray(got)), np.asarray(mask)[..., 0] > 127
    assert (drawn & target).sum() / (drawn | target).sum() > 0.6


def test_an_image_prompt_from_the_page(page, tmp_path, server_files):
    """Choose a picture in the image-prompt box and generate with an empty prompt: the image equals t2i generate
    with the same IP-Adapter unit (and not the one without it)."""
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig
    from t2i.sampling.ip_adapter import IPAdapterUnit
    from t2i.shapes.world import Shape, make_image

    picture = make_image(Shape("orange", "cross", 20, 6, 5))
    picture.save(tmp_path / "picture.png")
    settings(page, steps=10, width=32, height=32, seed=2, cfg=7)
    page.select_option("#sampler", "Euler")
    page.click("#image-prompt summary")
    assert page.locator("#ip-model").input_value().startswith("ip-adapter_shapes [")
    assert page.locator("#controlnet-units .unit").count() == 0
    page.locator("#ip-file").set_input_files(str(tmp_path / "picture.png"))
    page.wait_for_function("!document.querySelector('#ip-image').hidden")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    caption = page.locator("#gallery figcaption").first.inner_text()
    assert 'ControlNet 0: "Module: ip-adapter_shape_features, Model: ip-adapter_shapes [' in caption
    adapter = str(server_files / "controlnet" / "ip-adapter_shapes.safetensors")
    demo = load_model(ModelConfig(model="demo", device="cpu"))
    config = GenerationConfig(prompts=("",), steps=10, seed=2, guidance_scale=7, width=32, height=32, sampler="euler")
    expected, = generate(demo, dataclasses.replace(config, ip_adapters=(IPAdapterUnit(adapter, picture),)),
                         progress=False)
    got = image_pixels(page)
    assert np.array_equal(got, np.asarray(expected.image))
    assert not np.array_equal(got, np.asarray(generate(demo, config, progress=False)[0].image))


def test_a_live_preview_shows_while_a_job_runs(page):
    page.fill("#prompt", "a slow blue square")
    settings(page, steps=150, width=96, height=96, seed=1)
    page.select_option("#live-preview", "Full")
    page.click("#generate")
    page.wait_for_function("!document.getElementById('live-preview-image').hidden", timeout=60_000)
    source = page.locator("#live-preview-image").get_attribute("src")
    shown = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    assert shown.size == (96, 96)
    page.click("#interrupt")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=30_000)
    assert page.locator("#live-preview-image").is_hidden()


def test_attention_maps_from_the_page_by_word(page):
    page.fill("#prompt", "a red circle")
    settings(page, steps=6, width=32, height=32, seed=3)
    page.check("#attention-maps")
    page.click("#generate")
    page.wait_for_selector("#gallery figure .words button")
    words = page.locator("#gallery figure").first.locator(".words button")
    assert words.all_inner_texts() == ["image", "a", "red", "circle"]
    shown = page.locator("#gallery figure img").first
    original = shown.get_attribute("src")
    words.nth(2).click()
    assert shown.get_attribute("src") != original and words.nth(2).get_attribute("aria-pressed") == "true"
    words.nth(0).click()
    assert shown.get_attribute("src") == original
