// The t2i page: talks to the server only through A1111's /sdapi/v1 API, so what it can do any
// A1111 client can do too. No framework, no build step, nothing fetched from elsewhere.
"use strict";

const API = "/sdapi/v1";
const $ = (id) => document.getElementById(id);
let lastSeed = null;
let initDataUrl = null;
let maskPainted = false;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(API + path, options);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((data && data.detail) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function fill(select, entries, selected) {
  select.replaceChildren(...entries.map(([value, label]) => new Option(label, value, false, value === selected)));
}

async function loadLists() {
  const [samplers, schedulers, models, options, latentModes, upscalers] = await Promise.all(
    [api("/samplers"), api("/schedulers"), api("/sd-models"), api("/options"), api("/latent-upscale-modes"),
     api("/upscalers")]);
  fill($("hires-upscaler"), [...latentModes, ...upscalers].map((u) => [u.name, u.name]), "Latent");
  fill($("sampler"), samplers.map((s) => [s.name, s.name]), "DPM++ 2M");
  fill($("scheduler"), schedulers.map((s) => [s.name, s.label]), "automatic");
  fill($("model"), models.map((m) => [m.title, m.title]), options.sd_model_checkpoint);
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function maskDataUrl() {
  const strokes = $("mask-canvas");
  const mask = document.createElement("canvas");
  mask.width = strokes.width;
  mask.height = strokes.height;
  const context = mask.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  context.drawImage(strokes, 0, 0);
  return mask.toDataURL("image/png");
}

function request() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative").value, sampler_name: $("sampler").value,
    scheduler: $("scheduler").value, steps: number("steps"), cfg_scale: number("cfg"), seed: number("seed"),
    n_iter: number("batch-count"), batch_size: number("batch-size"),
  };
  for (const side of ["width", "height"]) {
    if (number(side) !== null) body[side] = number(side);
  }
  if (mode() === "txt2img" && $("hires-on").checked) {
    Object.assign(body, {enable_hr: true, hr_scale: number("hires-scale"), hr_upscaler: $("hires-upscaler").value,
                         hr_second_pass_steps: number("hires-steps"), denoising_strength: number("hires-denoise")});
  }
  if (mode() === "img2img") {
    if (!initDataUrl) throw new Error("img2img: choose an init image first");
    body.init_images = [initDataUrl];
    body.denoising_strength = number("strength");
    if ($("outpaint-on").checked) {  // A1111's script: the canvas is the image grown, so no width or height
      const directions = [...document.querySelectorAll("input[name=outpaint-direction]:checked")].map((d) => d.value);
      if (directions.length === 0) throw new Error("Outpaint: tick at least one direction");
      delete body.width;
      delete body.height;
      Object.assign(body, {script_name: "Poor man's outpainting", script_args: [
        number("outpaint-pixels"), number("outpaint-blur"), Number($("outpaint-fill").value), directions]});
    } else if (maskPainted) {
      Object.assign(body, {mask: maskDataUrl(), mask_blur: 0, inpainting_fill: 1, inpaint_full_res: false});
    }
  }
  return body;
}

function showResults(result) {
  const info = JSON.parse(result.info);
  lastSeed = info.all_seeds.length ? info.all_seeds[0] : lastSeed;
  const figures = result.images.map((image, index) => {
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = "data:image/png;base64," + image;
    img.alt = `seed ${info.all_seeds[index]}`;
    const caption = document.createElement("figcaption");
    caption.textContent = info.infotexts[index] || "";
    figure.append(img, caption);
    return figure;
  });
  $("gallery").prepend(...figures);
  if (info.interrupted) $("error").textContent = `Interrupted: ${result.images.length} image(s) finished.`;
}

