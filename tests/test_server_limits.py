"""`t2i serve` under bad requests, limits, auth and load: the right status, A1111's error shape, a
message naming the field, and a server that keeps serving."""

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

SMALL = {"width": 32, "height": 32}


def b64_png(size=(32, 32), colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INIT = {"init_images": [b64_png()], **SMALL}
BAD = [  # (endpoint, body, status, words the message must hold)
    ("txt2img", {"steps": "many"}, 422, "steps"),
    ("txt2img", {"steps": -3}, 422, "steps -3: must be at least 1"),
    ("txt2img", {"cfg_scale": "high"}, 422, "cfg_scale"),
    ("txt2img", {"width": 33, "height": 32}, 422, "width 33: must be a positive multiple of 8"),
    ("txt2img", {"width": 100000, "height": 100000}, 422, "over this server's limit"),
    ("txt2img", {"batch_size": 64}, 422, "batch_size"),
    ("txt2img", {"n_iter": 0}, 422, "n_iter 0"),
    ("txt2img", {"batch_size": 0}, 422, "batch_size 0: must be at least 1"),
    ("txt2img", {"steps": True}, 422, "steps: Value error, must be a number, not true or false"),
    ("txt2img", {"cfg_scale": False}, 422, "cfg_scale: Value error, must be a number"),
    ("txt2img", {"seed": -7}, 422, "seed -7"),
    ("txt2img", {"seed": 2**70}, 422, "seed"),
    ("txt2img", {"sampler_name": "Warp Drive"}, 404, "sampler_name Warp Drive: unknown sampler"),
    ("txt2img", {"scheduler": "Wobbly"}, 422, "scheduler Wobbly: unknown schedule"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, 422, "hr_upscaler R-ESRGAN 4x+: model upscalers"),
    ("txt2img", {"enable_hr": True, "hr_scale": 0.5}, 422, "hr_scale 0.5: must be a number from 1 to 8"),
    ("txt2img", {"enable_hr": True, "denoising_strength": 1.5}, 422, "denoising_strength 1.5: must be in (0, 1]"),
    ("txt2img", {"script_name": "X/Y/Z plot"}, 422, "t2i runs no txt2img scripts"),
    ("txt2img", {"restore_faces": True}, 422, "restore_faces"),
    ("txt2img", {"styles": ["cinematic"]}, 422, "styles"),
    ("txt2img", {"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, 422,
     "alwayson_scripts.ControlNet.args[0].model None: names no ControlNet model"),
    ("txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}}}, 422,
     "alwayson_scripts ADetailer: t2i runs no A1111 extension but ControlNet"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "nope"}}, 404,
     "override_settings.sd_model_checkpoint nope: no such checkpoint"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}, 404, "no such checkpoint"),
    ("txt2img", {"override_settings": {"sd_vae": "../vae.safetensors"}}, 404, "override_settings.sd_vae"),
    ("txt2img", {"override_settings": {"sd_hypernetwork": "x"}}, 422, "override_settings.sd_hypernetwork"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 9}}, 422, "CLIP_stop_at_last_layers 9"),
    ("txt2img", {"prompt": "a cat <lora:../cross:1>"}, 422, "prompt <lora:../cross>: a LoRA tag names a file"),
    ("txt2img", {"prompt": "a cat <lora:missing:1>"}, 404, "prompt <lora:missing>: no LoRA named 'missing'"),
    ("txt2img", {"prompt": "a cat <lora:cross:1e308>"}, 422, "no usable weight (the scale must lie within -100..100)"),
    ("txt2img", {"prompt": "(cat:1e9)"}, 422, "prompt"),
    ("img2img", {"prompt": "x"}, 422, "init_images: img2img needs an init image"),
    ("img2img", {**INIT, "init_images": ["not base64 at all!"]}, 422, "init_images: is not valid base64"),
    ("img2img", {**INIT, "init_images": ["https://example.com/cat.png"]}, 422, "init_images https://example.com/cat"),
    ("img2img", {**INIT, "init_images": [base64.b64encode(b"GIF89a not really").decode()]}, 422,
     "init_images (uploaded image): not a readable image (cannot identify image file)"),
    ("img2img", {**INIT, "mask": b64_png((16, 16))}, 422, "mask 16x16: must be the init image's size, 32x32"),
    ("img2img", {**INIT, "mask": b64_png(colour=(0, 0, 0))}, 422, "mask: is empty"),
    ("img2img", {**INIT, "denoising_strength": 0}, 422, "denoising_strength 0"),
    ("img2img", {**INIT, "denoising_strength": 1.5}, 422, "denoising_strength 1.5"),
    ("img2img", {**INIT, "resize_mode": 3}, 422, "resize_mode 3"),
    ("img2img", {**INIT, "mask": b64_png(), "inpainting_fill": 2}, 422, "inpainting_fill 2"),
    ("options", {"sd_model_checkpoint": "../models/tiny-sd"}, 404, "sd_model_checkpoint ../models/tiny-sd"),
    ("options", {"sd_vae": 3}, 422, "options.sd_vae 3: must be a str"),
    ("png-info", {"image": "@@@"}, 422, "image: is not valid base64"),
    ("png-info", {}, 422, "image: Field required"),
]


