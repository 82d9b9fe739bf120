"use strict";
const $ = (id) => document.getElementById(id);
const pid = new URLSearchParams(location.search).get("p");
let study = null, pos = 0;
const say = (msg) => { $("status").textContent = msg; };
function radio(name, value, text) {
  const div = document.createElement("div"), input = document.createElement("input"), label = document.createElement("label");
  input.type = "radio"; input.name = name; input.value = value; input.id = `${name}-${value}`; input.required = true;
  label.htmlFor = input.id; label.textContent = text; div.append(input, " ", label); return div;
}
function show() {
  if (pos >= study.items.length) { $("item").hidden = true; $("done").hidden = false; return; }
  const it = study.items[pos];
  $("progress").textContent = `Item ${pos + 1} of ${study.items.length}`;
  $("clips").replaceChildren(...it.clips.map((src, k) => {
    const a = document.createElement("audio"); a.controls = true; a.preload = "auto"; a.src = src;
    a.setAttribute("aria-label", `Audio ${k + 1}`); return a; }));
  $("choices").replaceChildren(...it.options.map((label, k) => radio("choice", k, label)));
  $("scale").replaceChildren(...study.scale.map(([v, label]) => radio("confidence", v, label)));
  $("text").value = ""; $("item").dataset.item = it.id; $("item").hidden = false; $("progress").focus();
}
async function load() {
  $("start").hidden = true;
  const r = await fetch("api/study?p=" + encodeURIComponent(pid)), body = await r.json();
  if (!r.ok) { say(body.error); $("start").hidden = false; return; }
  study = body; pos = body.next; show();
}
$("item").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData($("item"));
  const answer = {participant: pid, item: study.items[pos].id, choice: Number(f.get("choice")),
                  confidence: Number(f.get("confidence")), text: f.get("text") || ""};
  $("submit").disabled = true; say("Saving…");
  try {
    const r = await fetch("api/response", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(answer)});
    const body = await r.json();
    if (!r.ok) { say(body.error); return; }
    pos = body.next; say("Saved."); show();
  } catch (e) { say("Could not save your answer; please try again."); }
  finally { $("submit").disabled = false; }
});
if (pid) load();
