"""What the API does, apart from HTTP: generation jobs, options, listings, PNG info.

Each answer has A1111's shape (field names and types its clients read). Generation goes through
`t2i.sampling.generate`, the function `t2i generate` runs, so the same settings give the same pixels.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

from t2i import __version__
from t2i.errors import InvalidInput, check
from t2i.formats.embeddings import embedding_shape
from t2i.formats.infotext import parse_infotext
from t2i.formats.png import JSON_CHUNK, parameters_text, png_base64, png_bytes, save_png
from t2i.sampling.samplers import SAMPLERS, SCHEDULES
from t2i.sampling.settings import ImageSettings
from t2i.server import img2img
from t2i.server.catalog import Catalog
from t2i.server.controlnet_api import ControlNetFolder
from t2i.server.jobs import Cancelled, Job, JobQueue, Stopped, new_task_id, watch_blocks
from t2i.server.schemas import GenerationRequest, Img2ImgRequest
from t2i.server.settings import ServerSettings
from t2i.server.translate import OPTIONS, Plan, check_options, plan

log = logging.getLogger("t2i")


def _scheduler_name(schedule: str) -> str:
    spec = SCHEDULES[schedule]
    return spec.comfy or schedule.replace("-", "_")


MAX_OTHER_OPTIONS = 2000  # A1111 has about 500 options; more is a client filling memory


class Service:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.catalog = Catalog(settings)
        self.controlnets = ControlNetFolder(settings.controlnet_dir, settings.allow_pickle)
        self.queue = JobQueue(settings.max_queue)
        start = self.catalog.checkpoints()[0]
        self.options: dict[str, Any] = {"sd_model_checkpoint": start.title, "sd_vae": "Automatic",
                                        "CLIP_stop_at_last_layers": 1,
                                        "show_progress_every_n_steps": settings.live_preview,
                                        "show_progress_type": "Approx cheap"}
        self.other_options: dict[str, Any] = {}  # A1111 options t2i does not act on, kept for GET
        self._tokenizer: Any = None  # SD 1.x's CLIP tokenizer, read at the first token count

    # ---- generation ------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, kind: str, is_disconnected=None) -> dict[str, Any]:
        # every check before queueing; off the event loop, which keeps answering progress meanwhile
        # (decoding and preparing large init images and masks takes a while)
        work = await asyncio.to_thread(plan, request, self.options, self.catalog, self.settings, self.controlnets)
        config = work.config
        job = Job(kind, images=config.num_images, batch_size=config.batch_size,
                  task_id=request.force_task_id or new_task_id())
        try:
            results, interrupted = await self.queue.run(job, lambda job: self._run(work, job), is_disconnected)
        except Cancelled:  # taken out of the line by its task id: answered as an interrupt before any image
            results, interrupted = [], True
        return self._answer(request, kind, work, results, interrupted, job)

    def _run(self, work: Plan, job: Job) -> tuple[list, bool]:
        """In the worker thread: load (if needed), generate, finish each image as A1111 would."""
        from t2i.sampling.generate import generate_iter

        model = self.catalog.load(work.checkpoint, work.vae)
        watch_blocks(model.pipe.unet)
        results = []
        try:
            for result in generate_iter(model, work.config, on_step=job.on_step, progress=False,
                                        on_preview=job.show_preview, preview_every=work.preview_every,
                                        preview_mode=work.preview_mode):
                results.append((work.finish(result.image), result.settings, result.attention))
                job.image_done()
        except Stopped:
            return results, True
        return results, job.interrupted

    def _answer(self, request, kind, work: Plan, results, interrupted: bool, job: Job) -> dict[str, Any]:
        images = []
        for image, settings, _ in results:
            data = png_bytes(image, settings)
            if request.send_images:
                images.append(base64.b64encode(data).decode("ascii"))
            if request.save_images:
                save_png(image, settings, Path(self.settings.output_dir) / f"{kind}-images")
        if results and request.send_images:  # the ControlNet maps, as the extension appends them
            size = (results[0][1].width, results[0][1].height)
            images += [png_base64(m) for m in work.controls.detected_maps(size)]
        if isinstance(request, Img2ImgRequest) and request.include_init_images:
            images += request.init_images
        parameters = request.model_dump()
        if isinstance(request, Img2ImgRequest) and not request.include_init_images:
            parameters.update(init_images=None, mask=None)
        return {"images": images, "parameters": parameters,
                "info": json.dumps({**self._info(request, work, [s for _, s, _ in results], interrupted, job),
                                    **_attention_info(results)})}

    def _info(self, request, work: Plan, records: list[ImageSettings], interrupted: bool,
              job: Job) -> dict[str, Any]:
        config = work.config
        first = records[0].to_record() if records else {}
        seeds = [r.seed for r in records]
        sampler, schedule = (records[0].sampler, records[0].schedule) if records else config.sampling  # as it ran
        spec = SAMPLERS[sampler]
        return {
            "prompt": request.prompt, "all_prompts": [request.prompt] * len(records),
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [request.negative_prompt] * len(records),
            "seed": seeds[0] if seeds else request.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": seeds,
            "subseed_strength": 0, "width": first.get("width", request.width), "height": first.get("height",
                                                                                                   request.height),
            "sampler_name": spec.a1111, "scheduler": SCHEDULES[schedule].a1111,
            "cfg_scale": config.guidance_scale, "steps": config.steps, "batch_size": config.batch_size,
            "restore_faces": False,
            "face_restoration_model": None, "sd_model_name": first.get("model_name", work.checkpoint.model_name),
            "sd_model_hash": first.get("model_hash"), "sd_vae_name": Path(work.vae).name if work.vae else None,
            "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": first.get("strength"), "extra_generation_params": {}, "index_of_first_image": 0,
            "infotexts": [r.infotext() for r in records], "styles": [], "job_timestamp": job.timestamp,
            "clip_skip": config.clip_skip or 1, "is_using_inpainting_conditioning": False,
            "version": f"t2i {__version__}", "interrupted": interrupted,
        }

    # ---- options and listings ---------------------------------------------------------------

    async def set_options(self, options: dict[str, Any]) -> None:
        """POST options: switching the checkpoint loads it in the queue, so no running job sees it change.
        Options t2i does not know are kept and answered back, as A1111 does, so a client can post back
        the body it got from GET; they change nothing."""
        others = {k: v for k, v in options.items() if k not in OPTIONS}
        check(len({**self.other_options, **others}) <= MAX_OTHER_OPTIONS, "options", None,
              f"holds more than {MAX_OTHER_OPTIONS} options t2i does not know")
        options = {k: v for k, v in options.items() if k in OPTIONS}
        check_options(options, "options")
        checkpoint = self.catalog.checkpoint(options.get("sd_model_checkpoint", self.options["sd_model_checkpoint"]))
        vae_name = options.get("sd_vae", self.options["sd_vae"])
        vae = self.catalog.vae(vae_name)
        if "CLIP_stop_at_last_layers" in options and options["CLIP_stop_at_last_layers"] < 1:
            raise InvalidInput("must be 1 or more", field="CLIP_stop_at_last_layers",
                               value=options["CLIP_stop_at_last_layers"])
        await self.queue.run(Job("load model"), lambda job: self.catalog.load(checkpoint, vae))
        self.options.update(options, sd_model_checkpoint=checkpoint.title)
        self.other_options.update(others)

    def get_options(self) -> dict[str, Any]:
        checkpoint = self.catalog.checkpoint(self.options["sd_model_checkpoint"])
        return {**self.other_options, **self.options, "sd_checkpoint_hash": None, "samples_format": "png",
                "sd_model_checkpoint":
                checkpoint.title, "outdir_samples": self.settings.output_dir}

    def sd_models(self) -> list[dict[str, Any]]:
        return [{"title": c.title, "model_name": c.model_name, "hash": None, "sha256": None, "filename": c.filename,
                 "config": None} for c in self.catalog.checkpoints()]

    def samplers(self) -> list[dict[str, Any]]:
        """One entry a sampler (schedules are listed apart, as A1111 1.9+ does), with the schedules it
        runs (`schedulers`, by the names /schedulers gives), so a page offers only pairs that run."""
        return [{"name": spec.a1111, "aliases": sorted({name, spec.comfy or name}),
                 "options": {"scheduler": SCHEDULES[spec.automatic].comfy} if spec.automatic != "normal" else {},
                 "schedulers": ["automatic", *(_scheduler_name(s) for s in spec.schedules)]}
                for name, spec in SAMPLERS.items()]

    @staticmethod
    def schedulers() -> list[dict[str, Any]]:
        # A1111's scheduler names are ComfyUI's (sgm_uniform, align_your_steps); t2i reads either
        return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for name, label in (("automatic", "Automatic"), *((_scheduler_name(name), spec.a1111)
                                                                   for name, spec in SCHEDULES.items()))]

    def sd_vaes(self) -> list[dict[str, str]]:
        return [{"model_name": name, "filename": str(path)} for name, path in self.catalog.vaes().items()]

    def embeddings(self) -> dict[str, Any]:
        """A1111's shape: what can be used, with its vector count and width; what cannot, apart."""
        loaded: dict[str, Any] = {}
        skipped: dict[str, Any] = {}
        for name, path in self.catalog.embeddings().items():
            shape = embedding_shape(path)
            entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": shape and shape[1], "vectors": shape and shape[0]}
            (loaded if shape else skipped)[name] = entry  # pickles and unreadable files are skipped
        return {"loaded": loaded, "skipped": skipped}

    def loras(self) -> list[dict[str, Any]]:
        return [{"name": name, "alias": name, "path": str(path), "metadata": _lora_metadata(path)}
                for name, path in self.catalog.loras().items()]

    def token_count(self, prompt: str) -> dict[str, int]:
        """What A1111's page shows under a prompt: its tokens (LoRA tags and syntax taken out, weights
        and BREAK read) and the 75-token chunks they fill, counted with SD 1.x's CLIP tokenizer."""
        from t2i.sampling.prompts import parse_prompt, split_lora_tags
        from t2i.sampling.text import chunk_prompt

        if self._tokenizer is None:
            from transformers import CLIPTokenizer

            from t2i.models import SD1_CONFIG_DIR

            self._tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR / "tokenizer")
        chunks = chunk_prompt(self._tokenizer, parse_prompt(split_lora_tags(prompt)[0], "original", "prompt"))
        end = self._tokenizer.eos_token_id
        tokens = sum(1 for chunk in chunks for token in chunk.ids[1:-1] if token != end)
        return {"tokens": tokens, "chunks": len(chunks), "limit": 75 * len(chunks)}

    @staticmethod
    def png_info(image_b64: str) -> dict[str, Any]:
        image = img2img.decode_image(image_b64, "image")
        items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        items.pop("parameters", None)
        items.pop(JSON_CHUNK, None)
        text = parameters_text(image) or ""  # PNG's text chunk, or JPEG's and WebP's EXIF UserComment
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}


def _lora_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata (kohya's ss_* keys) of the file A1111 users have under this name."""
    from t2i.formats.hashes import safetensors_metadata
    from t2i.formats.lora import LoraRef

    try:
        return safetensors_metadata(LoraRef(str(path)).hash_file)
    except Exception:  # a damaged file is listed; loading it gives the real error
        return {}


def _attention_info(results) -> dict[str, Any]:
    """t2i's `t2i_attention_maps` in `info`, when asked: per image, each word with its map over the image."""
    if not results or results[0][2] is None:
        return {}
    return {"t2i_attention_maps": [[{"word": word.text, "weight": word.weight, "image": png_base64(tile)}
                                    for word, tile in zip(maps.words, maps.tiles(image))]
                                   for image, _, maps in results]}
