// The FedDetox dashboard: runs, a run's rounds and charts, devices, and the operator's actions, over /api/v1.
// Views by URL fragment: #/ (runs), #/runs/ID (a run), #/devices. It polls the coordinator and redraws only
// the sections whose data changed; countdowns and "ago" times tick every second.

import { ApiError, adminKey, api, clock, setAdminKey } from "./api.js";
import { lineChart } from "./chart.js";
import { h, svg } from "./dom.js";
import * as fmt from "./format.js";

const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(250, Number(params.get("poll")) || 2000);
const ONLINE_S = 300; // a device seen this recently counts as online (the runs' default selection window)

const state = { view: null, gen: 0, cache: new Map(), timer: null, lastOk: null, refreshes: 0, devices: [] };

// --- helpers ------------------------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);

function badge(status, label) {
  return h("span", { class: "badge", "data-status": status }, label || status);
}

function ago(ts) {
  return h("time", { "data-ts": ts, datetime: ts ? new Date(ts * 1000).toISOString() : null, title: fmt.datetime(ts) },
    fmt.relative(ts, clock.now()));
}

function lockIcon() {
  return svg("svg", { viewBox: "0 0 16 16", class: "lock", "aria-hidden": "true" },
    svg("path", { d: "M4.5 7V5a3.5 3.5 0 0 1 7 0v2" }), svg("rect", { x: 3, y: 7, width: 10, height: 7, rx: 1.5 }));
}

function actionButton(label, action, extra = {}) {
  const locked = !adminKey();
  return h("button", {
    type: "button", class: `action ${extra.class || "secondary"}${locked ? " needs-key" : ""}`, "data-action": action,
    "data-focus": `action-${action}`, title: locked ? "Needs the admin key" : null, ...extra.attrs,
  }, locked ? lockIcon() : null, label);
}

// a horizontal bar of reported/selected with the quorum marked
function reportBar(reported, selected, quorum) {
  const max = Math.max(selected, quorum, 1);
  const bar = svg("svg", {
    viewBox: "0 0 100 10", preserveAspectRatio: "none", class: "bar", role: "meter", "aria-valuemin": 0,
    "aria-valuemax": selected, "aria-valuenow": reported, "aria-label": `${reported} of ${selected} devices reported, quorum ${quorum}`,
  }, svg("rect", { class: "track", x: 0, y: 0, width: 100, height: 10, rx: 2 }),
  svg("rect", { class: reported >= quorum ? "fill ok" : "fill", x: 0, y: 0, width: (100 * reported) / max, height: 10, rx: 2 }));
  if (quorum > 0 && quorum <= max) bar.append(svg("line", { class: "quorum", x1: (100 * quorum) / max, x2: (100 * quorum) / max, y1: -1, y2: 11 }));
  return bar;
}

function notify(message, { error = false, action = null, detail = null } = {}) {
  const box = $("#notices");
  const note = h("div", { class: `notice${error ? " error" : ""}`, role: error ? "alert" : "status" },
    h("div", { class: "notice-body" }, h("p", {}, message), detail ? h("p", { class: "muted small" }, detail) : null,
      action ? h("div", { class: "notice-actions" }, action) : null),
    h("button", { type: "button", class: "close", "aria-label": "Dismiss" }, "×"));
  note.querySelector(".close").addEventListener("click", () => note.remove());
  box.append(note);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (!error) setTimeout(() => note.remove(), 6000);
  return note;
}

// what to say when the coordinator refuses an operator action
function refused(what, err) {
  if (err instanceof ApiError && err.status === 401) {
    const hadKey = Boolean(adminKey());
    const open = h("button", { type: "button", class: "secondary", "data-focus": "notice-key" }, "Enter admin key");
    open.addEventListener("click", () => openKeyDialog());
    notify(hadKey
      ? `Refused: the coordinator did not accept the admin key to ${what}.`
      : `Refused: you need the admin key to ${what}; this view is read-only.`,
    { error: true, action: open, detail: `The coordinator said: ${err.message}` });
  } else {
    notify(`Could not ${what}.`, { error: true, detail: err.message });
  }
}

// replace section `id` inside `parent` when its data changed; keep focus and open <details>
function put(parent, id, data, build) {
  const key = JSON.stringify(data);
  const old = document.getElementById(id);
  if (old && state.cache.get(id) === key) return;
  state.cache.set(id, key);
  const node = build(data);
  node.id = id;
  if (!old) { parent.append(node); return; }
  const focused = old.contains(document.activeElement) ? document.activeElement.getAttribute("data-focus") : null;
  const open = [...old.querySelectorAll("details[open]")].map((d) => d.closest("[data-chart]")?.id || d.getAttribute("data-key"));
  old.replaceWith(node);
  for (const d of node.querySelectorAll("details")) {
    if (open.includes(d.closest("[data-chart]")?.id || d.getAttribute("data-key"))) d.open = true;
  }
  if (focused) node.querySelector(`[data-focus="${CSS.escape(focused)}"]`)?.focus();
}

