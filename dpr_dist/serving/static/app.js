// The demo page: plain DOM code, no build step, no external resources. It only talks to the API
// of the process that served it (/info, /items/search, /recommend). All text from the server is
// inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], tags: [], requests: 0, searchSeq: 0 };

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// --- who: a known user or a history built from title search ----------------------------------

function showMode() {
  const byUser = $("mode-user").checked;
  $("user-box").hidden = !byUser;
  $("history-box").hidden = byUser;
}

function renderHistory() {
  const box = $("history-chips");
  box.replaceChildren();
  state.history.forEach((item, index) => {
    const chip = el("button", { type: "button", class: "chip history-chip", "data-id": item.id,
                                title: "remove" }, `${item.title} \u00d7`);
    chip.addEventListener("click", () => { state.history.splice(index, 1); renderHistory(); });
    box.append(chip);
  });
}

async function search() {
  const q = $("search-input").value.trim();
  const seq = ++state.searchSeq;  // a slow answer to an older query must not overwrite a newer one
  const list = $("search-results");
  if (!q) { list.replaceChildren(); return; }
  try {
    const body = await getJSON(`/items/search?q=${encodeURIComponent(q)}&limit=20`);
    if (seq !== state.searchSeq) return;
    list.replaceChildren();
    for (const item of body.results) {
      const li = el("li", { class: "search-result", "data-id": item.id });
      const add = el("button", { type: "button", class: "add-item" }, "add");
      add.addEventListener("click", () => { state.history.push(item); renderHistory(); });
      li.append(add, document.createTextNode(` ${item.title} `), ...item.tags.map((t) => el("span", { class: "tag" }, t)));
      list.append(li);
    }
    if (!body.results.length) list.append(el("li", { class: "muted" }, "no match"));
    list.setAttribute("data-query", q);
  } catch (err) {
    setStatus(`search: ${err.message}`, true);
  }
}

// --- what: free text or tag chips ------------------------------------------------------------

const NEXT_STATE = { off: "more", more: "less", less: "off" };

function renderTagChips() {
  const box = $("tag-chips");
  box.replaceChildren();
  for (const tag of state.tags) {
    const chip = el("button", { type: "button", class: "chip tag-chip", "data-tag": tag, "data-state": "off" }, tag);
    chip.addEventListener("click", () => chip.setAttribute("data-state", NEXT_STATE[chip.getAttribute("data-state")]));
    box.append(chip);
  }
}

function chosenTags(which) {
  return [...document.querySelectorAll(`.tag-chip[data-state=${which}]`)].map((c) => c.getAttribute("data-tag"));
}

function buildPrompt() {
  const more = chosenTags("more"), less = chosenTags("less");
  if (more.length || less.length) return { more, less };
  const text = $("prompt-input").value.trim();
  return text ? text : null;
}

// --- results ---------------------------------------------------------------------------------

function askedTags(clauses) {
  const asked = { more: new Set(), less: new Set() };
  for (const c of clauses) for (const t of c.tags) asked[c.polarity].add(t);
  return asked;
}

function renderList(target, items, otherIds, changeClass, asked) {
  target.replaceChildren();
  for (const item of items) {
    const li = el("li", { class: "item", "data-id": item.id, "data-tags": item.tags.join("|") });
    if (!otherIds.has(item.id)) li.classList.add(changeClass);
    li.append(el("span", { class: "title" }, item.title));
    for (const t of item.tags) {
      const chip = el("span", { class: "tag" }, t);
      if (asked.more.has(t)) chip.classList.add("asked-more");
      if (asked.less.has(t)) chip.classList.add("asked-less");
      li.append(chip);
    }
    li.append(el("span", { class: "score" }, item.score.toFixed(3)));
    target.append(li);
  }
}

