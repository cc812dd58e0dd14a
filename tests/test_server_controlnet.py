"""A1111's ControlNet extension API on `t2i serve`, driven by webuiapi's own ControlNetUnit: the same
pixels as `t2i generate --control`, the detected map appended, every route the extension has, and
every bad unit refused by its field."""

import base64
import io

import numpy as np
import pytest
import requests
import webuiapi
from conftest import pixels
from PIL import Image

from t2i.sampling.control_maps import control_map, detect
from t2i.shapes.analyser import foreground
from t2i.shapes.world import Shape, control_image, make_image

# webuiapi's txt2img/img2img default `alwayson_scripts={}` is one dict shared by every call, and its
# controlnet_units are written into it: each call here passes a fresh one, or units leak into later calls
SMALL = {"width": 32, "height": 32}
SPEC = Shape("red", "circle", 16, 13, 3)


@pytest.fixture(scope="module")
def api(demo_server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=demo_server.port)


@pytest.fixture(scope="module")
def model_title(api):
    titles = requests.get(f"{api.baseurl.rsplit('/sdapi', 1)[0]}/controlnet/model_list").json()["model_list"]
    assert [t.split(" [")[0] for t in titles] == ["ip-adapter_shapes", "shapes-mask"]
    assert titles[1].startswith("shapes-mask [") and len(titles[1]) == len("shapes-mask []") + 8
    return titles[1]


@pytest.fixture(scope="module")
def adapter_title(api):
    return requests.get(f"{root(api)}/controlnet/model_list").json()["model_list"][0]


def root(api) -> str:
    return api.baseurl.rsplit("/sdapi", 1)[0]


def test_a_webuiapi_unit_equals_t2i_generate_and_follows_the_mask(api, model_title, run_cli, tmp_path, server_files):
    mask = control_image(SPEC, "mask")
    unit = webuiapi.ControlNetUnit(image=mask, module="none", model=model_title, weight=1.0,
                                   resize_mode="Crop and Resize", control_mode=0)
    result = api.txt2img(prompt="a red circle", seed=4, steps=12, sampler_name="Euler", cfg_scale=7.5,
                         controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert len(result.images) == 2  # the image, then the detected map (save_detected_map defaults on)
    assert np.array_equal(pixels(result.images[1]), pixels(mask))
    drawn, target = foreground(result.image), np.asarray(mask)[..., 0] > 127
    assert (drawn & target).sum() / (drawn | target).sum() > 0.6
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "cli"
    code, _, err = run_cli("generate", "a red circle", "--model", "demo", "--seed", 4, "--steps", 12, "--sampler",
                           "euler", "--guidance-scale", 7.5, "--out", out, "--control",
                           f"{server_files / 'controlnet' / 'shapes-mask.safetensors'}={tmp_path / 'mask.png'}")
    assert code == 0, err
    expected = Image.open(next(out.glob("*.png")))
    assert np.array_equal(pixels(result.image), pixels(expected))
    assert 'ControlNet 0: "Module: none, Model: shapes-mask [' in result.info["infotexts"][0]
    assert "Control Mode: Balanced" in result.info["infotexts"][0]


def test_img2img_unit_without_an_image_reads_the_init_image(api, model_title):
    init = make_image(SPEC)
    raw = {"module": "threshold", "model": model_title, "threshold_a": 200, "save_detected_map": True}
    result = api.img2img(images=[init], prompt="a red circle", seed=2, steps=6, denoising_strength=0.9,
                         sampler_name="Euler", alwayson_scripts={"controlnet": {"args": [raw]}}, **SMALL)
    assert len(result.images) == 2
    assert np.array_equal(pixels(result.images[1]), pixels(control_map(init, "threshold", (32, 32),
                                                                       "Crop and Resize", threshold_a=200)))
    assert "Module: threshold" in result.info["infotexts"][0] and "Threshold A: 200" in result.info["infotexts"][0]


def test_disabled_units_and_save_detected_map_false(api, model_title):
    mask = control_image(SPEC, "mask")
    plain = api.txt2img(prompt="a red circle", seed=4, steps=4, sampler_name="Euler", alwayson_scripts={}, **SMALL)
    off = webuiapi.ControlNetUnit(image=mask, model=model_title, enabled=False)
    result = api.txt2img(prompt="a red circle", seed=4, steps=4, sampler_name="Euler", controlnet_units=[off],
                         alwayson_scripts={}, **SMALL)
    assert len(result.images) == 1 and np.array_equal(pixels(result.image), pixels(plain.image))
    raw = {"image": webuiapi.raw_b64_img(mask), "model": model_title, "save_detected_map": False}
    result = api.txt2img(prompt="a red circle", seed=4, steps=4, sampler_name="Euler",
                         alwayson_scripts={"ControlNet": {"args": [raw]}}, **SMALL)
    assert len(result.images) == 1 and not np.array_equal(pixels(result.image), pixels(plain.image))


@pytest.mark.parametrize("unit, field, words", [
    ({"module": "depth_midas"}, "args[0].module", "not a weight-free preprocessor"),
    ({"model": "control_v11p_sd15_canny [d14c016b]"}, "args[0].model", "no such ControlNet or IP-Adapter on this server"),
    ({"model": "None"}, "args[0].model", "names no ControlNet model"),
    ({"weight": "heavy"}, "args[0].weight", "must be a number"),
    ({"weight": 3.0}, "args[0].weight", "from 0 to 2"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "args[0].guidance_start", "less than the end"),
    ({"resize_mode": "Stretch"}, "args[0].resize_mode", "unknown ControlNet resize mode"),
    ({"control_mode": 7}, "args[0].control_mode", "unknown control mode"),
    ({"effective_region_mask": "abc"}, "args[0].effective_region_mask", "does not take it"),
    ({"sharpness": 2}, "args[0].sharpness", "not a ControlNet unit field"),
    ({"image": "not base64!"}, "args[0].image", "not valid base64"),
])
def test_bad_units_are_422s_naming_the_field(api, model_title, unit, field, words):
    body = {"prompt": "x", "steps": 2, **SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {"image": webuiapi.raw_b64_img(control_image(SPEC, "mask")), "model": model_title, **unit}]}}}
    response = requests.post(f"{api.baseurl}/txt2img", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"alwayson_scripts.controlnet.{field}") and words in detail, detail
    assert requests.get(f"{root(api)}/controlnet/version").json() == {"version": 2}  # still serving


