"""`t2i serve` driven by `webuiapi`, the A1111 client from PyPI, unmodified: what a client gets
equals `t2i generate` with the same settings, pixel for pixel and infotext for infotext."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from conftest import pixels
from PIL import Image

SMALL = {"width": 32, "height": 32}  # the demo model's native size


@pytest.fixture(scope="module")
def api(demo_server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=demo_server.port)


def generated(run_cli, tmp_path, *args):
    """The images and infotexts `t2i generate ARGS` writes."""
    out = tmp_path / "cli"
    code, _, err = run_cli("generate", "--model", "demo", "--out", out, *args)
    assert code == 0, err
    files = sorted(out.glob("*.png"))
    return [Image.open(f) for f in files]


def test_txt2img_batch_equals_t2i_generate(api, run_cli, tmp_path):
    result = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=5, steps=12, batch_size=2,
                         sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=7.5, **SMALL)
    assert result.info["all_seeds"] == [5, 6]
    assert [image.size for image in result.images] == [(32, 32), (32, 32)]
    expected = generated(run_cli, tmp_path, "a red circle", "--negative-prompt", "blue", "--seed", 5,
                         "--num-images", 2, "--batch-size", 2, "--steps", 12, "--sampler", "DPM++ 2M",
                         "--schedule", "karras", "--guidance-scale", 7.5)
    for got, want, text in zip(result.images, expected, result.info["infotexts"]):
        assert np.array_equal(pixels(got), pixels(want))
        assert got.info["parameters"] == want.info["parameters"] == text
    assert "Seed: 6" in result.info["infotexts"][1] and "Schedule type: Karras" in result.info["infotexts"][0]
    assert not np.array_equal(pixels(result.images[0]), pixels(result.images[1]))


def test_automatic_schedule_is_a1111s_choice_for_the_sampler(api):
    result = api.txt2img(prompt="a square", seed=1, steps=4, sampler_name="DPM++ 2M", scheduler="automatic", **SMALL)
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in result.info["infotexts"][0]
    result = api.txt2img(prompt="a square", seed=1, steps=4, sampler_name="Euler a", **SMALL)
    assert "Sampler: Euler a, Schedule type: Normal" in result.info["infotexts"][0]


def test_img2img_equals_t2i_generate(api, run_cli, tmp_path, init_image):
    result = api.img2img(images=[Image.open(init_image)], prompt="a blue square", seed=9, steps=10,
                         denoising_strength=0.6, sampler_name="Euler", **SMALL)
    expected, = generated(run_cli, tmp_path, "a blue square", "--init-image", init_image, "--strength", 0.6,
                          "--seed", 9, "--steps", 10, "--sampler", "euler", "--guidance-scale", 7)
    assert np.array_equal(pixels(result.image), pixels(expected))
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_inpainting_equals_t2i_generate(api, run_cli, tmp_path, init_image, mask_image, area):
    """One inpainting for every front end: A1111's (mask blur, masked content, the area, then the overlay that
    keeps every unmasked pixel), so the same settings give the same pixels from the API and the CLI."""
    init, mask = Image.open(init_image), Image.open(mask_image)
    result = api.img2img(images=[init], mask_image=mask, prompt="a green circle", seed=2, steps=8,
                         denoising_strength=0.9, sampler_name="Euler", mask_blur=2, inpainting_fill=1,
                         inpaint_full_res=area == "masked", inpaint_full_res_padding=4, **SMALL)
    expected, = generated(run_cli, tmp_path, "a green circle", "--init-image", init_image, "--mask", mask_image,
                          "--strength", 0.9, "--seed", 2, "--steps", 8, "--sampler", "euler", "--guidance-scale", 7,
                          "--mask-blur", 2, "--fill", "original", "--inpaint-area", area, "--inpaint-padding", 4)
    assert np.array_equal(pixels(result.image), pixels(expected))
    far = np.ones((32, 32), dtype=bool)
    far[:26, :26] = False  # beyond the 16x16 mask at (4, 4) and its blur
    assert np.array_equal(pixels(expected)[far], pixels(init)[far]), "the CLI keeps unmasked pixels too"
    assert np.abs(pixels(expected)[6:18, 6:18] - pixels(init)[6:18, 6:18]).mean() > 10


def test_inpainting_repaints_the_mask_and_keeps_every_other_pixel(api, init_image, mask_image):
    init, mask = Image.open(init_image), Image.open(mask_image)
    result = api.img2img(images=[init], mask_image=mask, prompt="a green circle", seed=2, steps=10,
                         denoising_strength=0.9, inpainting_fill=1, inpaint_full_res=False, mask_blur=0, **SMALL)
    masked = np.asarray(mask) > 127
    got, original = pixels(result.image), pixels(init)
    assert np.array_equal(got[~masked], original[~masked]), "A1111's overlay keeps unmasked pixels exactly"
    assert np.abs(got[masked] - original[masked]).mean() > 10, "the masked area is repainted"

    # A1111's defaults: masked content "fill", "only masked" at full resolution; unblurred, then blurred by 4
    sharp = api.img2img(images=[init], mask_image=mask, prompt="a green circle", seed=2, steps=10, mask_blur=0,
                        **SMALL)
    assert sharp.image.size == (32, 32)
    assert np.array_equal(pixels(sharp.image)[~masked], original[~masked])
    assert np.abs(pixels(sharp.image)[masked] - original[masked]).mean() > 10
    soft = pixels(api.img2img(images=[init], mask_image=mask, prompt="a green circle", seed=2, steps=10, **SMALL).image)
    assert np.array_equal(soft[30:, 30:], original[30:, 30:]), "beyond the blur's reach nothing changes"
    assert not np.array_equal(soft[20:22, 4:20], original[20:22, 4:20]), "the blur reaches past the mask's edge"
    inverted = api.img2img(images=[init], mask_image=mask, prompt="a green circle", seed=2, steps=10,
                           denoising_strength=0.9, inpainting_fill=1, inpaint_full_res=False, mask_blur=0,
                           inpainting_mask_invert=1, **SMALL)
    assert np.array_equal(pixels(inverted.image)[masked], original[masked])


def test_png_info_reads_the_infotext_back(api):
    result = api.txt2img(prompt="a cat, (cute:1.2)", seed=3, steps=4, **SMALL)
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0]
    assert info.parameters["Prompt"] == "a cat, (cute:1.2)"
    assert info.parameters["Seed"] == "3" and info.parameters["Sampler"] == "Euler a"  # webuiapi's default


def test_png_info_reads_a1111s_jpeg_and_webp_exif(api, tmp_path, run_cli):
    """A1111 saves JPEG and WebP with the infotext in EXIF UserComment, through piexif: written here
    the same way, read back by the API, `t2i info` and the page's chooser (which posts to the API)."""
    import piexif
    import piexif.helper

    result = api.txt2img(prompt="<lora:cross:0.5> a café", seed=3, steps=2, **SMALL)
    text = result.info["infotexts"][0]
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text,
                                                                                              encoding="unicode")}})
    jpeg, webp = tmp_path / "a.jpg", tmp_path / "a.webp"
    result.image.save(jpeg, format="JPEG", quality=90)
    piexif.insert(exif, str(jpeg))  # A1111's JPEG path
    result.image.save(webp, format="WEBP", exif=exif)  # and its WebP one
    for path in (jpeg, webp):  # the file's own bytes, as the page sends them (webuiapi re-encodes as PNG)
        data = base64.b64encode(path.read_bytes()).decode()
        info = requests.post(f"{api.baseurl}/png-info", json={"image": data}, timeout=60).json()
        assert info["info"] == text and info["parameters"]["Seed"] == "3", path
        code, out, err = run_cli("info", path)
        assert code == 0 and out.rstrip("\n") == text, err


