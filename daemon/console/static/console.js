// lockgate console: refreshes the live tables from the page's JSON endpoint and draws
// the sparklines. Served as a file: the Content-Security-Policy allows no inline script.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;

function sparkline(td, values) {
  td.textContent = "";
  if (values.length < 2) return;
  const width = 120, height = 24, max = Math.max(...values, 1);
  const step = width / (values.length - 1);
  const points = values.map((v, i) =>
    `${(i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  td.appendChild(svg);
}

// A button that POSTs its fields with the page's CSRF token (every page has one, in
// the log-out form).
function postButton(value) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = value.post;
  form.className = "inline";
  const token = document.querySelector('input[name="csrf"]');
  const fields = { csrf: token ? token.value : "", ...value.fields };
  for (const [name, text] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = text;
    form.appendChild(input);
  }
  const button = document.createElement("button");
  button.textContent = value.label;
  if (value.id) button.id = value.id;
  form.appendChild(button);
  return form;
}

function cell(value) {
  const td = document.createElement("td");
  if (typeof value === "string") {
    td.textContent = value;
  } else if ("post" in value) {
    td.appendChild(postButton(value));
  } else if ("href" in value) {
    const a = document.createElement("a");
    a.href = value.href;
    a.textContent = value.text;
    td.appendChild(a);
  } else {
    td.className = "spark";
    sparkline(td, value.spark || []);
  }
  return td;
}

function fill(tbody, rows) {
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const value of row) tr.appendChild(cell(value));
    fresh.appendChild(tr);
  }
  tbody.replaceChildren(...fresh.childNodes);
}

async function poll(url) {
  try {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign("/login");
      return;
    }
    if (response.ok) {
      const data = await response.json();
      for (const [id, rows] of Object.entries(data.tables || {})) {
        const tbody = document.getElementById(id);
        if (tbody && tbody.dataset.live) fill(tbody, rows);
      }
      document.body.dataset.updated = String(Date.now());
    }
  } catch (error) {
    // The daemon restarting: try again at the next tick.
  }
  window.setTimeout(() => poll(url), POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const td of document.querySelectorAll("td.spark[data-spark]")) {
    const values = td.dataset.spark ? td.dataset.spark.split(",").map(Number) : [];
    sparkline(td, values);
  }
  const source = document.querySelector(".poll[data-api]");
  if (source) window.setTimeout(() => poll(source.dataset.api), POLL_MS);
});
