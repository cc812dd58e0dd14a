// The t2i page: talks to the server through A1111's /sdapi/v1 API (and A1111's /internal/progress for its
// own job), so what it can do any A1111 client can do too. No framework, no build step, nothing fetched
// from elsewhere. Results are kept in the browser (IndexedDB), so a reload loses nothing.
"use strict";

const API = "/sdapi/v1";
const $ = (id) => document.getElementById(id);
let lastSeed = null;
let initDataUrl = null;
let maskPainted = false;
let running = null;  // the job this page runs: {taskId}
let samplerSchedules = {};  // sampler name -> the schedule names it runs
let infoParameters = null;  // the settings read from a dropped image
const BRUSH_COLOUR = "rgb(255, 0, 200)";  // magenta: seen over white, black and photos alike

async function api(path, body, base = API) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(base + path, options);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((data && data.detail) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function fill(select, entries, selected) {
  select.replaceChildren(...entries.map(([value, label]) => new Option(label, value, false, value === selected)));
}

// ---- lists --------------------------------------------------------------------------------------

let allSchedules = [];

async function loadLists() {
  const [samplers, schedulers, models, options, latentModes, upscalers, loras, embeddings] = await Promise.all(
    [api("/samplers"), api("/schedulers"), api("/sd-models"), api("/options"), api("/latent-upscale-modes"),
     api("/upscalers"), api("/loras"), api("/embeddings")]);
  fill($("hires-upscaler"), [...latentModes, ...upscalers].map((u) => [u.name, u.name]), "Latent");
  fill($("sampler"), samplers.map((s) => [s.name, s.name]), "DPM++ 2M");
  samplerSchedules = Object.fromEntries(samplers.map((s) => [s.name, s.schedulers || null]));
  allSchedules = schedulers.map((s) => [s.name, s.label]);
  offerSchedules("automatic");
  fill($("model"), models.map((m) => [m.title, m.title]), options.sd_model_checkpoint);
  for (const lora of loras) $("lora-pick").append(new Option(lora.name, lora.name));
  for (const name of Object.keys(embeddings.loaded || {})) $("embedding-pick").append(new Option(name, name));
}

function offerSchedules(wanted) {
  // only the schedules the chosen sampler runs, so no pair the page offers is refused
  const runs = samplerSchedules[$("sampler").value];
  const offered = allSchedules.filter(([name]) => !runs || runs.includes(name));
  const keep = offered.some(([name]) => name === wanted) ? wanted : "automatic";
  fill($("scheduler"), offered, keep);
}

function insertAtCursor(textarea, text) {
  const start = textarea.selectionStart, end = textarea.selectionEnd;
  const before = textarea.value.slice(0, start), after = textarea.value.slice(end);
  const spaced = (before && !before.endsWith(" ") ? " " : "") + text + (after.startsWith(" ") ? "" : " ");
  textarea.value = before + spaced + after;
  textarea.selectionStart = textarea.selectionEnd = before.length + spaced.length;
  textarea.focus();
  textarea.dispatchEvent(new Event("input"));
}

// ---- the request --------------------------------------------------------------------------------

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function maskDataUrl() {
  // white where painted (any stroke pixel), black elsewhere, at the init image's size
  const strokes = $("mask-canvas");
  const mask = document.createElement("canvas");
  mask.width = strokes.width;
  mask.height = strokes.height;
  const painted = strokes.getContext("2d").getImageData(0, 0, strokes.width, strokes.height);
  const context = mask.getContext("2d");
  const out = context.createImageData(mask.width, mask.height);
  for (let i = 0; i < painted.data.length; i += 4) {
    const value = painted.data[i + 3] > 0 ? 255 : 0;
    out.data.set([value, value, value, 255], i);
  }
  context.putImageData(out, 0, 0);
  return mask.toDataURL("image/png");
}

function newTaskId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "task(" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("") + ")";
}