@pytest.mark.parametrize("endpoint, body, status, words", BAD, ids=[f"{e}-{w[:30]}" for e, _, _, w in BAD])
def test_bad_requests_get_the_status_and_a_message_naming_the_field(demo_server, endpoint, body, status, words):
    response = requests.post(f"{demo_server.api}/{endpoint}", json=body, timeout=60)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail", "body", "errors"}, "A1111's error shape"
    assert words in answer["detail"]
    assert "Traceback" not in response.text and " at 0x" not in response.text, "no Python repr"


@pytest.mark.parametrize("body, field", [({"cfg_scale": -1}, "cfg_scale"), ({"batch_size": 5, "n_iter": 0}, "n_iter"),
                                         ({"batch_size": 0}, "batch_size")])
def test_errors_name_the_request_field_not_t2is(demo_server, body, field):
    answer = requests.post(f"{demo_server.api}/txt2img", json=body, timeout=60).json()
    assert answer["errors"]["field"] == field and answer["detail"].startswith(field), answer


@pytest.mark.parametrize("data, words", [(b"{not json", "JSON decode error"), (b"[1, 2]", "valid dictionary")])
def test_bodies_that_are_not_json_objects(demo_server, data, words):
    response = requests.post(f"{demo_server.api}/txt2img", data=data, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and words in response.json()["detail"]


def test_unknown_routes_and_keys(demo_server):
    assert requests.get(f"{demo_server.api}/nothing-here").status_code == 404
    assert requests.get(f"{demo_server.url}/docs").status_code == 404, "no page that needs a CDN"
    assert requests.get(f"{demo_server.url}/openapi.json").json()["info"]["title"] == "t2i"
    # unknown keys are ignored, as A1111's models do
    response = requests.post(f"{demo_server.api}/txt2img", json={"prompt": "x", "steps": 2, "my_extension": 1, **SMALL})
    assert response.status_code == 200
    assert requests.get(f"{demo_server.api}/options").status_code == 200, "still serving"


@pytest.fixture(scope="module")
def strict_server(server_files):
    from serving import start_server

    server = start_server(server_files, "--model", "demo", "--api-auth", "ann:s3cret", "--max-queue", "1",
                          "--max-body-mb", "0.05", "--max-steps", "200", "--max-images", "4",
                          auth=("ann", "s3cret"))
    yield server
    server.stop()


def test_auth(strict_server):
    import webuiapi

    for auth in (None, ("ann", "wrong"), ("bob", "s3cret")):
        response = requests.get(f"{strict_server.api}/options", auth=auth)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
        assert "--api-auth" in response.json()["detail"]
    assert requests.get(f"{strict_server.url}/", auth=("ann", "wrong")).status_code == 401, "the page too"
    api = webuiapi.WebUIApi(host="127.0.0.1", port=strict_server.port, username="ann", password="s3cret")
    assert api.txt2img(prompt="x", steps=2, seed=1, **SMALL).info["all_seeds"] == [1]


def test_limits_are_checked_before_any_work(strict_server):
    auth = ("ann", "s3cret")
    big = {"prompt": "x", "init_images": [base64.b64encode(b"\0" * 100_000).decode()]}
    response = requests.post(f"{strict_server.api}/img2img", json=big, auth=auth)
    assert response.status_code == 413 and "0.05 MB (--max-body-mb)" in response.json()["detail"]
    # the same body chunked, with no Content-Length: counted as it arrives, the same 413
    data = json.dumps(big).encode()
    response = requests.post(f"{strict_server.api}/img2img", data=(data[i:i + 4096] for i in range(0, len(data), 4096)),
                             headers={"Content-Type": "application/json"}, auth=auth)
    assert response.status_code == 413 and "0.05 MB (--max-body-mb)" in response.json()["detail"]
    small = json.dumps({"prompt": "x", "steps": 2, "seed": 3, **SMALL}).encode()  # and a small chunked body works
    response = requests.post(f"{strict_server.api}/txt2img", data=iter([small[:10], small[10:]]),
                             headers={"Content-Type": "application/json"}, auth=auth)
    assert response.status_code == 200 and response.json()["parameters"]["seed"] == 3
    response = requests.post(f"{strict_server.api}/txt2img", json={"steps": 201}, auth=auth)
    assert response.status_code == 422 and "steps 201: over this server's limit of 200" in response.json()["detail"]
    response = requests.post(f"{strict_server.api}/txt2img", json={"batch_size": 2, "n_iter": 3}, auth=auth)
    assert response.status_code == 422 and "limit is 4" in response.json()["detail"]


def test_a_full_queue_answers_429_and_the_rest_complete(strict_server):
    auth = ("ann", "s3cret")
    slow = {"prompt": "slow", "steps": 100, "width": 64, "height": 64, "seed": 1}
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(requests.post, f"{strict_server.api}/txt2img", json=slow, auth=auth)
                   for _ in range(4)]
        statuses = sorted(f.result().status_code for f in futures)
        busy = [f.result().json() for f in futures if f.result().status_code == 429]
    assert statuses.count(200) >= 2 and 429 in statuses and set(statuses) <= {200, 429}
    assert all("busy" in answer["detail"] and "--max-queue" in answer["detail"] for answer in busy)
    assert all(f.result().headers["Retry-After"] == "5" for f in futures if f.result().status_code == 429)