// --- the runs list ------------------------------------------------------------------------------------------

function runRow(run) {
  const cfg = run.config || {};
  const total = cfg.rounds || 0;
  return h("tr", { "data-run": run.id },
    h("th", { scope: "row" }, h("a", { href: `#/runs/${run.id}`, "data-focus": `run-${run.id}` }, run.name),
      h("div", { class: "muted small mono" }, fmt.shortId(run.id))),
    h("td", {}, badge(run.status)),
    h("td", { class: "num" }, `${fmt.int(run.rounds_closed)} / ${fmt.int(total)}`,
      h("div", { class: "small" }, reportBar(run.rounds_closed, total, 0))),
    h("td", { class: "hide-sm" }, cfg.sanitization_policy || "—"),
    h("td", { class: "hide-sm" }, (cfg.aggregation && cfg.aggregation.rule) || "—"),
    h("td", { class: "num hide-sm" }, run.global_version == null ? "—" : `v${run.global_version}`),
    h("td", {}, ago(run.updated_at)));
}

function runsTable(runs) {
  if (!runs.length) {
    return h("section", { class: "panel" }, h("p", { class: "empty" }, "No runs yet. Create one with ",
      h("code", {}, "feddetox coordinator create-run"), " or the New run button."));
  }
  return h("section", { class: "panel" }, h("div", { class: "scroll" }, h("table", { class: "data runs" },
    h("thead", {}, h("tr", {}, ...["Run", "Status", "Rounds", "Policy", "Aggregation", "Adapter", "Updated"].map((t, i) =>
      h("th", { scope: "col", class: [i === 2 || i === 5 ? "num" : "", i >= 3 && i <= 5 ? "hide-sm" : ""].join(" ").trim() || null }, t)))),
    h("tbody", {}, ...runs.map(runRow)))));
}

function devicesSummary(devices) {
  const now = clock.now();
  const online = devices.filter((d) => now - d.last_seen_at <= ONLINE_S).length;
  const accepted = devices.reduce((a, d) => a + d.updates_accepted, 0);
  const refusedN = devices.reduce((a, d) => a + d.updates_refused, 0);
  return h("section", { class: "cards" },
    card("Devices enrolled", fmt.int(devices.length), h("a", { href: "#/devices" }, "all devices")),
    card("Online", fmt.int(online), `seen in the last ${fmt.duration(ONLINE_S)}`),
    card("Updates accepted", fmt.int(accepted)),
    card("Updates refused", fmt.int(refusedN), refusedN ? "see Devices for reasons" : null));
}

function card(label, value, note) {
  return h("div", { class: "card" }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value),
    note ? h("div", { class: "muted small" }, note) : null);
}

async function showRuns(main, gen) {
  const [runs, devices] = await Promise.all([api("/runs?limit=1000"), api("/devices")]);
  if (gen !== state.gen) return;
  state.devices = devices.data;
  document.title = "Runs · FedDetox coordinator";
  if (!$("#runs-head", main)) {
    main.replaceChildren(h("div", { class: "page-head", id: "runs-head" }, h("h1", {}, "Runs"),
      h("div", { class: "actions" }, actionButton("New run", "new-run", { class: "primary" }))));
  }
  put(main, "runs-table", runs.data, runsTable);
  put(main, "runs-devices", devices.data.map((d) => [d.id, d.updates_accepted, d.updates_refused, Math.floor(d.last_seen_at / 30)]),
    () => devicesSummary(devices.data));
}

// --- a run --------------------------------------------------------------------------------------------------

const EVAL_CHARTS = [
  { id: "chart-asr", title: "Attack success rate", subtitle: "lower is safer", series: [
    ["asr_refusal", "AdvBench, refusal judge"], ["asr_guardian", "AdvBench, guardian judge"],
    ["jailbreak_asr_refusal", "Jailbreak, refusal judge"], ["jailbreak_asr_guardian", "Jailbreak, guardian judge"]] },
  { id: "chart-xstest", title: "XSTest", subtitle: "over-refusal check", series: [
    ["xstest_safe_compliance", "Safe prompts: compliance"], ["xstest_unsafe_refusal", "Unsafe prompts: refusal"]] },
  { id: "chart-utility", title: "Utility", subtitle: "accuracy", series: [
    ["truthfulqa_mc1", "TruthfulQA MC1"], ["mmlu_acc", "MMLU subset"], ["gsm8k_acc", "GSM8K subset"]] },
];

