// Class activation maps and embeddings on the page: clicking a prediction draws its map over the
// thumbnail; the "embed" button fetches the image's feature vector, shows its size and copies it.
// Loaded before app.js, which calls `explainable`, `attachMap` and `addEmbedButton`.
"use strict";

// Blue (low) -> cyan -> yellow -> red (high), as the PNG of /explain draws it.
const HEAT_STOPS = [
  [0.0, [0, 0, 160]],
  [0.35, [0, 200, 255]],
  [0.65, [255, 230, 0]],
  [1.0, [220, 0, 0]],
];

function heatColour(value) {
  for (let i = 1; i < HEAT_STOPS.length; i += 1) {
    const [right, high] = HEAT_STOPS[i];
    const [left, low] = HEAT_STOPS[i - 1];
    if (value <= right) {
      const t = (value - left) / (right - left);
      return low.map((c, j) => Math.round(c + t * (high[j] - c)));
    }
  }
  return HEAT_STOPS[HEAT_STOPS.length - 1][1];
}

// Whether `/classify` may be asked for maps with this model: only models that list a `cam` output.
function explainable(entry) {
  return Boolean(entry && Array.isArray(entry.outputs) && entry.outputs.some((o) => o.name === "cam"));
}

// The map over the thumbnail. The thumbnail shows the photo's centre square (object-fit: cover); the
// model saw the centre crop_size/resize_size of it, so the map covers that part of the square.
function drawMap(card, grid, entry) {
  const thumb = card.querySelector(".thumb");
  let canvas = card.querySelector(".heat");
  if (!canvas) {
    canvas = document.createElement("canvas");
    canvas.className = "heat";
    thumb.parentElement.append(canvas);
  }
  const side = thumb.clientWidth || 128;
  canvas.width = side;
  canvas.height = side;
  const rows = grid.length;
  const cols = rows ? grid[0].length : 0;
  const flat = grid.flat();
  const low = Math.min(...flat);
  const high = Math.max(...flat);
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const cellContext = cells.getContext("2d");
  const image = cellContext.createImageData(cols, rows);
  flat.forEach((value, i) => {
    const scaled = high > low ? (value - low) / (high - low) : 0;
    const [r, g, b] = heatColour(scaled);
    image.data.set([r, g, b, Math.round(255 * (0.25 + 0.45 * scaled))], i * 4);
  });
  cellContext.putImageData(image, 0, 0);
  const share = entry && entry.resolution && entry.resize_size ? entry.resolution / entry.resize_size : 0.875;
  const crop = side * share;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, side, side);
  context.imageSmoothingEnabled = true;
  context.drawImage(cells, (side - crop) / 2, (side - crop) / 2, crop, crop);
  context.strokeStyle = "rgba(255, 255, 255, 0.9)";
  context.lineWidth = 2;
  context.strokeRect((side - crop) / 2, (side - crop) / 2, crop, crop);
  card.dataset.map = "shown";
}

// Make a prediction's bar clickable when the answer carries its map.
function attachMap(card, item, prediction, entry) {
  if (!Array.isArray(prediction.cam)) return;
  item.classList.add("mappable");
  item.tabIndex = 0;
  item.title = `show where the model saw "${prediction.label}"`;
  const show = () => {
    for (const other of card.querySelectorAll(".bar.mapped")) other.classList.remove("mapped");
    item.classList.add("mapped");
    drawMap(card, prediction.cam, entry);
  };
  item.addEventListener("click", show);
  item.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") show();
  });
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (error) {
    // No clipboard API on plain http (not a secure context): the old way.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

// An "embed" button on a finished card: POST the same file to /embed (the model that answered it).
function addEmbedButton(card, file, model, headers, describeFailure) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "embed";
  button.textContent = "embed";
  const out = document.createElement("span");
  out.className = "embedding";
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.textContent = "…";
    try {
      const params = new URLSearchParams({ variant: model });
      const response = await fetch(`embed?${params}`, {
        method: "POST",
        body: file,
        headers: { ...headers(), "Content-Type": "application/octet-stream" },
      });
      if (!response.ok) {
        out.textContent = await describeFailure(response);
        return;
      }
      const body = await response.json();
      const vector = body.results[0].vector;
      card.dataset.embedding = JSON.stringify(vector);
      const copied = await copyText(card.dataset.embedding);
      out.textContent = `${body.dimension}-d vector from ${body.model}${copied ? ", copied" : ""}`;
    } catch (error) {
      out.textContent = `could not send the request: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  card.querySelector(".body").append(button, " ", out);
}