async function pollProgress(stop) {
  while (!stop.done) {
    try {
      const progress = await api("/progress?skip_current_image=true");
      $("progress").value = progress.progress;
      const state = progress.state;
      $("eta").textContent = state.job_count
        ? `step ${state.sampling_step}/${state.sampling_steps}, batch ${state.job_no + 1}/${state.job_count}` +
          (progress.eta_relative ? `, ETA ${progress.eta_relative.toFixed(1)} s` : "")
        : "";
    } catch (error) { /* the next poll tries again */ }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

async function generate() {
  $("error").textContent = "";
  let body;
  try {
    body = request();
  } catch (error) {
    $("error").textContent = error.message;
    return;
  }
  $("generate").disabled = true;
  $("interrupt").disabled = false;
  const stop = {done: false};
  const polling = pollProgress(stop);
  try {
    showResults(await api("/" + mode(), body));
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    stop.done = true;
    await polling;
    $("progress").value = 0;
    $("eta").textContent = "";
    $("generate").disabled = false;
    $("interrupt").disabled = true;
  }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function showPngInfo(file) {
  try {
    const result = await api("/png-info", {image: await readFile(file)});
    $("png-info").textContent = result.info || "No generation settings in this image.";
  } catch (error) {
    $("png-info").textContent = error.message;
  }
}

function setUpPainting() {
  const canvas = $("mask-canvas");
  let drawing = false;
  const paint = (event) => {
    if (!drawing) return;
    const box = canvas.getBoundingClientRect();
    const x = (event.clientX - box.left) * canvas.width / box.width;
    const y = (event.clientY - box.top) * canvas.height / box.height;
    const context = canvas.getContext("2d");
    const radius = Number($("brush").value) * canvas.width / box.width / 2;
    context.fillStyle = "#fff";
    context.beginPath();
    context.arc(x, y, Math.max(radius, 0.5), 0, 2 * Math.PI);
    context.fill();
    maskPainted = true;
    $("mask-state").textContent = "Mask painted: inpainting (white is repainted).";
  };
  canvas.addEventListener("pointerdown", (event) => { drawing = true; paint(event); });
  canvas.addEventListener("pointermove", paint);
  window.addEventListener("pointerup", () => { drawing = false; });
  $("clear-mask").addEventListener("click", () => {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    maskPainted = false;
    $("mask-state").textContent = "No mask: img2img. Paint on the image to inpaint.";
  });
  $("init-file").addEventListener("change", async () => {
    const file = $("init-file").files[0];
    if (!file) return;
    initDataUrl = await readFile(file);
    const preview = $("init-preview");
    preview.onload = () => {
      canvas.width = preview.naturalWidth;
      canvas.height = preview.naturalHeight;
      maskPainted = false;
    };
    preview.src = initDataUrl;
  });
}

function setUp() {
  $("generate").addEventListener("click", generate);
  $("interrupt").addEventListener("click", () => api("/interrupt", {}).catch(() => {}));
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });
  for (const [box, section] of [["hires-on", "hires"], ["outpaint-on", "outpaint"]]) {
    $(box).addEventListener("change", () => { if ($(box).checked) $(section).open = true; });  // its settings show
  }
  $("random-seed").addEventListener("click", () => { $("seed").value = -1; });
  $("reuse-seed").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      $("img2img").hidden = mode() !== "img2img";
      $("hires").hidden = mode() !== "txt2img";  // A1111's hires fix is a txt2img setting
    });
  }
  $("model").addEventListener("change", async () => {
    $("error").textContent = "Loading checkpoint...";
    try {
      await api("/options", {sd_model_checkpoint: $("model").value});
      $("error").textContent = "";
    } catch (error) {
      $("error").textContent = error.message;
      // the server stays on its model: show that one, or the next image would seem to use the failed one
      try {
        $("model").value = (await api("/options")).sd_model_checkpoint;
      } catch (_) { /* the error above is already shown */ }
    }
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) showPngInfo(event.dataTransfer.files[0]);
  });
  $("info-file").addEventListener("change", () => { if ($("info-file").files[0]) showPngInfo($("info-file").files[0]); });
  setUpPainting();
  loadLists().catch((error) => { $("error").textContent = `Could not reach the API: ${error.message}`; });
}

setUp();
