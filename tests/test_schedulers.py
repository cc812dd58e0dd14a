import subprocess
import sys

import pytest
import torch

from t2i.errors import InvalidInput, NotFound
from t2i.models.config import ModelConfig
from t2i.sampling.config import GenerationConfig
from t2i.sampling.samplers import (
    SAMPLERS,
    SCHEDULES,
    align_your_steps_sigmas,
    build_scheduler,
    resolve_sampler,
    schedule_arguments,
)

SD1_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                 "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False, "clip_sample": False}


def test_registry_has_every_sampler_and_schedule_users_expect():
    expected = {"ddpm", "ddim", "pndm", "euler", "euler-a", "heun", "lms", "dpm2", "dpm2-a", "dpmpp-2m",
                "dpmpp-2m-sde", "dpmpp-2m-sde-heun", "dpmpp-3m-sde", "dpmpp-sde", "dpmpp-2s", "unipc", "deis", "lcm"}
    assert expected == set(SAMPLERS)
    assert set(SCHEDULES) == {"normal", "karras", "exponential", "beta", "sgm-uniform", "simple", "align-your-steps"}
    assert all(spec.summary and spec.a1111 and spec.scheduler.endswith("Scheduler") for spec in SAMPLERS.values())
    assert all(spec.automatic in spec.schedules for spec in SAMPLERS.values())


@pytest.mark.parametrize("name, schedule, expected", [
    ("DPM++ 2M Karras", None, ("dpmpp-2m", "karras")),
    ("dpm++ 2m karras", None, ("dpmpp-2m", "karras")),
    ("dpmpp-2m-karras", "karras", ("dpmpp-2m", "karras")),
    ("dpmpp_2m", "karras", ("dpmpp-2m", "karras")),
    ("dpmpp_2m", "normal", ("dpmpp-2m", "normal")),
    ("dpmpp_2m", None, ("dpmpp-2m", "normal")),
    ("DPM++ 2M", "Karras", ("dpmpp-2m", "karras")),
    ("DPM++ 2M SDE Karras", None, ("dpmpp-2m-sde", "karras")),
    ("DPM++ 2M SDE Exponential", None, ("dpmpp-2m-sde", "exponential")),
    ("dpmpp_2m_sde", None, ("dpmpp-2m-sde", "normal")),
    ("DPM++ 2M SDE Heun", "Exponential", ("dpmpp-2m-sde-heun", "exponential")),
    ("dpmpp_3m_sde", "exponential", ("dpmpp-3m-sde", "exponential")),
    ("DPM++ SDE", None, ("dpmpp-sde", "normal")),
    ("DPM++ SDE Karras", None, ("dpmpp-sde", "karras")),
    ("DPM++ 2S", None, ("dpmpp-2s", "normal")),
    ("Euler a", None, ("euler-a", "normal")),
    ("euler_ancestral", "sgm_uniform", ("euler-a", "sgm-uniform")),
    ("euler", "karras", ("euler", "karras")),
    ("Euler", "Align Your Steps", ("euler", "align-your-steps")),
    ("euler", "ays", ("euler", "align-your-steps")),
    ("euler", "align_your_steps", ("euler", "align-your-steps")),
    ("DPM++ 2M", "SGM Uniform", ("dpmpp-2m", "sgm-uniform")),
    ("dpmpp_2m", "simple", ("dpmpp-2m", "simple")),
    ("heun", "beta", ("heun", "beta")),
    ("PLMS", None, ("pndm", "normal")),
    ("DPM2 a", None, ("dpm2-a", "normal")),
    ("dpm_2_ancestral", "karras", ("dpm2-a", "karras")),
    ("LMS Karras", None, ("lms", "karras")),
    ("uni_pc", "exponential", ("unipc", "exponential")),
    ("  DDIM ", "automatic", ("ddim", "normal")),
    # A1111's Automatic schedule: its sampler table's default (1.9+): Karras, or Exponential for the 2M/3M SDEs
    ("DPM++ 2M", "Automatic", ("dpmpp-2m", "karras")),
    ("DPM2 a", "automatic", ("dpm2-a", "karras")),
    ("DPM++ SDE", "Automatic", ("dpmpp-sde", "karras")),
    ("DPM++ 2M SDE", "Automatic", ("dpmpp-2m-sde", "exponential")),
    ("DPM++ 3M SDE", "Automatic", ("dpmpp-3m-sde", "exponential")),
    ("DPM++ 2M SDE Karras", "Automatic", ("dpmpp-2m-sde", "karras")),  # the joined name wins over Automatic
    ("Euler a", "Automatic", ("euler-a", "normal")),
    ("Euler", "Automatic", ("euler", "normal")),
    ("lcm", None, ("lcm", "normal")),
])
def test_a1111_and_comfyui_names_resolve(name, schedule, expected):
    assert resolve_sampler(name, schedule) == expected