def test_a_txt2img_unit_needs_an_image(api, model_title):
    body = {"prompt": "x", "steps": 2, **SMALL, "alwayson_scripts": {"controlnet": {"args": [{"model": model_title}]}}}
    response = requests.post(f"{api.baseurl}/txt2img", json=body)
    assert response.status_code == 422 and "has no image" in response.json()["detail"]


def test_the_extensions_routes(api, model_title):
    base = root(api)
    modules = requests.get(f"{base}/controlnet/module_list").json()
    assert {"none", "canny", "invert", "threshold", "blur_gaussian", "scribble_xdog", "tile_resample",
            "ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter-auto", "ip-adapter_shape_features"} == set(
        modules["module_list"])
    assert modules["module_detail"]["ip-adapter-auto"]["model_free"] is False
    assert modules["module_detail"]["canny"]["sliders"][1] == {"name": "Canny Low Threshold", "value": 100, "min": 1,
                                                                "max": 255}
    aliased = requests.get(f"{base}/controlnet/module_list", params={"alias_names": "true"}).json()
    assert "invert (from white bg & black line)" in aliased["module_list"]
    types = requests.get(f"{base}/controlnet/control_types").json()["control_types"]
    assert types["All"]["model_list"][0] == "None" and model_title in types["All"]["model_list"]
    assert types["Canny"]["default_option"] == "canny"
    assert [m.split(" [")[0] for m in types["IP-Adapter"]["model_list"]] == ["None", "ip-adapter_shapes"]
    assert requests.get(f"{base}/controlnet/settings").json()["control_net_unit_count"] == 8
    picture = make_image(SPEC)
    answer = requests.post(f"{base}/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [webuiapi.raw_b64_img(picture)],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150}).json()
    got = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert answer["info"] == "Success"
    assert np.array_equal(pixels(got), pixels(detect(picture, "canny", 64, 50, 150)))
    bad = requests.post(f"{base}/controlnet/detect", json={"controlnet_module": "openpose",
                                                            "controlnet_input_images": [webuiapi.raw_b64_img(picture)]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("controlnet_module openpose")


def test_an_ip_adapter_unit_equals_t2i_generate_and_shows_no_map(api, adapter_title, run_cli, tmp_path):
    """An IP-Adapter unit as A1111's extension takes it (an ip-adapter module among the ControlNet units)."""
    reference = make_image(Shape("green", "triangle", 18, 6, 8))
    unit = webuiapi.ControlNetUnit(image=reference, module="ip-adapter-auto", model=adapter_title, weight=0.8)
    result = api.txt2img(prompt="", seed=5, steps=8, sampler_name="Euler", cfg_scale=5, controlnet_units=[unit],
                         alwayson_scripts={}, **SMALL)
    assert len(result.images) == 1  # an adapter has no detected map
    assert 'ControlNet 0: "Module: ip-adapter_shape_features, Model: ip-adapter_shapes [' in result.info["infotexts"][0]
    reference.save(tmp_path / "reference.png")
    from t2i.models import SHAPE_IP_ADAPTER

    code, _, err = run_cli("generate", "", "--model", "demo", "--seed", 5, "--steps", 8, "--sampler", "euler",
                           "--guidance-scale", 5, "--out", tmp_path / "cli", "--ip-adapter", SHAPE_IP_ADAPTER,
                           "--ip-image", tmp_path / "reference.png", "--ip-scale", 0.8)
    assert code == 0, err
    assert np.array_equal(pixels(result.image), pixels(Image.open(next((tmp_path / "cli").glob("*.png")))))


@pytest.mark.parametrize("unit, field, words", [
    ({"weight": 2.5}, "args[0].weight", "from 0 to 2"),
    ({"guidance_start": 0.9, "guidance_end": 0.5}, "args[0].guidance_start", "less than the end"),
    ({"image": None}, "args[0].image", "has no image"),
    ({"ipadapter_input": ["gANjdG9yY2g="]}, "args[0].ipadapter_input", "does not take it"),
])
def test_bad_ip_adapter_units_are_422s(api, adapter_title, unit, field, words):
    raw = {"image": webuiapi.raw_b64_img(make_image(SPEC)), "module": "ip-adapter-auto", "model": adapter_title,
           **unit}
    response = requests.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "steps": 2, **SMALL,
                                                              "alwayson_scripts": {"controlnet": {"args": [raw]}}})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"alwayson_scripts.controlnet.{field}") and words in detail, detail


def test_a_controlnet_named_as_an_ip_adapter_is_refused(api, model_title):
    raw = {"image": webuiapi.raw_b64_img(make_image(SPEC)), "module": "ip-adapter-auto", "model": model_title}
    response = requests.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "steps": 2, **SMALL,
                                                              "alwayson_scripts": {"controlnet": {"args": [raw]}}})
    assert response.status_code == 422 and "not an IP-Adapter" in response.json()["detail"], response.text