function editFields() {
  // one edit a line: +WORDS adds them, -WORDS takes them away (no sign: adds), each at the scale and threshold
  const lines = $("edit-words").value.split("\n").map((line) => line.trim()).filter((line) => line);
  if (lines.length === 0) throw new Error("Edit: write at least one line, e.g. +blue");
  return {
    edits: lines.map((line) => ({text: line.replace(/^[+-]/, "").trim(), remove: line.startsWith("-"),
                                 scale: number("edit-scale"), threshold: number("edit-threshold")})),
    edit_skip: number("edit-skip"),
  };
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
  const units = controlnetArgs(mode() === "img2img");  // controlnet.js: A1111's ControlNet extension's units
  if (units.length > 0) body.alwayson_scripts = {controlnet: {args: units}};
  if (mode() === "txt2img" && $("hires-on").checked) {
    Object.assign(body, {enable_hr: true, hr_scale: number("hires-scale"), hr_upscaler: $("hires-upscaler").value,
                         hr_second_pass_steps: number("hires-steps"), denoising_strength: number("hires-denoise")});
  }
  if (mode() === "img2img") {
    if (!initDataUrl) throw new Error("img2img: choose an init image first");
    body.init_images = [initDataUrl];
    body.denoising_strength = number("strength");
    body.resize_mode = Number($("resize-mode").value);
    if ($("edit-on").checked) {  // t2i's own route: LEDITS++ on the init image, the prompt the source prompt
      Object.assign(body, editFields());
      delete body.denoising_strength;
      delete body.resize_mode;
    } else if ($("outpaint-on").checked) {  // A1111's script: the canvas is the image grown, so no width or height
      const directions = [...document.querySelectorAll("input[name=outpaint-direction]:checked")].map((d) => d.value);
      if (directions.length === 0) throw new Error("Outpaint: tick at least one direction");
      delete body.width;
      delete body.height;
      Object.assign(body, {script_name: "Poor man's outpainting", script_args: [
        number("outpaint-pixels"), number("outpaint-blur"), Number($("outpaint-fill").value), directions]});
    } else if (maskPainted) {
      Object.assign(body, {mask: maskDataUrl(), mask_blur: number("mask-blur"),
                           inpainting_fill: Number($("inpainting-fill").value),
                           inpaint_full_res: $("inpaint-area").value === "masked",
                           inpaint_full_res_padding: number("inpaint-padding")});
    }
  }
  if ($("attention-maps").checked) body.t2i_attention_maps = true;  // t2i's own field: word maps in `info`
  if ($("live-preview").value) {  // A1111's options, for this request only: a preview every 5 steps
    body.override_settings = {show_progress_every_n_steps: 5, show_progress_type: $("live-preview").value};
  }
  return body;
}

// ---- running a job: its own progress, its own interrupt -----------------------------------------

