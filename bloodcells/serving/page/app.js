// The page: describe the served model, send chosen or dropped images to /api/predict, show
// one row per image (sortable), the errors, and predict's CSV as a download. No library,
// nothing fetched from elsewhere.
"use strict";

let limits = null;
let rows = [];
let sortKey = null;
let sortDown = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function describe(info) {
  limits = info.limits;
  const members = info.members.map((m) => `${m.backbone} (${m.image_size} px${m.stain_norm !== "none" ? ", " + m.stain_norm : ""})`);
  const m = info.metrics;
  const facts = [
    ["model", info.checkpoint],
    [info.members.length > 1 ? `ensemble of ${info.members.length}` : "backbone", members.join(", ")],
    ["input size", `${info.image_size} px`],
    ["test-time augmentation", info.tta],
    ["temperature", info.temperature],
    ["prediction sets", info.conformal ? `alpha ${info.conformal.alpha}, ${info.conformal.score}${info.conformal.class_conditional ? ", per class" : ""}` : "none stored"],
    ["foreign-image score", info.foreign_score.filter((s) => s).join(", ") || "none fitted"],
    ["Grad-CAM layer", info.gradcam_layer || "off"],
    ["metrics", m.accuracy !== undefined ? `accuracy ${(100 * m.accuracy).toFixed(1)}% on ${m.n} test images (${info.metrics_from})` : info.metrics_from],
  ];
  const dl = el("dl");
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  if (info.report) dl.append(el("dt", {}, "report"), el("dd", {}, el("a", { href: info.report, target: "_blank" }, "report.html")));
  $("model").replaceChildren(dl);
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function upload(files) {
  files = Array.from(files);
  $("errors").replaceChildren();
  if (!files.length) return status("no file chosen", true);
  const bytes = files.reduce((s, f) => s + f.size, 0);
  if (limits && files.length > limits.max_files) return status(`${files.length} files; the page takes up to ${limits.max_files} at once`, true);
  if (limits && bytes > limits.max_upload_mb * 1048576) return status(`${(bytes / 1048576).toFixed(1)} MB; the page takes up to ${limits.max_upload_mb} MB at once`, true);
  const form = new FormData();
  for (const f of files) form.append("files", f, f.webkitRelativePath || f.name);
  status(`scoring ${files.length} image(s)…`);
  let answer;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) return status(answer.error || `the server answered ${response.status}`, true);
  } catch (err) {
    return status(`no answer from the server: ${err}`, true);
  }
  show(answer);
}

function show(answer) {
  rows = answer.results;
  for (const e of answer.errors) $("errors").append(el("li", {}, e.error));
  const foreign = rows.filter((r) => r.in_distribution === false).length;
  status(`${rows.length} image(s) scored${answer.errors.length ? `, ${answer.errors.length} refused (below)` : ""}${foreign ? `, ${foreign} flagged as not like the training cells` : ""}`);
  const old = $("download").href;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  $("download").href = URL.createObjectURL(new Blob([answer.csv], { type: "text/csv" }));
  $("output").hidden = false;
  render();
}

const sortValue = {
  source: (r) => r.source,
  pred: (r) => r.pred,
  top: (r) => r.probs[r.pred],
  set: (r) => (r.prediction_set ? r.prediction_set.length : 0),
  ood: (r) => (r.ood_score === null ? -1 : r.ood_score),
  abstain: (r) => (r.abstain ? 1 : 0),
};

function bars(probs) {
  const box = el("div", { class: "bars" });
  for (const [c, p] of Object.entries(probs)) {
    const fill = el("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    box.append(el("span", {}, c), el("div", { class: "bar" }, fill), el("span", {}, p.toFixed(3)));
  }
  return box;
}

function render() {
  const ordered = [...rows];
  if (sortKey) {
    const v = sortValue[sortKey];
    ordered.sort((a, b) => (v(a) < v(b) ? -1 : v(a) > v(b) ? 1 : 0) * (sortDown ? -1 : 1));
  }
  const body = ordered.map((r) => {
    const cls = [r.abstain ? "abstain" : "", r.in_distribution === false ? "foreign" : ""].join(" ").trim();
    return el(
      "tr", { "data-source": r.source, class: cls },
      el("td", { class: "source" }, el("img", { class: "cell", src: r.image, alt: r.source }), el("br"), r.source),
      el("td", { class: "pred" }, r.pred),
      el("td", { class: "top" }, r.probs[r.pred].toFixed(3)),
      el("td", { class: "set" }, r.prediction_set ? r.prediction_set.join(" | ") || "(empty)" : "—"),
      el("td", { class: "ood" }, r.ood_score === null ? "—" : `${r.ood_score.toFixed(2)}${r.in_distribution ? "" : " foreign"}`),
      el("td", { class: "abstain" }, r.abstain === null ? "—" : r.abstain ? "yes" : "no"),
      el("td", {}, bars(r.probs)),
      el("td", {}, r.gradcam ? el("img", { class: "cell", src: r.gradcam, alt: `Grad-CAM of ${r.source}` }) : "—"),
    );
  });
  $("results").tBodies[0].replaceChildren(...body);
}

for (const th of document.querySelectorAll("th[data-key]")) {
  th.addEventListener("click", () => {
    sortDown = sortKey === th.dataset.key ? !sortDown : false;
    sortKey = th.dataset.key;
    render();
  });
}
$("files").addEventListener("change", (e) => upload(e.target.files));
$("folder").addEventListener("change", (e) => upload(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); });

fetch("/api/info")
  .then((r) => r.json())
  .then(describe)
  .catch((err) => { $("model").textContent = `could not read the model's description: ${err}`; });