def test_listings(api):
    samplers = api.get_samplers()
    names = [s["name"] for s in samplers]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun"} <= set(names)
    assert len(names) == len(set(names))
    assert next(s for s in samplers if s["name"] == "DPM++ 2M")["options"] == {"scheduler": "karras"}
    assert next(s for s in samplers if s["name"] == "DPM++ 3M SDE")["options"] == {"scheduler": "exponential"}
    assert api.util_get_scheduler_names() == sorted(["automatic", "normal", "karras", "exponential", "beta",
                                                     "sgm_uniform", "simple", "align_your_steps"])
    assert api.util_get_model_names() == ["demo", "tiny-sd"]
    assert [(lora["name"], lora["path"].endswith("cross.safetensors")) for lora in api.get_loras()] == [("cross", True)]
    assert api.get_scripts() == {"txt2img": [], "img2img": ["poor man's outpainting", "outpainting mk2",
                                                                "img2img alternative test"]}
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert [m["name"] for m in api.get_latent_upscale_modes()][-1] == "Latent (nearest-exact)"
    assert api.get_sd_vae() == []
    embeddings = api.get_embeddings()
    assert embeddings["loaded"]["shapestyle"]["vectors"] == 2 and embeddings["loaded"]["shapestyle"]["shape"] == 64
    assert list(embeddings["skipped"]) == ["pickled"]  # a pickle is never opened by the server without opt-in
    assert api.refresh_checkpoints() is None