async function pollProgress(job) {
  while (!job.done) {
    try {
      const progress = await api("/internal/progress", {id_task: job.taskId, id_live_preview: -1}, "");
      if (job.done) break;
      if (progress.active) {
        $("progress").value = progress.progress || 0;
        $("eta").textContent = progress.textinfo + (progress.eta ? `, ETA ${progress.eta.toFixed(1)} s` : "");
        if (progress.live_preview) {
          $("live-preview-image").src = progress.live_preview;
          $("live-preview-image").hidden = false;
        }
      } else if (progress.queued) {
        $("progress").value = 0;
        $("eta").textContent = `queued: ${progress.textinfo}`;
      }
    } catch (error) { /* the next poll tries again */ }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

async function generate() {
  if (running) return;  // one job at a time from this page: a second Ctrl+Enter or click does nothing
  $("error").textContent = "";
  $("status").textContent = "";
  let body;
  try {
    body = request();
  } catch (error) {
    $("error").textContent = error.message;
    return;
  }
  const job = {taskId: newTaskId(), done: false};
  body.force_task_id = job.taskId;
  running = job;
  $("generate").disabled = true;
  $("interrupt").disabled = false;
  $("eta").textContent = "starting";
  const polling = pollProgress(job);
  try {
    await showResults(body.edits ? await api("/t2i/v1/edit", body, "") : await api("/" + mode(), body));
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    job.done = true;
    await polling;
    running = null;
    $("progress").value = 0;
    $("eta").textContent = "";
    $("live-preview-image").hidden = true;
    $("generate").disabled = false;
    $("interrupt").disabled = true;
    refreshQueue();
  }
}

function interruptMine() {
  if (running) api("/interrupt", {id_task: running.taskId}).catch(() => {});
}

async function refreshQueue() {
  let jobs = [];
  try {
    jobs = await api("/internal/queue", undefined, "");
  } catch (error) { return; }
  $("queue").replaceChildren(...jobs.map((job) => {
    const item = document.createElement("li");
    const mine = running && job.id_task === running.taskId;
    item.textContent = `${job.name}, ${job.images} image(s): ${job.state}${mine ? " (yours)" : ""}`;
    if (mine) {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = job.state === "running" ? "Interrupt" : "Cancel";
      cancel.addEventListener("click", interruptMine);
      item.append(" ", cancel);
    }
    return item;
  }));
  if (jobs.length === 0) {
    $("queue").replaceChildren(Object.assign(document.createElement("li"), {textContent: "empty", className: "empty"}));
  }
}

// ---- the history: every result kept in IndexedDB --------------------------------------------------

const DB_NAME = "t2i-history";
let database = null;

function openHistory() {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(DB_NAME, 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore("images", {keyPath: "id", autoIncrement: true});
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
}

function historyStore(mode) {
  return database.transaction("images", mode).objectStore("images");
}

function storeRequest(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function committed(request) {
  // a write counts once its transaction has committed: a reload right after loses nothing
  return new Promise((resolve, reject) => {
    request.transaction.oncomplete = () => resolve(request.result);
    request.transaction.onerror = request.transaction.onabort = () => reject(request.transaction.error);
  });
}

async function showResults(result) {
  const info = JSON.parse(result.info);
  lastSeed = info.all_seeds.length ? info.all_seeds[0] : lastSeed;
  const entries = result.images.map((image, index) => ({
    src: "data:image/png;base64," + image, infotext: info.infotexts[index] || "", seed: info.all_seeds[index],
    time: Date.now(), maps: (info.t2i_attention_maps || [])[index] || null,
  }));
  for (const entry of entries) {
    if (database) entry.id = await committed(historyStore("readwrite").add(entry));
  }
  $("gallery").prepend(...entries.reverse().map(figure));
  countHistory();
  if (info.interrupted) $("status").textContent = `Interrupted: ${result.images.length} image(s) finished.`;
}

function figure(entry) {
  const item = document.createElement("figure");
  const img = new Image();
  img.src = entry.src;
  img.alt = `seed ${entry.seed}`;
  img.tabIndex = 0;
  img.addEventListener("click", () => openLightbox(entry));
  img.addEventListener("keydown", (event) => { if (event.key === "Enter") openLightbox(entry); });
  const caption = document.createElement("figcaption");
  caption.textContent = entry.infotext;
  const actions = document.createElement("div");
  actions.className = "actions";
  const download = Object.assign(document.createElement("a"), {href: entry.src, textContent: "Download",
                                                                download: `t2i-${entry.id ?? "image"}-${entry.seed}.png`});
  actions.append(download, button("To img2img", () => sendToImg2img(entry.src)),
                 button("Use settings", () => useSettings(entry.src)));
  item.append(img, actions);
  if (entry.maps) item.append(wordButtons(entry, img));
  item.append(caption);
  return item;
}

function wordButtons(entry, img) {
  // each word shows its cross-attention map over the image; "image" shows the image again
  const words = document.createElement("div");
  words.className = "words";
  const show = (source, pressed) => {
    img.src = source;
    words.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b === pressed)));
  };
  const plain = button("image", () => show(entry.src, plain));
  words.append(plain, ...entry.maps.map((map) => {
    const label = map.weight === 1 ? map.word : `${map.word} (${map.weight})`;
    const made = button(label, () => show("data:image/png;base64," + map.image, made));
    return made;
  }));
  return words;
}

function button(text, action) {
  const made = Object.assign(document.createElement("button"), {type: "button", textContent: text});
  made.addEventListener("click", action);
  return made;
}

async function loadHistory() {
  try {
    database = await openHistory();
    const entries = await storeRequest(historyStore("readonly").getAll());
    $("gallery").replaceChildren(...entries.reverse().map(figure));
  } catch (error) {
    $("status").textContent = `History is off in this browser (${error.message}).`;
  }
  countHistory();
}

function countHistory() {
  const count = $("gallery").children.length;
  $("history-count").textContent = count ? `${count} image(s), kept in this browser` : "No images yet.";
}

function openLightbox(entry) {
  $("lightbox-image").src = entry.src;
  $("lightbox-text").textContent = entry.infotext;
  $("lightbox").showModal();
}

function sendToImg2img(src) {
  document.querySelector("input[name=mode][value=img2img]").checked = true;
  showMode();
  setInitImage(src);
  $("img2img").scrollIntoView();
}

// ---- settings from an infotext -------------------------------------------------------------------

async function useSettings(src) {
  // the server reads the PNG's own infotext, as it does for a dropped image
  try {
    applyParameters((await api("/png-info", {image: src})).parameters);
  } catch (error) {
    $("error").textContent = error.message;
  }
}

function applyParameters(parameters) {
  if (!parameters || !Object.keys(parameters).length) throw new Error("no generation settings to use");
  const set = (id, key) => { if (parameters[key] !== undefined) $(id).value = parameters[key]; };
  set("prompt", "Prompt");
  set("negative", "Negative prompt");
  set("steps", "Steps");
  set("cfg", "CFG scale");
  set("seed", "Seed");
  if (parameters.Sampler && samplerSchedules[parameters.Sampler] !== undefined) {
    $("sampler").value = parameters.Sampler;
    offerSchedules("automatic");
    const label = parameters["Schedule type"];
    const found = [...$("scheduler").options].find((option) => option.textContent === label);
    if (found) $("scheduler").value = found.value;
  }
  const size = /^(\d+)x(\d+)$/.exec(parameters.Size || "");
  if (size) {
    $("width").value = size[1];
    $("height").value = size[2];
  }
  for (const id of ["prompt", "negative"]) $(id).dispatchEvent(new Event("input"));
  $("status").textContent = "Settings filled in from the image.";
}

async function showPngInfo(file) {
  try {
    const result = await api("/png-info", {image: await readFile(file)});
    $("png-info").textContent = result.info || "No generation settings in this image.";
    infoParameters = result.info ? result.parameters : null;
    $("use-info").hidden = !infoParameters;
  } catch (error) {
    $("png-info").textContent = error.message;
    $("use-info").hidden = true;
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

// ---- painting the mask ---------------------------------------------------------------------------

function setInitImage(dataUrl) {
  initDataUrl = dataUrl;
  const preview = $("init-preview");
  const canvas = $("mask-canvas");
  preview.onload = () => {
    canvas.width = preview.naturalWidth;  // also clears the strokes of the image before
    canvas.height = preview.naturalHeight;
    maskPainted = false;
    // a brush a sixteenth of the short side: visible on any image, in its own pixels
    $("brush").max = Math.max(8, Math.round(Math.min(canvas.width, canvas.height) / 2));
    $("brush").value = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 16));
    showBrushSize();
    $("mask-state").textContent = "No mask: img2img. Paint on the image to inpaint.";
  };
  preview.src = dataUrl;
}

function showBrushSize() {
  $("brush-size").textContent = `${$("brush").value} px`;
}

function setUpPainting() {
  const canvas = $("mask-canvas");
  let last = null;  // the previous point of the stroke: strokes are lines, not dots
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  const paint = (event) => {
    if (!last || !initDataUrl) return;
    const [x, y] = point(event);
    const context = canvas.getContext("2d");
    context.strokeStyle = context.fillStyle = BRUSH_COLOUR;
    context.lineWidth = Number($("brush").value);
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(last[0], last[1]);
    context.lineTo(x, y);
    context.stroke();
    context.beginPath();
    context.arc(x, y, Math.max(Number($("brush").value) / 2, 0.5), 0, 2 * Math.PI);
    context.fill();
    last = [x, y];
    maskPainted = true;
    $("mask-state").textContent = "Mask painted: inpainting (the painted area is repainted).";
  };
  canvas.addEventListener("pointerdown", (event) => {
    try {
      canvas.setPointerCapture(event.pointerId);  // a drag that leaves the canvas keeps painting when it returns
    } catch (_) { /* a pointer the browser does not track (a synthetic event) paints all the same */ }
    last = point(event);
    paint(event);
  });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { last = null; });
  canvas.addEventListener("pointercancel", () => { last = null; });
  $("brush").addEventListener("input", showBrushSize);
  $("clear-mask").addEventListener("click", () => {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    maskPainted = false;
    $("mask-state").textContent = "No mask: img2img. Paint on the image to inpaint.";
  });
  $("init-file").addEventListener("change", async () => {
    const file = $("init-file").files[0];
    if (file) setInitImage(await readFile(file));
  });
}