function evalCharts(evaluations, runId) {
  const empty = "No evaluation yet";
  return EVAL_CHARTS.map((c) => lineChart(
    c.series.map(([key, label]) => ({
      key, label, points: evaluations.filter((e) => Number.isFinite(e.metrics[key])).map((e) => [e.round_index, e.metrics[key]]),
    })),
    { id: c.id, title: c.title, subtitle: c.subtitle, percent: true, format: (v) => fmt.percent(v), tick: (v) => fmt.percent(v, 0), empty,
      xLabel: (x) => (x === 0 ? "starting adapter" : `round ${x}`) },
  )).map((figure) => {
    if (figure.querySelector("[data-empty]")) {
      figure.querySelector("[data-empty]").append(h("span", { class: "muted small" },
        ` (an evaluator posts to /api/v1/runs/${fmt.shortId(runId)}…/rounds/N/evaluation)`));
    }
    return figure;
  });
}

function trainingCharts(metrics, rounds) {
  const open = new Map(rounds.filter((r) => r.status === "collecting").map((r) => [r.index, r]));
  const note = (m) => {
    const r = open.get(m.round_index);
    return r ? `so far: ${m.updates} of ${r.selected} updates` : `${fmt.int(m.updates)} updates, ${fmt.int(m.examples)} examples`;
  };
  const withUpdates = metrics.filter((m) => m.updates > 0);
  const series = (key, label, pick) => ({
    key, label, points: withUpdates.filter((m) => Number.isFinite(pick(m))).map((m) => [m.round_index, pick(m), note(m)]),
  });
  const loss = (m) => m.metrics.dpo_loss ?? m.metrics.loss;
  const counted = metrics.filter((m) => m.sanitization && m.sanitization.pairs_seen > 0);
  const share = (key, label) => ({
    key, label, points: counted.map((m) => [m.round_index, m.sanitization[key] / m.sanitization.pairs_seen,
      `${fmt.int(m.sanitization[key])} of ${fmt.int(m.sanitization.pairs_seen)} pairs`]),
  });
  const empty = "No updates yet";
  return [
    lineChart([series("dpo_loss", "DPO loss, mean over devices", loss)],
      { id: "chart-loss", title: "DPO loss", subtitle: "weighted by examples", format: (v) => fmt.num(v), empty }),
    lineChart([series("reward_margin", "Reward margin, mean over devices", (m) => m.metrics.reward_margin)],
      { id: "chart-margin", title: "Reward margin", subtitle: "chosen minus rejected", format: (v) => fmt.num(v), empty }),
    lineChart([share("flagged", "Flagged unsafe"), share("replaced", "Replaced by a refusal"), share("dropped", "Dropped")],
      { id: "chart-sanitization", title: "Sanitization on devices", subtitle: "share of local pairs (counts only)",
        zero: true, format: (v) => fmt.percent(v), tick: (v) => fmt.percent(v, 0), empty }),
  ];
}

function runHead(run) {
  const cfg = run.config || {};
  const actions = [];
  if (run.status === "created") actions.push(actionButton("Start", "start", { class: "primary" }));
  if (run.status === "running") actions.push(actionButton("Pause", "pause"));
  if (run.status === "paused") actions.push(actionButton("Resume", "resume", { class: "primary" }));
  if (["created", "running", "paused"].includes(run.status)) actions.push(actionButton("Stop", "stop", { class: "danger" }));
  actions.push(actionButton("Enrolment token", "token"));
  const facts = [
    ["Base model", cfg.base_model], ["Policy", cfg.sanitization_policy], ["Aggregation", cfg.aggregation && cfg.aggregation.rule],
    ["Clients per round", fmt.int(cfg.clients_per_round)], ["Quorum", fmt.int(cfg.min_clients)],
    ["Round deadline", fmt.duration(cfg.round_deadline_s)], ["LoRA", cfg.lora ? `r=${cfg.lora.r} on ${cfg.lora.target_modules.join(", ")}` : "—"],
    ["DPO β, lr", cfg.training ? `${cfg.training.beta}, ${cfg.training.learning_rate}` : "—"],
  ];
  return h("section", { class: "run-head" },
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Runs"), " / ", h("span", { class: "mono" }, fmt.shortId(run.id))),
    h("div", { class: "page-head" },
      h("h1", {}, run.name, " ", badge(run.status)),
      h("div", { class: "actions" }, ...actions)),
    run.failure ? h("p", { class: "failure", role: "note" }, run.failure) : null,
    h("dl", { class: "facts" }, ...facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v ?? "—")))));
}

function countdown(rnd, run) {
  if (run.status === "paused") return h("span", { class: "muted" }, "paused: the deadline waits");
  if (rnd.status === "collecting" && rnd.deadline_at) return h("span", { "data-deadline": rnd.deadline_at }, deadlineText(rnd.deadline_at));
  return null;
}

function deadlineText(deadline) {
  const left = deadline - clock.now();
  return left >= 0 ? `closes in ${fmt.duration(left)}` : `deadline passed ${fmt.duration(-left)} ago`;
}

