// The live funnel page: polls the worker's JSON API (README.md, "The JSON API") and redraws in place.
// Plain JavaScript, no dependencies, nothing loaded from elsewhere. Every value shown comes
// from the API; selections live in the URL (?range=1h&channel=ads&stall=1d) so links share them.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace name, not a download
  const state = { cfg: null, range: null, channel: null, stall: null, latest: 0, busy: false, shown: 0 };

  // -- small helpers ------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([k, v]) => {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    });
    children.forEach((c) => node.append(c));
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }
  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtPct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%");
  function fmtDur(s) { // same wording as `funnel report`
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 10) return s.toFixed(1).replace(/\.0$/, "") + "s";
    s = Math.round(s);
    const units = [["d", 86400, "h", 3600], ["h", 3600, "m", 60], ["m", 60, "s", 1]];
    for (const [u, size, sub, subSize] of units) {
      if (s >= size) {
        const minor = Math.floor((s % size) / subSize);
        return Math.floor(s / size) + u + (minor ? " " + minor + sub : "");
      }
    }
    return s + "s";
  }
  function fmtTime(iso, withDate) { // local time, short: "14:05" or "Nov 23, 14:00"
    const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (withDate) Object.assign(opts, { month: "short", day: "numeric" });
    return new Date(iso).toLocaleString(undefined, opts);
  }
  function fmtAgo(seconds) {
    return seconds === null || seconds === undefined ? "" : fmtDur(Math.max(0, seconds)) + " ago";
  }

  async function getJSON(path, params) {
    const url = path + (params ? "?" + new URLSearchParams(params) : "");
    const resp = await fetch(url, { cache: "no-store" });
    let body = {};
    try { body = await resp.json(); } catch (e) { /* not JSON: reported below */ }
    if (!resp.ok) throw new Error(body.error || url + ": HTTP " + resp.status);
    return body;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // -- controls -----------------------------------------------------------------------------
  function fillSelect(id, options, value) {
    const select = document.getElementById(id);
    select.replaceChildren(...options.map((o) => el("option", { value: o.key, text: o.label })));
    select.value = value;
    select.addEventListener("change", () => {
      state[id] = select.value;
      const url = new URL(location.href);
      url.searchParams.set(id, select.value);
      history.replaceState(null, "", url);
      refresh(true);
    });
  }

  function pick(params, name, allowed, fallback) {
    const wanted = params.get(name);
    return allowed.includes(wanted) ? wanted : fallback;
  }

  // -- rendering ----------------------------------------------------------------------------
  function renderFunnel(card, report) {
    const rows = report.stages;
    const first = rows.length ? rows[0].users : 0;
    const widest = Math.max(first, ...rows.map((r) => r.users));
    const list = card.querySelector(".stages");
    const parts = [];
    rows.forEach((r, i) => {
      if (i > 0) {
        parts.push(el("div", { class: "step", "data-from": rows[i - 1].stage, "data-to": r.stage },
          "↓ ", el("span", { class: "conv", text: fmtPct(r.step_conversion) }),
          " " + rows[i - 1].stage + " → " + r.stage));
      }
      const width = widest ? (100 * r.users) / widest : 0;
      const bar = el("div", { class: r.users ? "bar" : "bar empty", title: fmtInt(r.users) + " users" });
      bar.style.width = width.toFixed(2) + "%";
      parts.push(el("div", { class: "stage", "data-stage": r.stage, role: "row" },
        el("span", { class: "name", text: r.stage, title: r.stage }),
        el("span", { class: "users", text: fmtInt(r.users) }),
        el("div", { class: "track" }, bar),
        el("span", { class: "overall", text: fmtPct(r.overall_conversion) }),
        el("span", { class: "cohort", text: fmtPct(r.cohort_conversion),
          title: fmtInt(r.cohort_users) + " of " + fmtInt(report.cohort_size) })));
    });
    list.replaceChildren(...parts);
    card.querySelector(".period").textContent = report.range_label +
      (report.channel === "all" ? ", all channels" : ", channel " + report.channel);
    const firstStage = rows.length ? rows[0].stage : "";
    card.querySelector(".summary").replaceChildren(
      "Overall conversion ", el("b", { class: "overall-conversion", text: fmtPct(report.overall_conversion) }),
      " (period ratio) · cohort ", el("b", { class: "cohort-conversion", text: fmtPct(report.cohort_conversion) }),
      " of the " + fmtInt(report.cohort_size) + " who entered " + firstStage + " in the period");
    renderTimes(card, report.time_to_convert);
  }

  function renderTimes(card, ttc) {
    const body = card.querySelector(".ttc tbody");
    if (!ttc.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty-note", colSpan: 5, text: "no transitions in the period" })));
      return;
    }
    body.replaceChildren(...ttc.map((t) => el("tr", { "data-from": t.from_stage, "data-to": t.to_stage },
      el("td", { text: t.from_stage + " → " + t.to_stage }),
      el("td", { class: "num", text: fmtInt(t.transitions) }),
      el("td", { class: "num p50", text: fmtDur(t.p50_seconds) }),
      el("td", { class: "num", text: fmtDur(t.p90_seconds) }),
      el("td", { class: "num", text: fmtDur(t.avg_seconds) }))));
  }

  function renderStalled(card, stalled) {
    card.querySelector(".stall-note").textContent = "no new stage for more than " +
      (state.cfg.stall_after.find((s) => s.key === stalled.after) || { label: stalled.after }).label;
    card.querySelector(".stalled tbody").replaceChildren(...stalled.stages.map((s) =>
      el("tr", { "data-stage": s.stage }, el("td", { text: s.stage }),
        el("td", { class: "num users", text: fmtInt(s.users) }))));
  }

  function renderTrend(card, trend) {
    const box = card.querySelector(".trend");
    const buckets = trend.buckets;
    const first = trend.stages[0];
    const W = 320, H = 120, L = 34, R = 6, T = 8, B = 18;
    const series = (key) => buckets.map((b) => b[key]);
    const period = series("period_conversion"), cohort = series("cohort_conversion");
    const volume = buckets.map((b) => b.entries[first]);
    const top = Math.max(0, ...period.filter((v) => v !== null), ...cohort.filter((v) => v !== null));
    const yMax = top > 0 ? top * 1.1 : 0.01;
    const vMax = Math.max(1, ...volume);
    const n = buckets.length;
    const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : (W - L - R) / 2);
    const y = (v) => T + (H - T - B) * (1 - v / yMax);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "conversion trend" });
    const step = n > 1 ? (W - L - R) / (n - 1) : W - L - R;
    volume.forEach((v, i) => {
      if (!v) return;
      const h = ((H - T - B) * v) / vMax;
      const r = svg("rect", { class: "vol", x: x(i) - step * 0.35, y: H - B - h, width: step * 0.7, height: h });
      r.append(svg("title"));
      r.firstChild.textContent = `${fmtTime(buckets[i].start, true)}: ${fmtInt(v)} ${first}`;
      chart.append(r);
    });
    chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    chart.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    [[yMax, T + 4], [0, H - B]].forEach(([v, yy]) => {
      const t = svg("text", { class: "label", x: L - 3, y: yy, "text-anchor": "end" });
      t.textContent = fmtPct(v);
      chart.append(t);
    });
    if (n) {
      const withDate = trend.bucket_seconds >= 3600;
      [[0, "start"], [n - 1, "end"]].forEach(([i, anchor]) => {
        const t = svg("text", { class: "label", x: x(i), y: H - 5, "text-anchor": anchor });
        t.textContent = fmtTime(buckets[i].start, withDate);
        chart.append(t);
      });
    }
    [[period, "period"], [cohort, "cohort"]].forEach(([values, cls]) => {
      let points = [];
      const flush = () => {
        if (points.length > 1) chart.append(svg("polyline", { class: cls, points: points.join(" ") }));
        if (points.length === 1) {
          const [cx, cy] = points[0].split(",");
          chart.append(svg("circle", { class: cls, cx, cy, r: 1.5 }));
        }
        points = [];
      };
      values.forEach((v, i) => (v === null ? flush() : points.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`)));
      flush();
    });
    const legend = el("div", { class: "legend" },
      el("span", { class: "sw" }), "period ratio", el("span", { class: "sw cohort" }), "cohort",
      el("span", { class: "sw vol" }), first + " per " + fmtDur(trend.bucket_seconds));
    box.replaceChildren(chart, legend);
    card.querySelector(".trend-note").textContent = first + " → " + trend.stages[trend.stages.length - 1];
  }

  function renderHealth(h) {
    const set = (key, text, warn, title) => {
      const tile = document.querySelector(`[data-health="${key}"]`);
      tile.querySelector(".v").textContent = text;
      tile.classList.toggle("warn", Boolean(warn));
      tile.title = title || "";
    };
    set("events_per_second", h.events_per_second === null ? "–" : h.events_per_second.toFixed(1));
    set("dead_letter_total", fmtInt(h.dead_letter_total), h.dead_letter_total > 0);
    set("last_event_time", h.last_event_time ? new Date(h.last_event_time).toLocaleTimeString() : "none yet", false,
      h.last_event_time ? h.last_event_time + " (" + fmtAgo(h.last_event_age_seconds) + ")" : "");
    set("consumer_lag", h.consumer_lag === null ? "unknown" : fmtInt(h.consumer_lag));
    set("sink_backlog_rows", fmtInt(h.sink_backlog_rows) + " rows", h.sink_errors_total > 0,
      fmtInt(h.sink_errors_total) + " write errors so far");
    set("ready", h.ready ? "consuming" : "starting", !h.ready, h.app_id);
  }

  // -- refresh ------------------------------------------------------------------------------
  async function refresh(changed) {
    if (state.busy && !changed) return; // the previous poll is still out: skip this tick
    const gen = ++state.latest;
    state.busy = true;
    const sel = { range: state.range, channel: state.channel };
    try {
      const health = getJSON("api/health");
      const perFunnel = state.cfg.funnels.map((f) => Promise.all([
        getJSON("api/funnel", { funnel: f.name, ...sel }),
        getJSON("api/trend", { funnel: f.name, ...sel }),
        getJSON("api/stalled", { funnel: f.name, channel: state.channel, after: state.stall }),
      ]));
      const [h, ...results] = await Promise.all([health, ...perFunnel]);
      if (gen !== state.latest) return; // a newer selection is on its way
      renderHealth(h);
      results.forEach(([report, trend, stalled], i) => {
        const card = document.querySelector(`[data-funnel="${CSS.escape(state.cfg.funnels[i].name)}"]`);
        renderFunnel(card, report);
        renderTrend(card, trend);
        renderStalled(card, stalled);
      });
      showError("");
      state.shown += 1;
      Object.assign(document.body.dataset, { range: sel.range, channel: sel.channel, stall: state.stall,
        refreshes: String(state.shown) });
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() +
        " · every " + state.cfg.refresh_seconds + " s";
    } catch (err) {
      if (gen === state.latest) showError("Could not refresh: " + err.message);
    } finally {
      if (gen === state.latest) state.busy = false;
    }
  }

  async function start() {
    let cfg;
    try {
      cfg = await getJSON("api/config");
    } catch (err) {
      showError("Cannot load the configuration: " + err.message + " (retrying)");
      setTimeout(start, 5000);
      return;
    }
    state.cfg = cfg;
    const params = new URLSearchParams(location.search);
    state.range = pick(params, "range", cfg.ranges.map((r) => r.key), cfg.default_range);
    state.channel = pick(params, "channel", cfg.channels, "all");
    state.stall = pick(params, "stall", cfg.stall_after.map((s) => s.key), cfg.default_stall);
    fillSelect("range", cfg.ranges, state.range);
    fillSelect("channel", cfg.channels.map((c) => ({ key: c, label: c === "all" ? "all channels" : c })),
      state.channel);
    fillSelect("stall", cfg.stall_after, state.stall);
    const template = document.getElementById("funnel-card");
    document.getElementById("funnels").replaceChildren(...cfg.funnels.map((f) => {
      const card = template.content.firstElementChild.cloneNode(true);
      card.dataset.funnel = f.name;
      card.querySelector(".name").textContent = f.name;
      // Stage names are configured (up to 64 characters, not only event types): the name
      // column fits the longest, within limits; a longer one is cut with an ellipsis (full in its title).
      const longest = Math.max(...f.stages.map((s) => s.length));
      card.style.setProperty("--name-w", `clamp(110px, ${(1.15 * longest).toFixed(1)}ch, 260px)`);
      return card;
    }));
    if (!cfg.clickhouse) showError("This worker reads no ClickHouse: only pipeline health is shown.");
    await refresh(true);
    setInterval(() => refresh(false), cfg.refresh_seconds * 1000);
  }

  start();
})();
