"""A1111's ControlNet extension's routes: version, models, modules, control types, settings, detect."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request

from t2i.errors import InvalidInput, check
from t2i.sampling.control import CONTROL_MODES, MAX_UNITS
from t2i.sampling.control_modules import RESIZE_MODES
from t2i.server.controlnet_api import API_VERSION, ControlNetFolder, control_types, detect_maps, module_list


def add_routes(app, service) -> None:
    """The extension's routes on the server's FastAPI app."""
    folder: ControlNetFolder = service.controlnets

    @app.get("/controlnet/version")
    async def version():
        return {"version": API_VERSION}

    @app.get("/controlnet/model_list")
    async def model_list(update: bool = True):
        return {"model_list": folder.titles()}

    @app.get("/controlnet/module_list")
    async def modules(alias_names: bool = False):
        return module_list(alias_names)

    @app.get("/controlnet/control_types")
    async def types():
        return control_types(folder.titles())

    @app.get("/controlnet/settings")
    async def settings():
        return {"control_net_unit_count": MAX_UNITS, "control_net_max_models_num": MAX_UNITS,
                "control_modes": list(CONTROL_MODES), "resize_modes": list(RESIZE_MODES)}

    @app.post("/controlnet/detect")
    async def detect_route(request: Request):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise InvalidInput(f"the body is not valid JSON ({exc})", field="body") from exc
        check(isinstance(body, dict), "body", None, "must be a JSON object")
        return await asyncio.to_thread(detect_maps, body, service.settings.max_images)