@pytest.mark.parametrize("name, schedule, message, choices", [
    ("bogus", None, "sampler bogus: unknown sampler", "dpmpp-2m"),
    ("ddim", "karras", "has no Karras schedule", "its schedules: Normal, SGM Uniform, Simple"),
    ("lms", "ays", "has no Align Your Steps schedule", "its schedules: Normal, Karras"),
    ("euler", "exponential-ish", "schedule exponential-ish: unknown schedule", "automatic, normal, karras"),
    ("DPM++ 2M Karras", "exponential", "names the Karras schedule, and schedule asks for Exponential", "'dpmpp-2m'"),
])
def test_bad_sampler_names_list_the_choices(name, schedule, message, choices):
    with pytest.raises((InvalidInput, NotFound), match=message) as error:
        resolve_sampler(name, schedule)
    assert choices in str(error.value)


@pytest.mark.parametrize("class_name", sorted({spec.scheduler for spec in SAMPLERS.values()}))
def test_the_schedule_table_matches_what_each_diffusers_class_takes(class_name):
    import inspect

    import diffusers

    scheduler_class = getattr(diffusers, class_name)
    takes = inspect.signature(scheduler_class.__init__).parameters
    custom = {"sigmas", "timesteps"} & set(inspect.signature(scheduler_class.set_timesteps).parameters)
    spec = next(s for s in SAMPLERS.values() if s.scheduler == class_name)
    for name, schedule in SCHEDULES.items():
        possible = (all(key in takes for key in schedule.overrides) if not schedule.custom
                    else bool(custom) and class_name not in ("LCMScheduler", "UniPCMultistepScheduler"))
        assert (name in spec.schedules) == possible, name


@pytest.mark.parametrize("name, schedule", [(n, s) for n, spec in sorted(SAMPLERS.items()) for s in spec.schedules])
def test_each_sampler_builds_its_diffusers_class_with_its_overrides(name, schedule):
    scheduler = build_scheduler(name, schedule, SD1_SCHEDULER)
    spec = SAMPLERS[name]
    assert type(scheduler).__name__ == spec.scheduler
    for key, value in {**spec.overrides, **SCHEDULES[schedule].overrides}.items():
        assert scheduler.config[key] == value
    # the model's own noise schedule is kept: training and sampling must agree
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(**schedule_arguments(scheduler, schedule, 10))
    # second-order samplers call the UNet twice a step but once on the last; PLMS warms up with one extra
    calls = {"heun": 19, "dpm2": 19, "dpm2-a": 19, "dpmpp-sde": 19, "pndm": 11}.get(name, 10)
    assert len(scheduler.timesteps) == calls