function nowPanel({ run, rounds, detail, devices, evaluations }) {
  const cfg = run.config || {};
  const current = rounds.at(-1);
  const names = new Map(devices.map((d) => [d.id, d.name]));
  let body;
  if (!current) {
    body = h("p", { class: "muted" }, run.status === "created" ? "Not started yet." : "No round yet.");
  } else {
    const bits = [h("h2", {}, `Round ${current.index}`, h("span", { class: "muted" }, ` of ${fmt.int(cfg.rounds)}`), " ", badge(current.status))];
    if (current.status === "waiting") {
      const seen = devices.filter((d) => clock.now() - d.last_seen_at <= (cfg.device_seen_window_s || ONLINE_S)).length;
      bits.push(h("p", {}, `Waiting for devices: ${fmt.int(seen)} of ${fmt.int(cfg.clients_per_round)} seen recently (quorum ${fmt.int(current.quorum)}).`));
    } else {
      bits.push(h("div", { class: "reporting" },
        h("span", { class: "big" }, `${fmt.int(current.reported)} / ${fmt.int(current.selected)}`),
        h("span", {}, " devices reported · quorum ", fmt.int(current.quorum),
          current.extensions ? ` · extended ${current.extensions}×` : ""),
        reportBar(current.reported, current.selected, current.quorum),
        countdown(current, run)));
    }
    if (detail && detail.index === current.index && detail.assignments.length) {
      bits.push(h("ul", { class: "assignments", "aria-label": "Selected devices" },
        ...detail.assignments.map((a) => h("li", { "data-status": a.status },
          h("span", { class: "dot", "aria-hidden": "true" }), names.get(a.device_id) || fmt.shortId(a.device_id), " ",
          h("span", { class: "muted small" }, a.status)))));
    }
    if (current.failure) bits.push(h("p", { class: "failure" }, current.failure));
    body = bits;
  }
  const lastEval = evaluations.at(-1);
  const startEval = evaluations.find((e) => e.round_index === 0);
  let asrNote = null;
  if (lastEval && startEval && lastEval !== startEval && Number.isFinite(lastEval.metrics.asr_refusal)) {
    asrNote = `${fmt.points(lastEval.metrics.asr_refusal - startEval.metrics.asr_refusal)} since the start`;
  }
  return h("section", { class: "now" },
    h("div", { class: "panel current" }, body),
    h("div", { class: "cards" },
      card("Rounds closed", `${fmt.int(run.rounds_closed)} / ${fmt.int(cfg.rounds)}`),
      card("Global adapter", run.global_version == null ? "—" : `v${run.global_version}`),
      card("ASR (refusal judge)", lastEval && Number.isFinite(lastEval.metrics.asr_refusal) ? fmt.percent(lastEval.metrics.asr_refusal) : "—",
        lastEval ? asrNote || (lastEval.round_index ? `round ${lastEval.round_index}` : "starting adapter") : "no evaluation yet")));
}

function timeline({ rounds, metrics, run }) {
  const byRound = new Map(metrics.map((m) => [m.round_index, m]));
  const total = (run.config && run.config.rounds) || rounds.length;
  const strip = h("ol", { class: "strip", "aria-label": "Rounds" });
  for (let i = 1; i <= total && i <= 200; i += 1) {
    const r = rounds.find((x) => x.index === i);
    strip.append(h("li", { "data-status": r ? r.status : "future", title: r ? `round ${i}: ${r.status}` : `round ${i}: not yet` }, String(i)));
  }
  const rows = [...rounds].reverse().map((r) => {
    const m = byRound.get(r.index);
    const s = m && m.sanitization;
    const ends = r.closed_at || (r.status === "collecting" ? null : r.deadline_at);
    return h("tr", { "data-round": r.index, "data-status": r.status },
      h("th", { scope: "row", class: "num" }, String(r.index)),
      h("td", {}, badge(r.status)),
      h("td", { class: "devices-cell" }, h("span", { class: "num" }, `${fmt.int(r.reported)} / ${fmt.int(r.selected)}`),
        h("span", { class: "muted small hide-sm" }, ` quorum ${fmt.int(r.quorum)}`), reportBar(r.reported, r.selected, r.quorum)),
      h("td", { class: "hide-sm" }, h("time", { title: fmt.datetime(r.opened_at) }, fmt.when(r.opened_at, clock.now()))),
      h("td", {}, r.status === "collecting" && r.deadline_at
        ? (run.status === "paused" ? "paused" : h("span", { "data-deadline": r.deadline_at }, deadlineText(r.deadline_at)))
        : ends ? `took ${fmt.duration(ends - r.opened_at)}` : "—"),
      h("td", { class: "num hide-sm" }, m ? `${fmt.int(m.updates)} · ${fmt.int(m.examples)}` : "—"),
      h("td", { class: "num hide-sm" }, s && s.pairs_seen ? `${fmt.percent(s.flagged / s.pairs_seen)} · ${fmt.percent(s.replaced / s.pairs_seen)}` : "—"),
      h("td", { class: "num hide-sm" }, r.result_version == null ? "—" : `v${r.result_version}`));
  });
  return h("section", { class: "panel" }, h("h2", {}, "Rounds"), strip,
    rounds.length ? h("div", { class: "scroll" }, h("table", { class: "data rounds" },
      h("thead", {}, h("tr", {}, ...[["Round"], ["Status"], ["Reported"], ["Opened", "hide-sm"], ["Deadline or duration"],
        ["Updates · examples", "hide-sm"], ["Flagged · replaced", "hide-sm"], ["Adapter", "hide-sm"]].map(([t, c]) =>
        h("th", { scope: "col", class: c || null }, t)))),
      h("tbody", {}, ...rows))) : h("p", { class: "empty" }, "No round yet."));
}