def test_switching_the_model_through_options(api):
    try:
        api.util_set_model("tiny-sd")
        assert api.util_get_current_model() == "tiny-sd"
        result = api.txt2img(prompt="x", seed=1, steps=2, **SMALL)
        assert "Model: tiny-sd" in result.info["infotexts"][0]
    finally:
        api.set_options({"sd_model_checkpoint": "demo"})
    assert api.get_options()["sd_model_checkpoint"] == "demo"
    # a per-request override leaves the server's choice as it was
    result = api.txt2img(prompt="x", seed=1, steps=2, override_settings={"sd_model_checkpoint": "tiny-sd"}, **SMALL)
    assert "Model: tiny-sd" in result.info["infotexts"][0]
    assert api.get_options()["sd_model_checkpoint"] == "demo"


def test_options_round_trip_and_unknown_ones_are_kept_without_effect(api):
    before = api.get_options()
    api.set_options(before)  # what A1111 clients do: GET, change a value, POST the whole body back
    api.set_options({"jpeg_quality": 80, "live_previews_image_format": "jpeg"})
    after = api.get_options()
    assert after["jpeg_quality"] == 80 and after["live_previews_image_format"] == "jpeg"
    assert {k: after[k] for k in before} == before, "nothing t2i acts on changed"
    result = api.txt2img(prompt="x", seed=1, steps=2, **SMALL)
    assert f"Model: {before['sd_model_checkpoint']}" in result.info["infotexts"][0]


def test_embeddings_in_the_embeddings_folder_are_used_and_recorded(api):
    styled = api.txt2img(prompt="a red circle, shapestyle", seed=4, steps=4, sampler_name="DDIM", **SMALL)
    plain = api.txt2img(prompt="a red circle, ", seed=4, steps=4, sampler_name="DDIM", **SMALL)
    assert "TI hashes: \"shapestyle: " in styled.info["infotexts"][0] and "TI hashes" not in plain.info["infotexts"][0]
    assert not np.array_equal(pixels(styled.image), pixels(plain.image))


def test_lora_tags_resolve_in_the_lora_folder(api, server_files):
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig

    tagged = api.txt2img(prompt="a red circle <lora:cross:0.8>", seed=4, steps=6, sampler_name="DDIM", **SMALL)
    plain = api.txt2img(prompt="a red circle", seed=4, steps=6, sampler_name="DDIM", **SMALL)
    assert "<lora:cross:0.8>" in tagged.info["infotexts"][0] and "Lora hashes" in tagged.info["infotexts"][0]
    assert not np.array_equal(pixels(tagged.image), pixels(plain.image))
    model = load_model(ModelConfig(model="demo", device="cpu"))
    lora = f"{server_files}/loras/cross.safetensors:0.8"
    direct, = generate(model, GenerationConfig(prompts=("a red circle ",), seed=4, steps=6, sampler="ddim",
                                               guidance_scale=7.0, loras=(lora,)), progress=False)
    assert np.array_equal(pixels(tagged.image), pixels(direct))


