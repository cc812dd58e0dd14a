import subprocess
import sys

import pytest
import torch

from t2i.errors import InvalidInput, NotFound
from t2i.models.config import ModelConfig
from t2i.sampling.config import GenerationConfig
from t2i.sampling.samplers import SAMPLERS, build_scheduler, resolve_sampler

SD1_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                 "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False, "clip_sample": False}


def test_registry_has_every_sampler_users_expect():
    expected = {"ddpm", "ddim", "pndm", "euler", "euler-a", "heun", "lms", "lms-karras", "dpm2", "dpm2-a",
                "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-2m-sde", "dpmpp-2m-sde-karras", "dpmpp-sde", "unipc",
                "deis", "lcm"}
    assert expected <= set(SAMPLERS)
    assert all(spec.summary and spec.a1111 and spec.scheduler.endswith("Scheduler") for spec in SAMPLERS.values())


@pytest.mark.parametrize("name, schedule, expected", [
    ("DPM++ 2M Karras", None, "dpmpp-2m-karras"),
    ("dpm++ 2m karras", None, "dpmpp-2m-karras"),
    ("dpmpp_2m", "karras", "dpmpp-2m-karras"),
    ("dpmpp_2m", "normal", "dpmpp-2m"),
    ("DPM++ 2M", "Karras", "dpmpp-2m-karras"),
    ("DPM++ 2M SDE Karras", None, "dpmpp-2m-sde-karras"),
    ("dpmpp_2m_sde", None, "dpmpp-2m-sde"),
    ("DPM++ SDE", None, "dpmpp-sde"),
    ("Euler a", None, "euler-a"),
    ("euler_ancestral", None, "euler-a"),
    ("euler", "karras", "euler-karras"),
    ("PLMS", None, "pndm"),
    ("DPM2 a", None, "dpm2-a"),
    ("dpm_2_ancestral", "karras", "dpm2-a-karras"),
    ("dpm_2", None, "dpm2"),
    ("LMS Karras", None, "lms-karras"),
    ("uni_pc", None, "unipc"),
    ("  DDIM ", "automatic", "ddim"),
    # A1111's Automatic schedule: Karras where A1111's sampler table defaults to it
    ("DPM++ 2M", "Automatic", "dpmpp-2m-karras"),
    ("DPM2 a", "automatic", "dpm2-a-karras"),
    ("DPM++ SDE", "Automatic", "dpmpp-sde-karras"),
    ("Euler a", "Automatic", "euler-a"),
    ("Euler", "Automatic", "euler"),
    ("lcm", None, "lcm"),
])
def test_a1111_and_comfyui_names_resolve(name, schedule, expected):
    assert resolve_sampler(name, schedule) == expected


@pytest.mark.parametrize("name, schedule, message, choices", [
    ("bogus", None, "sampler bogus: unknown sampler", "dpmpp-2m-karras"),
    ("ddim", "karras", "has no Karras schedule", "dpmpp-2m-karras"),
    ("euler", "exponential-ish", "schedule exponential-ish: unknown schedule", "automatic, normal, karras"),
])
def test_bad_sampler_names_list_the_choices(name, schedule, message, choices):
    with pytest.raises((InvalidInput, NotFound), match=message) as error:
        resolve_sampler(name, schedule)
    assert choices in str(error.value)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_builds_its_diffusers_class_with_its_overrides(name):
    scheduler = build_scheduler(name, SD1_SCHEDULER)
    spec = SAMPLERS[name]
    assert type(scheduler).__name__ == spec.scheduler
    for key, value in spec.overrides.items():
        assert scheduler.config[key] == value
    # the model's own noise schedule is kept: training and sampling must agree
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012


def test_switching_from_karras_to_plain_does_not_keep_karras_sigmas():
    karras = build_scheduler("dpmpp-2m-karras", SD1_SCHEDULER)
    plain = build_scheduler("dpmpp-2m", SD1_SCHEDULER)
    reference = build_scheduler("dpmpp-2m", SD1_SCHEDULER)
    for scheduler in (karras, plain, reference):
        scheduler.set_timesteps(10)
    assert not plain.config.use_karras_sigmas
    assert not torch.allclose(karras.sigmas, plain.sigmas)
    assert torch.equal(plain.sigmas, reference.sigmas)


def test_generate_swaps_from_the_original_config_not_the_last_one():
    from conftest import pixels

    from t2i.models.loading import load_model
    from t2i.sampling.generate import generate

    def plain(model):
        return pixels(generate(model, GenerationConfig(prompts=("x",), sampler="dpmpp-2m", steps=3, seed=0))[0])

    model = load_model(ModelConfig(model="tiny", device="cpu"))
    karras = pixels(generate(model, GenerationConfig(prompts=("x",), sampler="dpmpp-2m-karras", steps=3, seed=0))[0])
    after_karras = plain(model)
    assert not (karras == after_karras).all()
    assert (after_karras == plain(load_model(ModelConfig(model="tiny", device="cpu")))).all()
    assert type(model.pipe.scheduler).__name__ == "PNDMScheduler"  # the shared model is never changed
    assert model.scheduler_config["_class_name"] == "PNDMScheduler"


def test_samplers_command_lists_names_without_importing_torch():
    code = ("import sys; from t2i.cli import main; sys.argv = ['t2i', 'samplers']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dpmpp-2m-karras" in result.stdout and "DPM++ 2M Karras" in result.stdout
    assert "euler_ancestral" in result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(SAMPLERS) + 2  # header, samplers, footnote
    marked = {line.split()[0] for line in lines[1:-1] if " * " in line}
    assert marked == {"ddpm", "deis"}, "the samplers A1111 would misread as DPM++ 2M"