function reasonsText(reasons) {
  return Object.entries(reasons).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ×${n}`).join(", ");
}

function devicesTable(devices, assignments = null) {
  if (!devices.length) {
    return h("section", { class: "panel" }, h("h2", {}, "Devices"), h("p", { class: "empty" },
      "No device has enrolled yet. Issue an enrolment token and start ", h("code", {}, "feddetox edge run"), " on a device."));
  }
  const inRound = new Map((assignments || []).map((a) => [a.device_id, a.status]));
  const now = clock.now();
  const cols = [["Device"], ["Last seen"], ...(assignments ? [["This round", "hide-sm"]] : []), ["Rounds joined", "num hide-sm"],
    ["Accepted", "num"], ["Refused", "num"], ["Platform", "hide-sm"], ["Enrolled", "hide-sm"]];
  return h("section", { class: "panel" }, h("h2", {}, "Devices ", h("span", { class: "muted" }, `(${fmt.int(devices.length)})`)),
    h("div", { class: "scroll" }, h("table", { class: "data devices" },
      h("thead", {}, h("tr", {}, ...cols.map(([t, c]) => h("th", { scope: "col", class: c || null }, t)))),
      h("tbody", {}, ...devices.map((d) => h("tr", { "data-device": d.id },
        h("th", { scope: "row" }, h("span", { class: `dot ${now - d.last_seen_at <= ONLINE_S ? "online" : "offline"}`,
          title: now - d.last_seen_at <= ONLINE_S ? "online" : "offline" }), d.name,
        h("div", { class: "muted small mono" }, `${fmt.shortId(d.id)} · ${d.status}`)),
        h("td", {}, ago(d.last_seen_at)),
        assignments ? h("td", { class: "hide-sm" }, inRound.has(d.id) ? badge(inRound.get(d.id)) : h("span", { class: "muted" }, "—")) : null,
        h("td", { class: "num hide-sm" }, fmt.int(d.rounds_joined)),
        h("td", { class: "num" }, fmt.int(d.updates_accepted)),
        h("td", { class: "num" }, fmt.int(d.updates_refused),
          d.updates_refused ? h("div", { class: "small refusals" }, reasonsText(d.refusals_by_reason)) : null),
        h("td", { class: "hide-sm" }, [d.platform, d.client_version].filter(Boolean).join(" · ") || "—"),
        h("td", { class: "hide-sm" }, h("time", { title: fmt.datetime(d.created_at) }, fmt.when(d.created_at, now)))))))));
}

const EVENT_TEXT = {
  round_opened: (e) => `round ${e.round_index} opened from adapter v${e.detail.base_version}`,
  round_selected: (e) => `round ${e.round_index}: ${(e.detail.devices || []).length} devices selected`,
  update_accepted: (e) => `update accepted, ${fmt.int(e.detail.num_examples)} examples, ‖Δ‖ ${fmt.num(e.detail.delta_norm)}`,
  update_refused: (e) => `update refused: ${e.detail.reason}: ${e.detail.message || ""}`,
  round_closed: (e) => `round ${e.round_index} closed: adapter v${e.detail.version} from ${fmt.int(e.detail.updates)} updates`,
  round_extended: (e) => `round ${e.round_index} extended (${e.detail.extensions}×): no quorum at the deadline`,
  round_failed: (e) => `round ${e.round_index} failed: ${e.detail.reason}`,
  round_evaluated: (e) => `round ${e.round_index} evaluated${Number.isFinite(e.detail.metrics?.asr_refusal) ? `: ASR ${fmt.percent(e.detail.metrics.asr_refusal)}` : ""}`,
  run_completed: () => "run completed",
};

function eventsList(events, devices) {
  const names = new Map(devices.map((d) => [d.id, d.name]));
  const recent = events.slice(-25).reverse();
  return h("section", { class: "panel" }, h("h2", {}, "Activity"),
    recent.length ? h("ol", { class: "events" }, ...recent.map((e) => h("li", { "data-kind": e.kind },
      ago(e.at), " ", h("span", { class: "kind" }, (EVENT_TEXT[e.kind] || ((x) => x.kind.replaceAll("_", " ")))(e)),
      e.device_id ? h("span", { class: "muted" }, ` · ${names.get(e.device_id) || fmt.shortId(e.device_id)}`) : null)))
      : h("p", { class: "empty" }, "Nothing yet."));
}

async function loadEvents(runId, gen) {
  const s = state.events && state.events.runId === runId ? state.events : (state.events = { runId, after: 0, list: [] });
  for (let page = 0; page < 20; page += 1) {
    const got = await api(`/events?run_id=${runId}&after_id=${s.after}&limit=1000`);
    if (gen !== state.gen) return s.list;
    s.list.push(...got.data);
    if (got.data.length) s.after = got.data.at(-1).id;
    if (got.data.length < 1000) break;
  }
  if (s.list.length > 500) s.list = s.list.slice(-500);
  return s.list;
}

async function showRun(main, gen, runId) {
  const [run, rounds, metrics, evaluations, devices] = await Promise.all([
    api(`/runs/${runId}`), api(`/runs/${runId}/rounds`), api(`/runs/${runId}/metrics`),
    api(`/runs/${runId}/evaluations`), api("/devices"),
  ]);
  const current = rounds.data.at(-1);
  const detail = current ? await api(`/runs/${runId}/rounds/${current.index}`) : null;
  const events = await loadEvents(runId, gen);
  if (gen !== state.gen) return;
  state.devices = devices.data;
  state.run = run;
  document.title = `${run.name} · FedDetox coordinator`;
  if (!$("#run-grid", main)) {
    main.replaceChildren(h("div", { id: "run-top" }), h("div", { class: "charts", id: "run-grid" }), h("div", { id: "run-bottom" }));
  }
  const top = $("#run-top", main), grid = $("#run-grid", main), bottom = $("#run-bottom", main);
  put(top, "run-head", [run.name, run.status, run.config, run.failure, run.id, Boolean(adminKey())], () => runHead(run));
  const nowData = { run, rounds: rounds.data, detail: detail && { index: detail.index, assignments: detail.assignments }, devices: devices.data.map((d) => ({ id: d.id, name: d.name, last_seen_at: Math.floor(d.last_seen_at / 10) * 10 })), evaluations: evaluations.data };
  put(top, "run-now", nowData, () => nowPanel({ ...nowData, devices: devices.data }));
  put(grid, "run-charts-eval", evaluations.data, (ev) => h("div", { class: "chart-group" }, ...evalCharts(ev, runId)));
  put(grid, "run-charts-train", [metrics.data, rounds.data.map((r) => [r.index, r.status, r.selected])],
    () => h("div", { class: "chart-group" }, ...trainingCharts(metrics.data, rounds.data)));
  put(bottom, "run-rounds", { rounds: rounds.data, metrics: metrics.data, status: run.status, total: run.config.rounds },
    () => timeline({ rounds: rounds.data, metrics: metrics.data, run }));
  const assignments = detail ? detail.assignments : [];
  put(bottom, "run-devices", [devices.data, assignments, Math.floor(clock.now() / 30)], () => devicesTable(devices.data, assignments));
  put(bottom, "run-events", [events.length ? events.at(-1).id : 0, devices.data.length], () => eventsList(events, devices.data));
}

// --- devices ------------------------------------------------------------------------------------------------

function tokensTable(tokens) {
  if (tokens === null) {
    return h("section", { class: "panel" }, h("h2", {}, "Enrolment tokens"),
      h("p", { class: "muted" }, "Enter the admin key to see the enrolment tokens."));
  }
  const now = clock.now();
  return h("section", { class: "panel" }, h("h2", {}, "Enrolment tokens"), tokens.length ? h("div", { class: "scroll" },
    h("table", { class: "data tokens" },
      h("thead", {}, h("tr", {}, ...["Note", "Issued", "State", "Device"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...[...tokens].reverse().map((t) => h("tr", {},
        h("th", { scope: "row" }, t.note || h("span", { class: "muted" }, "(no note)")),
        h("td", {}, ago(t.created_at)),
        h("td", {}, t.used_at ? badge("used") : t.expires_at < now ? badge("expired") : h("span", {}, badge("open"), " ",
          h("span", { class: "muted small" }, `expires ${fmt.relative(t.expires_at, now)}`))),
        h("td", {}, t.device_id ? fmt.shortId(t.device_id) : "—"))))))
    : h("p", { class: "empty" }, "No token issued yet."));
}

async function showDevices(main, gen) {
  const devices = await api("/devices");
  let tokens = null;
  if (adminKey()) {
    try { tokens = (await api("/enrolment-tokens", { admin: true })).data; } catch (err) { if (!(err instanceof ApiError && err.status === 401)) throw err; }
  }
  if (gen !== state.gen) return;
  state.devices = devices.data;
  document.title = "Devices · FedDetox coordinator";
  if (!$("#devices-head", main)) {
    main.replaceChildren(h("div", { class: "page-head", id: "devices-head" }, h("h1", {}, "Devices"),
      h("div", { class: "actions" }, actionButton("Enrolment token", "token", { class: "primary" }))));
  }
  put(main, "devices-table", [devices.data, Math.floor(clock.now() / 30)], () => devicesTable(devices.data));
  put(main, "devices-tokens", tokens, tokensTable);
}

// --- routing, polling, ticking ------------------------------------------------------------------------------

function parseRoute() {
  const path = location.hash.replace(/^#/, "") || "/";
  const run = path.match(/^\/runs\/([0-9a-f]{1,64})$/);
  if (run) return { name: "run", id: run[1] };
  if (path === "/devices") return { name: "devices" };
  return { name: "runs" };
}

async function refresh() {
  const gen = state.gen;
  const main = $("#main");
  const route = state.view;
  try {
    if (route.name === "run") await showRun(main, gen, route.id);
    else if (route.name === "devices") await showDevices(main, gen);
    else await showRuns(main, gen);
    if (gen !== state.gen) return;
    state.lastOk = clock.now();
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    setLive(true);
  } catch (err) {
    if (gen !== state.gen) return;
    if (err instanceof ApiError && err.status === 404 && route.name === "run") {
      main.replaceChildren(h("h1", {}, "Run not found"), h("p", {}, err.message, " ", h("a", { href: "#/" }, "All runs")));
      state.cache.clear();
      return;
    }
    setLive(false, err.message);
  }
}

function setLive(ok, message) {
  const live = $("#live");
  live.dataset.ok = ok ? "1" : "0";
  live.replaceChildren(h("span", { class: "pulse", "aria-hidden": "true" }),
    ok ? h("span", {}, "Live · updated ", h("span", { "data-ts": state.lastOk }, fmt.relative(state.lastOk, clock.now())))
      : h("span", {}, `Offline, retrying: ${message}`));
}

async function loop(gen) {
  await refresh();
  if (gen === state.gen) state.timer = setTimeout(() => loop(gen), POLL_MS);
}

function navigate() {
  clearTimeout(state.timer);
  state.gen += 1;
  state.view = parseRoute();
  state.cache.clear();
  const main = $("#main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  main.dataset.view = state.view.name;
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = a.dataset.nav === (state.view.name === "run" ? "runs" : state.view.name);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  loop(state.gen);
}

function refreshNow() {
  clearTimeout(state.timer);
  state.gen += 1;
  return loop(state.gen);
}

function tick() {
  const t = clock.now();
  for (const el of document.querySelectorAll("[data-ts]")) el.textContent = fmt.relative(Number(el.dataset.ts), t);
  for (const el of document.querySelectorAll("[data-deadline]")) el.textContent = deadlineText(Number(el.dataset.deadline));
}

// --- operator actions ---------------------------------------------------------------------------------------

const VERBS = { start: "start this run", pause: "pause this run", resume: "resume this run", stop: "stop this run" };
const DONE = { start: "Run started.", pause: "Run paused: devices get no tasks and the deadline waits.", resume: "Run resumed.", stop: "Run stopped." };

async function runAction(action, button) {
  const run = state.run;
  if (!run) return;
  if (action === "stop" && !window.confirm(`Stop run “${run.name}” for good? Its open round is cancelled.`)) return;
  button.disabled = true;
  try {
    await api(`/runs/${run.id}/${action}`, { method: "POST" });
    notify(DONE[action]);
    await refreshNow();
  } catch (err) {
    refused(VERBS[action], err);
    button.disabled = false;
  }
}

function openDialog(dialog) {
  for (const el of dialog.querySelectorAll(".error")) el.hidden = true;
  dialog.showModal();
}

function openKeyDialog() {
  const dialog = $("#key-dialog");
  $("#key-input").value = adminKey();
  openDialog(dialog);
  $("#key-input").focus();
}

function showError(el, message) {
  el.textContent = message;
  el.hidden = false;
}

const RUN_TEMPLATE = {
  name: "my-run",
  base_model: "smollm2-135m-instruct",
  lora: { r: 8, alpha: 16, target_modules: ["q_proj", "v_proj"] },
  rounds: 3,
  clients_per_round: 3,
  min_clients: 2,
  round_deadline_s: 600,
  aggregation: { rule: "fedavg" },
  training: { beta: 0.1, learning_rate: 0.0005, local_steps: 10 },
  sanitization_policy: "replace",
};

async function createRun(event) {
  event.preventDefault();
  const error = $("#run-error");
  error.hidden = true;
  let config;
  try {
    config = JSON.parse($("#run-config").value);
  } catch (err) {
    showError(error, `The config is not valid JSON: ${err.message}`);
    return;
  }
  const file = $("#run-adapter").files[0];
  const submit = $("#run-form button[type=submit]");
  submit.disabled = true;
  let step = "create the run";
  try {
    const run = await api("/runs", { method: "POST", json: config });
    if (file) {
      step = `upload ${file.name} as its starting adapter (the run ${run.id} exists)`;
      await api(`/runs/${run.id}/adapter`, { method: "PUT", bytes: await file.arrayBuffer() });
      if ($("#run-start").checked) {
        step = `start run ${run.id}`;
        await api(`/runs/${run.id}/start`, { method: "POST" });
      }
    }
    $("#run-dialog").close();
    notify(file ? `Run “${run.name}” created.` : `Run “${run.name}” created; upload its starting adapter to start it.`);
    location.hash = `#/runs/${run.id}`;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showError(error, `Refused: creating a run needs the admin key (${err.message}).`);
    } else {
      showError(error, `Could not ${step}: ${err.message}`);
    }
  } finally {
    submit.disabled = false;
  }
}

