"""How a server runs: what it serves, where it looks, and the limits every request is checked against."""

from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import check
from t2i.models.config import DEFAULT_MODEL, RUNTIME_FIELDS, ModelConfig


@dataclass(frozen=True)
class ServerSettings:
    model: str = DEFAULT_MODEL  # what is loaded at start (any --model t2i generate takes)
    models_dir: str | None = None  # more checkpoints: *.safetensors files and diffusers folders; VAEs in VAE/
    lora_dir: str = "loras"  # what <lora:NAME:W> tags and GET loras see
    embeddings_dir: str | None = None  # textual-inversion embeddings prompts may name (GET embeddings lists them)
    controlnet_dir: str | None = None  # ControlNets units may name (GET /controlnet/model_list lists them)
    image_encoder: str | None = None  # IP-Adapter units' image encoder (None: each adapter's own, or beside it)
    live_preview: int = 0  # steps between live previews in /progress (A1111's show_progress_every_n_steps); 0 off
    output_dir: str = "outputs"  # where save_images=true writes (NNNNN-SEED.png, as t2i generate)
    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: str | None = None  # USER:PASS for HTTP Basic auth
    max_queue: int = 8  # requests waiting behind the running one; more get 429
    max_pixels: int = 2048 * 2048  # width x height of one image
    max_steps: int = 150  # A1111's own UI stops at 150
    max_images: int = 16  # batch_size x n_iter of one request
    max_body_mb: float = 32  # a request's body: base64 images make it large
    dtype: str = "auto"
    device: str = "auto"
    offline: bool = False
    allow_pickle: bool = False
    compile: bool = False  # the runtime options of every model the server loads (ModelConfig's)
    channels_last: bool = False
    fuse_qkv: bool = False
    attention_slicing: bool = False
    offload: str | None = None

    def __post_init__(self):
        check(self.api_auth is None or (":" in self.api_auth and self.api_auth.index(":") > 0), "api_auth",
              "(hidden)", "must be USER:PASS")
        check(0 <= self.port <= 65535, "port", self.port, "must be in 0..65535")
        for name in ("max_queue", "max_pixels", "max_steps", "max_images"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        check(self.max_body_mb > 0, "max_body_mb", self.max_body_mb, "must be more than 0")
        self.model_config(DEFAULT_MODEL)  # checks the model settings now, not at the first request

    def model_config(self, model: str, vae: str | None = None) -> ModelConfig:
        runtime = {name: getattr(self, name) for name in RUNTIME_FIELDS}
        return ModelConfig(model=model, vae=vae, dtype=self.dtype, device=self.device, offline=self.offline,
                           allow_pickle=self.allow_pickle, **runtime)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
