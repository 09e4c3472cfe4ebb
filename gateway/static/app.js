// recipelens page: upload a photo, show the recipes as cards.
// Every string from the server goes into the page through textContent or a URL attribute — never innerHTML.
"use strict";

const form = document.getElementById("search-form");
const input = document.getElementById("photo");
const dropZone = document.getElementById("drop-zone");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const preview = document.getElementById("preview");
const template = document.getElementById("card-template");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function safeImageUrl(path) {
  // Only same-origin paths and http(s) URLs; anything else (javascript:, data:) is dropped.
  if (typeof path !== "string" || path === "") return "";
  try {
    const url = new URL(path, window.location.origin);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : "";
  } catch (e) {
    return "";
  }
}

function renderCard(recipe) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".card-title").textContent = String(recipe.title ?? "");
  card.querySelector(".card-rank").textContent = "#" + String(recipe.rank ?? "");
  card.querySelector(".card-score").textContent = Number(recipe.similarity ?? 0).toFixed(3);
  if (typeof recipe.confidence === "number") {
    card.querySelector(".card-confidence").textContent = " · confidence " + recipe.confidence.toFixed(2);
  }
  const list = card.querySelector(".card-ingredients");
  for (const ingredient of recipe.ingredients ?? []) {
    const item = document.createElement("li");
    item.textContent = String(ingredient);
    list.appendChild(item);
  }
  card.querySelector(".card-instructions").textContent = String(recipe.instructions ?? "");
  const img = card.querySelector(".card-image");
  // One card per recipe: its photo that matched best is the one shown (and named).
  const matched = String(recipe.matchedImage || recipe.imagePath || "");
  card.querySelector(".card-matched-name").textContent = matched ? decodeURIComponent(matched.split("/").pop()) : "-";
  const src = safeImageUrl(matched);
  if (src) {
    img.src = src;
    img.alt = String(recipe.title ?? "");
  } else {
    img.remove();
  }
  return card;
}

let lastFile = null;

async function search(file) {
  if (!file) return;
  lastFile = file;
  results.replaceChildren();
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  setStatus("Searching…", false);
  const body = new FormData();
  body.append("image", file);
  body.append("top_k", document.getElementById("top-k").value || "6");
  // Comma-separated terms are split by the server; empty fields are not sent.
  const category = document.getElementById("category").value.trim();
  if (category) body.append("categories", category);
  const without = document.getElementById("without").value.trim();
  if (without) body.append("must_exclude_ingredients", without);
  const headers = {};
  const key = document.getElementById("api-key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  let data;
  try {
    const response = await fetch("/api/v1/search", { method: "POST", body, headers });
    data = await response.json();
  } catch (e) {
    setStatus("The search service did not answer: " + String(e), true);
    return;
  }
  if (!data.success) {
    setStatus(String(data.errorMessage ?? "search failed"), true);
    return;
  }
  const noMatch = data.match === "none";
  results.classList.toggle("no-match", noMatch);  // the nearest recipes, greyed
  for (const recipe of data.recipes) results.appendChild(renderCard(recipe));
  let summary = data.totalResults + " recipes in " + Number(data.processingTime).toFixed(2) + " s";
  if (noMatch) summary = "No close match — nothing in the catalogue looks like this photo; the nearest recipes: " + summary;
  else if (data.match === "strong") summary = "Strong match (the same dish) — " + summary;
  else if (data.match === "weak") summary = "Similar food — " + summary;
  const warnings = Array.isArray(data.warnings) ? data.warnings : [];
  if (warnings.length) summary += " — " + warnings.map(String).join("; ");
  setStatus(summary, false);
}

input.addEventListener("change", () => search(input.files[0]));
for (const id of ["category", "without", "top-k"]) {
  document.getElementById(id).addEventListener("change", () => search(lastFile));
}
form.addEventListener("submit", (event) => event.preventDefault());
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) search(file);
});