def test_each_schedule_gives_its_own_sigmas():
    seen = {}
    for schedule in SCHEDULES:
        scheduler = build_scheduler("euler", schedule, SD1_SCHEDULER)
        scheduler.set_timesteps(**schedule_arguments(scheduler, schedule, 12))
        seen[schedule] = scheduler.sigmas
        assert scheduler.sigmas[-1] == 0 and (scheduler.sigmas[:-1] > 0).all()
        assert (scheduler.sigmas[1:] < scheduler.sigmas[:-1]).all(), schedule
    distinct = {name: sigmas for name, sigmas in seen.items() if name != "sgm-uniform"}  # = simple in diffusers
    for a in distinct:
        for b in distinct:
            assert a == b or not torch.allclose(seen[a], seen[b]), (a, b)
    assert torch.equal(seen["sgm-uniform"], seen["simple"])
    karras = seen["karras"]  # Karras sigmas: rho 7 between the schedule's ends
    ramp = torch.linspace(0, 1, 12)
    expected = (karras[0] ** (1 / 7) + ramp * (karras[11] ** (1 / 7) - karras[0] ** (1 / 7))) ** 7
    assert torch.allclose(karras[:-1], expected, rtol=1e-4)
    exponential = seen["exponential"].log()[:-1]  # evenly spaced in log sigma
    assert torch.allclose(exponential.diff(), exponential.diff().mean().expand(11), rtol=1e-3)


def test_align_your_steps_is_the_published_schedule_at_10_steps_and_log_linear_between():
    from diffusers.schedulers import AysSchedules

    published = AysSchedules["StableDiffusionSigmas"]
    assert align_your_steps_sigmas(10) == pytest.approx(published, rel=1e-6)
    euler = build_scheduler("euler", "align-your-steps", SD1_SCHEDULER)
    assert schedule_arguments(euler, "align-your-steps", 10) == {"sigmas": pytest.approx(published, rel=1e-6)}
    dpm = build_scheduler("dpmpp-2m", "align-your-steps", SD1_SCHEDULER)
    timesteps = schedule_arguments(dpm, "align-your-steps", 10)["timesteps"]  # the sigmas' nearest timesteps
    assert all(abs(a - b) <= 1 for a, b in zip(timesteps, AysSchedules["StableDiffusionTimesteps"], strict=True))
    # 19 steps: every second sigma is a published one, and the ones between are their geometric means
    nineteen = align_your_steps_sigmas(19)
    assert nineteen[0:19:2] == pytest.approx(published[:-1], rel=1e-6)
    assert nineteen[1] == pytest.approx((published[0] * published[1]) ** 0.5, rel=1e-6)
    assert len(nineteen) == 20 and nineteen[-1] == 0
    with pytest.raises(InvalidInput, match="steps 900: is too many for Align Your Steps"):
        schedule_arguments(dpm, "align-your-steps", 900)


def test_switching_from_karras_to_plain_does_not_keep_karras_sigmas():
    karras = build_scheduler("dpmpp-2m", "karras", SD1_SCHEDULER)
    plain = build_scheduler("dpmpp-2m", "normal", SD1_SCHEDULER)
    reference = build_scheduler("dpmpp-2m", "normal", SD1_SCHEDULER)
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
        return pixels(generate(model, GenerationConfig(prompts=("x",), sampler="dpmpp-2m", schedule="normal", steps=3, seed=0))[0])

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
    samplers, schedules = result.stdout.strip().split("\n\n")
    lines = samplers.splitlines()
    assert len(lines) == len(SAMPLERS) + 2  # header, samplers, footnote
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert "euler_ancestral" in rows["euler-a"] and "DPM++ 2M SDE Heun" in rows["dpmpp-2m-sde-heun"]
    assert rows["dpmpp-3m-sde"].split("  dpmpp_3m_sde")[1].split()[0] == "exponential"  # its Automatic
    marked = {name for name, line in rows.items() if " * " in line}
    assert marked == {"ddpm", "deis", "dpmpp-2s"}, "the samplers A1111 would misread as DPM++ 2M"
    schedule_rows = {line.split()[0]: line for line in schedules.splitlines()[1:-1]}
    assert set(schedule_rows) == set(SCHEDULES)
    assert "Align Your Steps" in schedule_rows["align-your-steps"] and " 8/18 " in schedule_rows["align-your-steps"]