function renderSummary(body, asked) {
  const box = $("summary");
  box.replaceChildren();
  const tags = [...asked.more, ...asked.less];
  if (!tags.length) return;
  const table = el("table");
  const head = el("tr");
  head.append(el("th", {}, "tag"), el("th", {}, "asked"), el("th", {}, "DPR top list"), el("th", {}, "backbone top list"));
  table.append(head);
  const count = (items, tag) => items.filter((i) => i.tags.includes(tag)).length;
  for (const tag of tags) {
    const row = el("tr", { class: "summary-row", "data-tag": tag });
    row.append(el("td", {}, tag), el("td", {}, asked.more.has(tag) ? "more" : "less"),
               el("td", { class: "dpr-count" }, `${count(body.dpr, tag)} / ${body.dpr.length}`),
               el("td", { class: "backbone-count" }, `${count(body.backbone, tag)} / ${body.backbone.length}`));
    table.append(row);
  }
  box.append(table);
}

function renderClauses(body) {
  const box = $("clauses");
  box.replaceChildren();
  if (!body.clauses.length) { box.append(el("p", { class: "muted" }, "no prompt: both lists are the backbone's")); return; }
  const p = el("p", {}, "prompt read as: ");
  for (const c of body.clauses) {
    const how = c.given ? `${c.given} (given)` : `${c.routed} (router, p(more) = ${c.p_more.toFixed(2)})`;
    p.append(el("span", { class: `chip clause ${c.polarity}`, "data-polarity": c.polarity }, `"${c.text}" \u2192 ${how}`));
  }
  if (body.filter) p.append(el("span", { class: "muted" }, body.filtered_tags.length
      ? ` hard filter drops: ${body.filtered_tags.join(", ")}` : " hard filter: no tag named in a negative clause"));
  box.append(p);
}

async function recommend() {
  const request = { prompt: buildPrompt(), k: Number($("k-input").value), filter: $("filter-checkbox").checked };
  if ($("mode-user").checked) request.user = Number($("user-id").value);
  else request.history = state.history.map((item) => item.id);
  document.body.setAttribute("data-state", "loading");
  setStatus("asking the model…");
  try {
    const body = await getJSON("/recommend", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const asked = askedTags(body.clauses);
    renderClauses(body);
    renderSummary(body, asked);
    renderList($("dpr-list"), body.dpr, new Set(body.backbone.map((i) => i.id)), "entered", asked);
    renderList($("backbone-list"), body.backbone, new Set(body.dpr.map((i) => i.id)), "left", asked);
    $("results").hidden = false;
    setStatus(`${body.entered.length} item(s) entered the list, ${body.left.length} left; ` +
              `history of ${body.history_length} items; ${Object.entries(body.timings_ms).map(([k, v]) => `${k} ${v} ms`).join(", ")}`);
    document.body.setAttribute("data-state", "ready");
  } catch (err) {
    setStatus(err.message, true);
    document.body.setAttribute("data-state", "error");
  } finally {
    $("results").setAttribute("data-requests", String(++state.requests));
  }
}

// --- start -----------------------------------------------------------------------------------

async function start() {
  for (const id of ["mode-user", "mode-history"]) $(id).addEventListener("change", showMode);
  let timer = null;
  $("search-input").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  $("submit").addEventListener("click", recommend);
  $("prompt-input").addEventListener("keydown", (e) => { if (e.key === "Enter") recommend(); });
  try {
    const info = await getJSON("/info");
    state.tags = info.tags;
    renderTagChips();
    $("user-id").max = String(info.users);
    $("random-user").addEventListener("click", () => { $("user-id").value = String(1 + Math.floor(Math.random() * info.users)); });
    $("model-info").textContent = `${info.data_name || "data"}: ${info.items} items, ${info.users} users, ` +
      `${info.tags.length} tags; ${info.model ? info.model.backbone + " backbone, " + info.model.routing + " routing" : ""}`;
    document.body.setAttribute("data-state", "idle");
  } catch (err) {
    setStatus(`cannot load /info: ${err.message}`, true);
    document.body.setAttribute("data-state", "error");
  }
}

start();