def _long_job(api, results, **extra):
    payload = {"prompt": "a slow red circle", "seed": 1, "steps": 150, "n_iter": 4, "width": 96, "height": 96}
    results.append(api.txt2img(**{**payload, **extra}))


def _wait_for_step(demo_server, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = requests.get(f"{demo_server.api}/progress").json()
        if state["state"]["sampling_step"] > 0:
            return state
        time.sleep(0.05)
    raise AssertionError("the job never started stepping")


def test_progress_and_interrupt_return_the_images_finished_so_far(api, demo_server):
    results = []
    worker = threading.Thread(target=_long_job, args=(api, results))
    worker.start()
    progress = _wait_for_step(demo_server)
    assert progress["state"]["job_count"] == 4 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    stopped_at = time.monotonic()
    api.interrupt()
    worker.join(timeout=60)
    assert not worker.is_alive() and time.monotonic() - stopped_at < 5, "stops within a step or so"
    result, = results
    assert result.info["interrupted"] is True and len(result.images) < 4
    api.util_wait_for_ready(check_interval=0.1)
    assert requests.get(f"{demo_server.api}/progress").json()["state"]["job_count"] == 0


def test_skip_drops_the_running_batch_and_goes_on(api, demo_server):
    results = []
    worker = threading.Thread(target=_long_job, args=(api, results), kwargs={"n_iter": 2, "steps": 30})
    worker.start()
    _wait_for_step(demo_server)
    api.skip()
    worker.join(timeout=120)
    result, = results
    assert result.info["interrupted"] is False
    assert result.info["all_seeds"] == [2], "the first batch was skipped, the second made"


def test_a_client_that_disconnects_leaves_no_work_running(demo_server):
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.post(f"{demo_server.api}/txt2img", json={"prompt": "gone", "steps": 150, "n_iter": 8,
                                                          "width": 96, "height": 96}, timeout=1.5)
    deadline = started + 15
    while time.monotonic() < deadline:
        if requests.get(f"{demo_server.api}/progress").json()["state"]["job_count"] == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the abandoned job kept running")


def test_waiting_clients_that_leave_free_their_queue_slots_at_once(demo_server):
    """One long job runs; 4 clients queue behind it and give up after 1.5 s. Their slots are free
    within a second of their leaving, while the long job still runs; then it is interrupted."""
    import threading

    def leave_after(seconds, body=None):
        try:
            requests.post(f"{demo_server.api}/txt2img", json=body or {"prompt": "waits", "steps": 2, **SMALL},
                          timeout=seconds)
        except requests.Timeout:
            pass

    long_body = {"prompt": "long", "steps": 150, "n_iter": 8, "width": 96, "height": 96}
    long = threading.Thread(target=leave_after, args=(120, long_body))
    long.start()
    try:
        deadline = time.monotonic() + 10
        while requests.get(f"{demo_server.api}/progress").json()["state"]["job_count"] == 0:
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.05)
        waiters = [threading.Thread(target=leave_after, args=(1.5,)) for _ in range(4)]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.8)
        assert requests.get(f"{demo_server.api}/progress").json()["state"]["queued"] == 4
        for waiter in waiters:
            waiter.join()
        time.sleep(1.0)  # the server polls for disconnects every 0.25 s
        state = requests.get(f"{demo_server.api}/progress").json()["state"]
        assert state["queued"] == 0 and state["job_count"] > 0, state
    finally:
        requests.post(f"{demo_server.api}/interrupt")
        long.join()