// ---- token counts --------------------------------------------------------------------------------

function countTokens(textarea, label) {
  let timer = null;
  textarea.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        const count = await api("/internal/token-count", {prompt: textarea.value}, "");
        label.textContent = `${count.tokens}/${count.limit}`;
        label.classList.toggle("over", count.chunks > 1);
      } catch (error) {
        label.textContent = "";
      }
    }, 250);
  });
}

// ---- wiring --------------------------------------------------------------------------------------

function showMode() {
  $("img2img").hidden = mode() !== "img2img";
  $("hires").hidden = mode() !== "txt2img";  // A1111's hires fix is a txt2img setting
}

function setUp() {
  $("generate").addEventListener("click", generate);
  $("interrupt").addEventListener("click", interruptMine);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("lightbox").open) {
      event.preventDefault();  // anywhere on the page, as in A1111
      generate();
    } else if (event.key === "Escape" && running && !$("lightbox").open) {
      interruptMine();
    }
  });
  for (const [box, section] of [["hires-on", "hires"], ["outpaint-on", "outpaint"], ["edit-on", "edit"]]) {
    $(box).addEventListener("change", () => { if ($(box).checked) $(section).open = true; });  // its settings show
  }
  $("random-seed").addEventListener("click", () => { $("seed").value = -1; });
  $("reuse-seed").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
  $("sampler").addEventListener("change", () => offerSchedules($("scheduler").value));
  $("lora-pick").addEventListener("change", () => {
    if ($("lora-pick").value) insertAtCursor($("prompt"), `<lora:${$("lora-pick").value}:1>`);
    $("lora-pick").value = "";
  });
  $("embedding-pick").addEventListener("change", () => {
    if ($("embedding-pick").value) insertAtCursor($("prompt"), $("embedding-pick").value);
    $("embedding-pick").value = "";
  });
  countTokens($("prompt"), $("prompt-tokens"));
  countTokens($("negative"), $("negative-tokens"));
  $("model").addEventListener("change", async () => {
    $("status").textContent = "Loading checkpoint...";
    $("error").textContent = "";
    try {
      await api("/options", {sd_model_checkpoint: $("model").value});
      $("status").textContent = "";
    } catch (error) {
      $("status").textContent = "";
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
  $("choose-info").addEventListener("click", () => $("info-file").click());
  $("info-file").addEventListener("change", () => { if ($("info-file").files[0]) showPngInfo($("info-file").files[0]); });
  $("use-info").addEventListener("click", () => {
    try {
      applyParameters(infoParameters);
    } catch (error) {
      $("error").textContent = error.message;
    }
  });
  $("clear-history").addEventListener("click", async () => {
    if (database) await committed(historyStore("readwrite").clear());
    $("gallery").replaceChildren();
    countHistory();
  });
  $("lightbox-close").addEventListener("click", () => $("lightbox").close());
  setUpPainting();
  loadHistory();
  refreshQueue();
  setInterval(refreshQueue, 2000);
  loadLists().catch((error) => { $("error").textContent = `Could not reach the API: ${error.message}`; });
  setUpControlNet();
}

setUp();
