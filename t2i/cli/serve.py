"""`t2i serve`: A1111's HTTP API and a web page over a loaded model."""

from __future__ import annotations

from functools import partial
from typing import Optional

import typer

from t2i.cli import RuntimeOptions, app, default_of, given, log, prepare_environment
from t2i.errors import InvalidInput, require_extra
from t2i.models.config import DEFAULT_MODEL
from t2i.server.settings import ServerSettings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


_default = partial(default_of, ServerSettings)


@app.command()
def serve(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, help="The model loaded at start (as t2i generate's --model)."),
    models_dir: Optional[str] = typer.Option(None, help="More checkpoints to switch to: *.safetensors files and "
                                             "diffusers folders; VAEs in its VAE/ folder."),
    lora_dir: str = typer.Option(_default("lora_dir"), help="Where <lora:NAME:W> tags find NAME."),
    embeddings_dir: Optional[str] = typer.Option(None, help="Textual-inversion embeddings prompts may name."),
    controlnet_dir: Optional[str] = typer.Option(None, help="ControlNets requests may name (A1111's ControlNet "
                                                 "extension API; /controlnet/model_list lists them)."),
    image_encoder: Optional[str] = typer.Option(None, help="The image encoder of IP-Adapter units (a CLIP vision "
                                                "folder); default: the one each adapter names, else beside it."),
    live_preview: int = typer.Option(_default("live_preview"), help="Steps between live previews in "
                                     "/sdapi/v1/progress's current_image (0: none; a request's override_settings "
                                     "show_progress_every_n_steps changes it)."),
    output_dir: str = typer.Option(_default("output_dir"), help="Where requests with save_images=true write."),
    host: str = typer.Option(_default("host"), help="Address to bind; other than 127.0.0.1 exposes the server."),
    port: int = typer.Option(_default("port")),
    api_auth: Optional[str] = typer.Option(None, help="USER:PASS: require HTTP Basic auth."),
    max_queue: int = typer.Option(_default("max_queue"), help="Requests that may wait; more get 429."),
    max_pixels: int = typer.Option(_default("max_pixels"), help="Largest width x height of an image."),
    max_steps: int = typer.Option(_default("max_steps")),
    max_images: int = typer.Option(_default("max_images"), help="Largest batch_size x n_iter of a request."),
    max_body_mb: float = typer.Option(_default("max_body_mb"), help="Largest request body."),
    dtype: str = typer.Option(_default("dtype")),
    device: str = typer.Option(_default("device")),
    compile: bool = RuntimeOptions.compile,
    channels_last: bool = RuntimeOptions.channels_last,
    fuse_qkv: bool = RuntimeOptions.fuse_qkv,
    attention_slicing: bool = RuntimeOptions.attention_slicing,
    offload: Optional[str] = RuntimeOptions.offload,
    offline: bool = typer.Option(False, help="Never touch the network (same as HF_HUB_OFFLINE=1)."),
    allow_pickle: bool = typer.Option(False, help="Allow pickled checkpoints (they can run code)."),
):
    """Serve A1111's /sdapi/v1 API (SillyTavern, Open WebUI, webuiapi...) and a web page at /."""
    prepare_environment(offline)
    settings = ServerSettings(**given(ctx))
    require_extra("server", "fastapi", "uvicorn")
    if host not in LOCAL_HOSTS and api_auth is None:
        log.warning("binding %s without --api-auth: anyone who can reach this address can use the server", host)

    import uvicorn

    from t2i.server.app import create_app
    from t2i.server.service import Service

    listener = _bind(host, port)  # a port in use is said before any model loads, and "serving" is never logged
    service = Service(settings)
    checkpoint = service.catalog.checkpoint(service.options["sd_model_checkpoint"])
    # a model that cannot load fails here, not at the first request
    service.queue.run_now(lambda: service.catalog.load(checkpoint, None))
    log.info("serving %s on http://%s:%d (API at /sdapi/v1, page at /)", checkpoint.title, host, port)
    uvicorn.Server(uvicorn.Config(create_app(settings, service), log_level="warning")).run(sockets=[listener])


def _bind(host: str, port: int):
    """The listening socket, bound now (uvicorn serves on it)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        raise InvalidInput(f"cannot be listened on at {host} ({exc.strerror or exc})", field="port", value=port,
                           hint="another program may hold it: choose another {port}") from exc
    return listener