async function issueToken(event) {
  event.preventDefault();
  const error = $("#token-error");
  error.hidden = true;
  const body = { note: $("#token-note").value };
  const hours = Number($("#token-ttl").value);
  if ($("#token-ttl").value && hours > 0) body.ttl_s = Math.round(hours * 3600);
  try {
    const issued = await api("/enrolment-tokens", { method: "POST", json: body });
    $("#token-value").value = issued.token;
    $("#token-expiry").textContent = `Valid until ${fmt.datetime(issued.expires_at)}; it enrols one device.`;
    $("#token-result").hidden = false;
    $("#token-value").focus();
    $("#token-value").select();
    if (state.view.name === "devices") refreshNow();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showError(error, `Refused: issuing an enrolment token needs the admin key (${err.message}).`);
    } else {
      showError(error, `Could not issue a token: ${err.message}`);
    }
  }
}

async function saveKey(event) {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  const error = $("#key-error");
  if (!key) { showError(error, "Enter the key, or Forget key to stay read-only."); return; }
  try {
    await api("/enrolment-tokens", { admin: true, key }); // a read that needs the key: checks it, changes nothing
  } catch (err) {
    showError(error, err instanceof ApiError && err.status === 401 ? "The coordinator refused this key." : `Could not check the key: ${err.message}`);
    return;
  }
  setAdminKey(key);
  $("#key-dialog").close();
  notify("Admin key accepted: operator actions are on for this tab.");
}