def test_save_images_writes_into_the_output_folder_and_send_images_false_sends_none(api, server_files):
    folder = server_files / "outputs" / "txt2img-images"
    before = set(folder.glob("*.png")) if folder.exists() else set()
    result = api.txt2img(prompt="kept", seed=21, steps=2, save_images=True, send_images=False, **SMALL)
    assert result.images == [] and result.info["all_seeds"] == [21]
    new, = set(folder.glob("*.png")) - before
    assert new.name.endswith("-21.png") and Image.open(new).info["parameters"] == result.info["infotexts"][0]


def _preview_when_stepping(demo_server, **params):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = requests.get(f"{demo_server.api}/progress", params=params).json()
        if state["state"]["sampling_step"] > 4:
            return state
        time.sleep(0.05)
    raise AssertionError("the job never got past step 4")


@pytest.mark.parametrize("kind", ["Approx cheap", "Full"])
def test_live_previews_when_the_request_asks(api, demo_server, kind):
    """/progress's current_image: the running job's latest preview (A1111's show_progress_every_n_steps and
    show_progress_type, per request), none with skip_current_image, none when not asked."""
    results = []
    overrides = {"show_progress_every_n_steps": 2, "show_progress_type": kind}
    worker = threading.Thread(target=_long_job, args=(api, results), kwargs={"override_settings": overrides})
    worker.start()
    try:
        state = _preview_when_stepping(demo_server)
        preview = Image.open(io.BytesIO(base64.b64decode(state["current_image"])))
        assert preview.size == (96, 96)
        assert _preview_when_stepping(demo_server, skip_current_image="true")["current_image"] is None
    finally:
        api.interrupt()
        worker.join(timeout=60)
    results.clear()
    worker = threading.Thread(target=_long_job, args=(api, results))
    worker.start()
    try:
        assert _preview_when_stepping(demo_server)["current_image"] is None
    finally:
        api.interrupt()
        worker.join(timeout=60)
    api.util_wait_for_ready(check_interval=0.1)


def test_an_unknown_preview_type_is_a_422(api, demo_server):
    response = requests.post(f"{demo_server.api}/txt2img", json={
        "prompt": "x", "steps": 2, **SMALL, "override_settings": {"show_progress_type": "Sketch"}})
    assert response.status_code == 422 and "show_progress_type" in response.json()["detail"]
    response = requests.post(f"{demo_server.api}/options", json={"show_progress_type": "Sketch"})
    assert response.status_code == 422


def test_attention_maps_come_back_in_info_when_asked(api):
    """t2i's own request field: each image's word maps (the same tiles the Python API gives) in `info`."""
    from t2i import GenerationConfig, generate, load_model
    from t2i.models.config import ModelConfig

    body = {"prompt": "a red circle", "seed": 3, "steps": 6, "sampler_name": "Euler", "cfg_scale": 7, **SMALL}
    answer = requests.post(f"{api.baseurl}/txt2img", json={**body, "t2i_attention_maps": True}).json()
    info = json.loads(answer["info"])
    maps, = info["t2i_attention_maps"]
    assert [m["word"] for m in maps] == ["a", "red", "circle"] and all(m["weight"] == 1 for m in maps)
    expected, = generate(load_model(ModelConfig(model="demo", device="cpu")), GenerationConfig(
        prompts=("a red circle",), seed=3, steps=6, sampler="euler", guidance_scale=7, width=32, height=32,
        attention_maps=True), progress=False)
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert np.array_equal(pixels(image), pixels(expected))
    tiles = expected.attention.tiles(expected.image)
    for entry, tile in zip(maps, tiles):
        assert np.array_equal(pixels(Image.open(io.BytesIO(base64.b64decode(entry["image"])))), pixels(tile))
    plain = requests.post(f"{api.baseurl}/txt2img", json={**body, "steps": 2}).json()
    assert "t2i_attention_maps" not in json.loads(plain["info"])