def test_concurrent_requests_never_mix_settings_and_memory_returns(demo_server):
    samplers = ["Euler a", "DDIM", "DPM++ 2M", "Heun", "UniPC"]

    def request(index):
        body = {"prompt": f"shape {index}", "seed": 1000 + index, "steps": 4 + index % 3,
                "sampler_name": samplers[index % len(samplers)], "cfg_scale": 3 + index % 4, **SMALL}
        if index % 4 == 0:
            body["prompt"] += " <lora:cross:0.5>"
        return body, requests.post(f"{demo_server.api}/txt2img", json=body, timeout=300)

    request(0)  # warm: LoRA code paths and sampler classes loaded
    idle = demo_server.rss_mb()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(request, range(20)))
    done = 0
    for body, response in answers:
        if response.status_code == 429:
            assert "busy" in response.json()["detail"]
            continue
        assert response.status_code == 200, response.text
        done += 1
        info = json.loads(response.json()["info"])
        text = info["infotexts"][0]
        assert text.startswith(body["prompt"].replace(" <lora:cross:0.5>", "")), text
        assert f"Seed: {body['seed']}," in text and f"Steps: {body['steps']}," in text
        assert f"Sampler: {body['sampler_name']}," in text and f"CFG scale: {body['cfg_scale']}," in text
        assert ("<lora:cross:0.5>" in text) == ("<lora:" in body["prompt"])
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.info["parameters"] == text and np.asarray(image).std() > 1
    assert done >= 5
    assert requests.get(f"{demo_server.api}/progress").json()["state"]["job_count"] == 0
    grown = demo_server.rss_mb() - idle
    assert grown < 150, f"the server kept {grown:.0f} MB after the load"


def test_serve_refuses_bad_settings_in_one_line(run_cli):
    code, _, err = run_cli("serve", "--api-auth", "nopassword")
    assert code == 2 and err.strip() == "t2i: error: --api-auth (hidden): must be USER:PASS"
    code, _, err = run_cli("serve", "--model", "/no/such/model.safetensors", "--host", "0.0.0.0")
    assert code == 2 and "without --api-auth" in err and "--model /no/such/model.safetensors: no such file" in err
    assert len(err.strip().splitlines()) == 2


def test_two_clients_sending_at_once_are_queued_and_each_gets_its_solo_image(demo_server):
    """Two clients send at once with different samplers; the server queues them (one job runs at a
    time) and each image equals the one made alone. Generations really running at once, on one
    loaded model, are tested in test_shared_model.py."""
    bodies = [{"prompt": "a red circle", "seed": 7, "steps": 6, "sampler_name": name, **SMALL}
              for name in ("Euler a", "DPM++ 2M")]
    alone = [requests.post(f"{demo_server.api}/txt2img", json=b).json()["images"][0] for b in bodies]
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, requests.post(f"{demo_server.api}/txt2img", json=bodies[i]).json()["images"][0])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == alone