function updateKeyButton() {
  const button = $("#key-button");
  const on = Boolean(adminKey());
  button.replaceChildren(on ? "Operator" : "Read-only");
  button.dataset.mode = on ? "operator" : "read-only";
  button.setAttribute("aria-label", on ? "Operator mode: admin key set; change or forget it" : "Read-only: enter the admin key");
  document.body.dataset.mode = on ? "operator" : "read-only";
}

// --- theme --------------------------------------------------------------------------------------------------

const THEMES = ["auto", "light", "dark"];

function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  const button = $("#theme-button");
  button.textContent = `Theme: ${theme}`;
  button.setAttribute("aria-label", `Theme: ${theme}; change`);
}

function storedTheme() {
  try { return localStorage.getItem("feddetox.theme") || "auto"; } catch { return "auto"; }
}

// --- start --------------------------------------------------------------------------------------------------

function start() {
  applyTheme(storedTheme());
  $("#theme-button").addEventListener("click", () => {
    const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
    try { localStorage.setItem("feddetox.theme", next); } catch { /* kept for this page only */ }
    applyTheme(next);
  });
  $("#key-button").addEventListener("click", openKeyDialog);
  $("#key-form").addEventListener("submit", saveKey);
  $("#key-forget").addEventListener("click", () => { setAdminKey(""); $("#key-dialog").close(); notify("Admin key forgotten: read-only."); });
  $("#run-form").addEventListener("submit", createRun);
  $("#token-form").addEventListener("submit", issueToken);
  $("#token-copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("#token-value").value); notify("Token copied."); } catch { $("#token-value").select(); }
  });
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  window.addEventListener("adminkey", () => { updateKeyButton(); state.cache.clear(); refreshNow(); });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "new-run") {
      if (!$("#run-config").value) $("#run-config").value = JSON.stringify(RUN_TEMPLATE, null, 2);
      openDialog($("#run-dialog"));
    } else if (action === "token") {
      $("#token-result").hidden = true;
      $("#token-value").value = "";
      openDialog($("#token-dialog"));
    } else {
      runAction(action, button);
    }
  });
  window.addEventListener("hashchange", () => { navigate(); $("#main").focus({ preventScroll: true }); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshNow(); });
  updateKeyButton();
  navigate();
  setInterval(tick, 1000);
}

start();
