// The status page's script (api/page.py): asks the API once a second and draws what it says.
//
// Security: every name, reason and message reaches the page through textContent (or an
// attribute set with setAttribute), never as markup: names come from whoever writes the share.
// The token is kept in this tab's sessionStorage and sent only as a bearer header to this
// origin; it never goes into a URL, a cookie or the page.
"use strict";

(function () {
  const TOKEN_KEY = "nfs-watcher-uploader.api-token";
  const REQUEST_TIMEOUT_MS = 10000;
  // The parked list is read from NFS (a page's worth): asked again when the count of parked
  // files changes (at most every PARKED_MIN_MS: many files parking at once), after a retry or
  // a dismissal, and at least every PARKED_EVERY_MS.
  const PARKED_EVERY_MS = 15000;
  const PARKED_MIN_MS = 3000;
  const PARKED_SHOWN = 200;
  const SESSIONS_ENDED_SHOWN = 10;
  const ARMED_MS = 5000;
  const SEEN_RATES_KEPT = 300;

  const body = document.body;
  const refreshMs = Math.max(250, Number(body.dataset.refreshMs) || 1000);
  const tokenRequired = body.dataset.tokenRequired === "true";
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY);
  let timer = null;
  let running = false;
  let busy = false;
  let parkedBusy = false;
  let parkedAsked = 0;
  let parkedCount = -1;
  const seenRates = [];

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // --- drawing helpers: text only ---------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function cell(text, className) {
    return el("td", text, className);
  }

  function emptyRow(text) {
    const row = document.createElement("tr");
    row.append(cell(text, "empty"));
    return row;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 2 : 1)) + " " + units[unit];
  }

  function rate(n) {
    return n > 0 ? bytes(Math.round(n)) + "/s" : "-";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function bar(done, total) {
    const node = document.createElement("progress");
    node.max = total > 0 ? total : 1;
    node.value = total > 0 ? Math.min(done, total) : 0;
    return node;
  }

  function percent(done, total) {
    return total > 0 ? Math.floor((100 * Math.min(done, total)) / total) + " %" : "";
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  let sayTimer = 0;

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = kind === "info" ? "info" : "";
    show(box, Boolean(text));
    window.clearTimeout(sayTimer);
    if (kind === "info" && text) sayTimer = window.setTimeout(() => say("", ""), 10000);
  }

  function chip(node, text, kind) {
    node.textContent = text;
    node.className = "chip " + kind;
  }

  // --- the API -----------------------------------------------------------------------------

  async function api(method, path, payload) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const init = {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let answer;
    try {
      answer = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "The service does not answer (" + error.name + "); trying again.");
    }
    let data = null;
    try {
      data = await answer.json();
    } catch (error) {
      data = null;
    }
    if (!answer.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : answer.statusText;
      throw new ApiError(answer.status, detail || "HTTP " + answer.status);
    }
    return data;
  }

  // --- signing in and out ------------------------------------------------------------------

  function signedOut(why) {
    stop();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    show($("main"), false);
    show($("sign-out"), false);
    show($("sign-in"), true);
    say(why, "error");
    $("token").value = "";
    $("token").focus();
  }

  function refused(error) {
    if (token) {
      signedOut(
        "The API refused this token (401: " + error.message + "). Sign in with the token " +
          "the service was started with: APP_API_TOKEN, or the content of APP_API_TOKEN_FILE " +
          "(in Kubernetes, the Secret nfs-watcher-uploader-api-token)."
      );
    } else {
      signedOut("This service needs its API token to show its state. Sign in below.");
    }
  }

  $("sign-in").addEventListener("submit", function (event) {
    event.preventDefault();
    const typed = $("token").value.trim();
    $("token").value = "";
    if (!typed) return;
    token = typed;
    sessionStorage.setItem(TOKEN_KEY, token);
    show($("sign-in"), false);
    say("", "");
    start();
  });

  $("sign-out").addEventListener("click", function () {
    signedOut("Signed out: the token is forgotten in this tab.");
    say("Signed out: the token is forgotten in this tab.", "info");
  });

  // --- drawing the state -------------------------------------------------------------------

  function drawHealth(status) {
    chip(
      $("health"),
      status.healthy ? "healthy" : "unhealthy: " + (status.health_detail || ""),
      status.healthy ? "ok" : "bad"
    );
    chip($("ready"), status.ready ? "ready" : "not ready: " + status.phase, status.ready ? "ok" : "warn");
  }

  function sessionRow(s) {
    const row = document.createElement("tr");
    row.dataset.session = s.session_name;
    row.append(cell(s.session_name, "name"), cell(s.state, "state-" + s.state));
    const total = s.bytes_done + s.bytes_remaining;
    const drained = s.state === "drained";
    const progress = cell("", "num progress");
    progress.append(
      bar(drained && total === 0 ? 1 : s.bytes_done, drained && total === 0 ? 1 : total),
      el("span", " " + (drained && total === 0 ? "100 %" : percent(s.bytes_done, total))),
      el("span", " " + bytes(s.bytes_done) + " of " + bytes(total), "muted")
    );
    row.append(progress);
    const counts = [
      s.uploaded + " uploaded",
      s.waiting + " waiting",
      s.in_flight + " in flight",
      s.retrying + " retrying",
      s.failed + " parked",
    ];
    if (s.dismissed) counts.push(s.dismissed + " dismissed");
    row.append(cell(counts.join(" · "), "counts"));
    row.append(cell(rate(s.rate_bytes_per_second), "num"));
    row.append(cell(s.state === "drained" ? "done" : duration(s.eta_seconds), "num eta"));
    return row;
  }

  function drawSessions(list, endedTotal) {
    const watched = list.filter((s) => s.state === "active" || s.state === "draining");
    const ended = list
      .filter((s) => s.state !== "active" && s.state !== "draining")
      .sort((a, b) => (b.stopped_at || b.started_at) - (a.stopped_at || a.started_at));
    const shown = watched.concat(ended.slice(0, SESSIONS_ENDED_SHOWN));
    const rows = shown.map(sessionRow);
    if (!rows.length) rows.push(emptyRow("No session yet: POST /v1/watch/start starts one."));
    $("sessions-body").replaceChildren(...rows);
    const hidden = Math.max(endedTotal, ended.length) - Math.min(ended.length, SESSIONS_ENDED_SHOWN);
    $("sessions-more").textContent = hidden > 0 ? hidden + " older sessions not shown (GET /v1/sessions)" : "";
  }

  function step(f) {
    if (f.state !== "retrying") return f.state + (f.attempt > 1 ? " (attempt " + f.attempt + ")" : "");
    return "retrying: attempt " + f.attempt + " in " + duration(f.next_attempt_in_s) + (f.last_error ? " - " + f.last_error : "");
  }

  function drawFiles(status) {
    const rows = status.files_in_flight.map(function (f) {
      const row = document.createElement("tr");
      row.append(cell(f.session_name, "name"), cell(f.path, "name"), cell(step(f), "state-" + f.state));
      const progress = cell("", "num progress");
      if (f.size !== null) {
        progress.append(
          bar(f.bytes_sent, f.size),
          el("span", " " + percent(f.bytes_sent, f.size)),
          el("span", " " + bytes(f.bytes_sent) + " of " + bytes(f.size), "muted")
        );
      } else {
        progress.textContent = bytes(f.bytes_sent) + " sent";
      }
      row.append(progress, cell(rate(f.rate_bytes_per_second), "num"));
      return row;
    });
    if (!rows.length) rows.push(emptyRow("Nothing in flight."));
    $("files-body").replaceChildren(...rows);
    $("files-count").textContent = "(" + status.files_in_flight_total + ")";
    const more = status.files_in_flight_total - status.files_in_flight.length;
    $("files-more").textContent = more > 0 ? more + " more not shown" : "";
  }

  function drawBandwidth(b) {
    $("rate").textContent = rate(b.rate_bytes_per_second);
    $("limit").textContent = b.limit === "off" ? "none" : b.limit + "/s";
    $("limit-source").textContent =
      "(" + b.source + (b.schedule_entry ? ": " + b.schedule_entry : "") + ")";
    // The service's history (a point every 5 s over 10 min); until it has a few points, what
    // this page has seen since it opened.
    seenRates.push(b.rate_bytes_per_second);
    if (seenRates.length > SEEN_RATES_KEPT) seenRates.shift();
    const points =
      b.history.length >= 6 ? b.history.map((p) => p[1]).concat([b.rate_bytes_per_second]) : seenRates.slice();
    if (points.length < 2) points.unshift(0);
    const top = Math.max(1, ...points);
    const width = 600;
    const height = 60;
    const stepX = points.length > 1 ? width / (points.length - 1) : width;
    const coords = points.map(function (value, i) {
      const x = (i * stepX).toFixed(1);
      const y = (height - 2 - (value / top) * (height - 4)).toFixed(1);
      return x + "," + y;
    });
    $("spark-line").setAttribute("points", coords.join(" "));
    const seconds = b.history.length >= 6 ? b.history.length * b.history_step_s : (seenRates.length * refreshMs) / 1000;
    $("spark-caption").textContent =
      "Rate over the last " + duration(seconds) + "; peak " + rate(top);
  }

  function retryButton(p) {
    const button = el("button", "Retry");
    button.type = "button";
    button.addEventListener("click", async function () {
      button.disabled = true;
      try {
        const answer = await api("POST", "/v1/files/retry", {
          session_name: p.session_name,
          parked_as: p.parked_as,
        });
        say("Requeued " + answer.requeued + " file(s): " + p.filename, "info");
        parkedAsked = 0;
      } catch (error) {
        failed(error, "Retry of " + p.filename);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  function dismissButton(p) {
    const button = el("button", "Dismiss");
    button.type = "button";
    let armed = 0;
    button.addEventListener("click", async function () {
      if (!armed) {
        // Two clicks: a dismissed file is not in storage, and leaves the parked folder.
        armed = window.setTimeout(function () {
          armed = 0;
          button.textContent = "Dismiss";
          button.classList.remove("armed");
        }, ARMED_MS);
        button.textContent = "Really dismiss?";
        button.classList.add("armed");
        return;
      }
      window.clearTimeout(armed);
      armed = 0;
      button.disabled = true;
      const path =
        "/v1/files/failed/" +
        encodeURIComponent(p.session_name) +
        "/" +
        p.parked_as.split("/").map(encodeURIComponent).join("/") +
        "?date_prefix=" +
        encodeURIComponent(p.date_prefix);
      try {
        await api("DELETE", path);
        say("Dismissed " + p.filename + " (it is not in storage; the manifest says so).", "info");
        parkedAsked = 0;
      } catch (error) {
        failed(error, "Dismissing " + p.filename);
        button.disabled = false;
        button.textContent = "Dismiss";
        button.classList.remove("armed");
      }
    });
    return button;
  }

  function drawParked(files, count) {
    const rows = files.map(function (p) {
      const row = document.createElement("tr");
      row.dataset.parkedAs = p.parked_as;
      const name = p.parked_as === p.filename ? p.filename : p.filename + " (parked as " + p.parked_as + ")";
      row.append(cell(p.session_name, "name"), cell(name, "name"), cell(p.reason, "reason"));
      const actions = cell("", "actions");
      actions.append(retryButton(p), dismissButton(p));
      row.append(actions);
      return row;
    });
    if (!rows.length) rows.push(emptyRow("No parked files."));
    $("parked-body").replaceChildren(...rows);
    const total = Math.max(count, files.length);
    $("parked-count").textContent = "(" + total + ")";
    const more = total - files.length;
    $("parked-more").textContent = more > 0 ? more + " more not shown (GET /v1/files/failed)" : "";
  }

  function failed(error, what) {
    if (error.status === 401) {
      refused(error);
      return;
    }
    say(what + " failed: " + (error.status ? error.status + " " : "") + error.message, "error");
  }

  // --- the loop ----------------------------------------------------------------------------

  async function refresh() {
    const [status, sessions, bandwidth] = await Promise.all([
      api("GET", "/v1/status"),
      api("GET", "/v1/sessions?ended=" + SESSIONS_ENDED_SHOWN),
      api("GET", "/v1/bandwidth"),
    ]);
    if (!running) return; // signed out meanwhile: nothing of it is drawn
    drawHealth(status);
    drawSessions(sessions.sessions, sessions.ended_total);
    drawFiles(status);
    drawBandwidth(bandwidth);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    show($("main"), true);
    show($("sign-out"), Boolean(token));
    const now = Date.now();
    const changed = status.failed !== parkedCount && now - parkedAsked > PARKED_MIN_MS;
    if (parkedAsked === 0 || changed || now - parkedAsked > PARKED_EVERY_MS) {
      parkedAsked = now;
      parkedCount = status.failed;
      refreshParked(status.failed); // not awaited: a slow NFS holds up this list only
    }
  }

  // The parked list is read from NFS: while NFS is slow or hung, the rest of the page goes on
  // refreshing from memory, and this section says why its list is old.
  async function refreshParked(count) {
    if (parkedBusy) return;
    parkedBusy = true;
    try {
      const parked = await api("GET", "/v1/files/failed?limit=" + PARKED_SHOWN);
      if (!running) return;
      drawParked(parked.files, count);
      $("parked-error").textContent = "";
    } catch (error) {
      if (!running) return;
      if (error.status === 401) {
        refused(error);
        return;
      }
      $("parked-error").textContent =
        "Could not list the parked files: " + (error.status ? error.status + " " : "") + error.message;
      parkedAsked = Date.now() - PARKED_EVERY_MS + PARKED_MIN_MS; // again in PARKED_MIN_MS
    } finally {
      parkedBusy = false;
    }
  }

  async function tick() {
    timer = null;
    if (busy) return;
    busy = true;
    try {
      await refresh();
      if ($("message").className !== "info") say("", "");
    } catch (error) {
      if (!running) return;
      if (error.status === 401) {
        refused(error);
        return;
      }
      if (!error.status) chip($("health"), "unreachable", "bad");
      say("Could not read the state: " + (error.status ? error.status + " " : "") + error.message, "error");
    } finally {
      busy = false;
    }
    if (running && timer === null) timer = window.setTimeout(tick, refreshMs);
  }

  function start() {
    running = true;
    parkedAsked = 0;
    parkedCount = -1;
    if (timer === null) tick();
  }

  function stop() {
    running = false;
    if (timer !== null) window.clearTimeout(timer);
    timer = null;
  }

  $("bandwidth").addEventListener("submit", async function (event) {
    event.preventDefault();
    const value = $("bandwidth-limit").value.trim();
    if (!value) return;
    try {
      const answer = await api("PUT", "/v1/bandwidth", { limit: value });
      say("Bandwidth limit set to " + answer.limit + " (override).", "info");
      $("bandwidth-limit").value = "";
      drawBandwidth(answer);
    } catch (error) {
      failed(error, "Setting the bandwidth limit");
    }
  });

  $("bandwidth-clear").addEventListener("click", async function () {
    try {
      const answer = await api("DELETE", "/v1/bandwidth");
      say("Override cleared: the limit is " + answer.limit + " (" + answer.source + ").", "info");
      drawBandwidth(answer);
    } catch (error) {
      failed(error, "Clearing the bandwidth override");
    }
  });

  if (tokenRequired && !token) {
    signedOut("");
    say("", "");
  } else {
    start();
  }
})();
