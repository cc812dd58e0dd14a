// ControlNet units on the page, sent as A1111's ControlNet extension takes them (alwayson_scripts.controlnet),
// with the extension's own routes for the lists and the map preview (/controlnet/*), and the image prompt: one
// IP-Adapter unit, which the extension takes among the ControlNet ones (an ip-adapter module). Uses app.js's $,
// api, fill and readFile; app.js calls setUpControlNet() and, for each request, controlnetArgs().
"use strict";

const controlNetLists = {modules: [], models: [], adapters: []};

async function setUpControlNet() {
  $("add-unit").addEventListener("click", () => addUnit());
  try {
    const [modules, models] = await Promise.all([api("/module_list", undefined, "/controlnet"),
                                                 api("/model_list", undefined, "/controlnet")]);
    const adapter = (name) => /ip[-_]?adapter/i.test(name);
    controlNetLists.modules = modules.module_list.filter((m) => !adapter(m));
    controlNetLists.models = models.model_list.filter((m) => !adapter(m));
    controlNetLists.adapters = models.model_list.filter(adapter);
  } catch (error) {
    $("controlnet-note").textContent = `ControlNet lists unavailable: ${error.message}`;
    return;
  }
  setUpImagePrompt();
  if (controlNetLists.models.length === 0) {
    $("add-unit").disabled = true;
    $("controlnet-note").textContent = "No ControlNets on this server (start it with --controlnet-dir).";
  }
}

function units() {
  return [...document.querySelectorAll("#controlnet-units .unit")];
}

function renumber() {
  units().forEach((unit, index) => { unit.querySelector(".unit-number").textContent = String(index); });
  $("controlnet-count").textContent = units().length ? `(${units().length})` : "";
}

function addUnit() {
  const unit = $("unit-template").content.firstElementChild.cloneNode(true);
  const pick = (name) => unit.querySelector(name);
  fill(pick(".unit-module"), controlNetLists.modules.map((m) => [m, m]), "none");
  fill(pick(".unit-model"), controlNetLists.models.map((m) => [m, m]), controlNetLists.models[0]);
  pick(".unit-file").addEventListener("change", async () => {
    const file = pick(".unit-file").files[0];
    if (!file) return;
    unit.dataset.image = await readFile(file);
    pick(".unit-image").src = unit.dataset.image;
    pick(".unit-image").hidden = false;
    previewMap(unit);
  });
  pick(".unit-module").addEventListener("change", () => previewMap(unit));
  pick(".unit-preview").addEventListener("click", () => previewMap(unit));
  pick(".unit-remove").addEventListener("click", () => { unit.remove(); renumber(); });
  $("controlnet-units").append(unit);
  $("controlnet").open = true;
  renumber();
  return unit;
}

async function previewMap(unit) {
  // the map the unit's preprocessor makes, as the server makes it (POST /controlnet/detect)
  const map = unit.querySelector(".unit-map");
  if (!unit.dataset.image) return;
  try {
    const found = await api("/detect", {controlnet_module: unit.querySelector(".unit-module").value,
                                        controlnet_input_images: [unit.dataset.image]}, "/controlnet");
    map.src = "data:image/png;base64," + found.images[0];
    map.hidden = false;
  } catch (error) {
    $("error").textContent = error.message;
  }
}

function setUpImagePrompt() {
  fill($("ip-model"), controlNetLists.adapters.map((m) => [m, m]), controlNetLists.adapters[0]);
  if (controlNetLists.adapters.length === 0) {
    $("ip-file").disabled = true;
    $("ip-note").textContent = "No IP-Adapters on this server (put one in its --controlnet-dir).";
  }
  $("ip-file").addEventListener("change", async () => {
    const file = $("ip-file").files[0];
    if (!file) return;
    $("ip-image").src = await readFile(file);
    $("ip-image").hidden = false;
    $("image-prompt-count").textContent = "(on)";
  });
  $("ip-clear").addEventListener("click", () => {
    $("ip-file").value = "";
    $("ip-image").hidden = true;
    $("ip-image").removeAttribute("src");
    $("image-prompt-count").textContent = "";
  });
}

function imagePromptArgs() {
  // the picture as an IP-Adapter unit; the adapter says which image encoder reads it (ip-adapter-auto)
  if ($("ip-image").hidden) return [];
  return [{enabled: true, image: $("ip-image").src, module: "ip-adapter-auto", model: $("ip-model").value,
           weight: Number($("ip-weight").value), guidance_start: Number($("ip-start").value),
           guidance_end: Number($("ip-end").value)}];
}

function controlnetArgs(img2img) {
  // an img2img unit without an image reads the init image (as the extension does); txt2img needs one
  return units().map((unit, index) => {
    const value = (name) => unit.querySelector(name).value;
    if (!unit.dataset.image && !img2img) throw new Error(`ControlNet unit ${index}: choose its image`);
    return {enabled: true, image: unit.dataset.image || null, module: value(".unit-module"),
            model: value(".unit-model"), weight: Number(value(".unit-weight")),
            guidance_start: Number(value(".unit-start")), guidance_end: Number(value(".unit-end")),
            control_mode: value(".unit-mode"), resize_mode: value(".unit-resize"), save_detected_map: false};
  }).concat(imagePromptArgs());
}
