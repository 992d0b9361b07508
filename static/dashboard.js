// The userflow dashboard: plain DOM, no framework, no build step.
//
// Built for a store of millions of runs: nothing here ever holds or draws them
// all. The overview (GET /api/overview) is counted by the server over the whole
// store; the runs are a table of one page at a time (GET /api/workflows with a
// cursor, or q= for one run by email or id), and only the runs an operator
// opens get their full detail (steps, attempts, timeline, actions).
//
// It updates live from the Server-Sent Events at /api/events: a `run` event
// updates that run's row in place (or puts a new run on the first page), and
// refetches the detail only of an open run (debounced per run); the overview
// is fetched again at most every two seconds while runs change. `reset` (and
// the first connection) reloads the page of runs and the lists. A one-second
// ticker only rewrites relative times ("3 s ago"); the overview is also
// fetched once a minute, so that its last-hour buckets move on a quiet server.
//
// Everything shown is built with textContent and setAttribute, never
// innerHTML: user names and emails are hostile input.
//
// Who is signed in comes first (GET /api/session): without a session the page
// goes to /signin, and so does any later 401 (signed out elsewhere, session
// expired, account removed). A viewer reads everything but is offered no
// action; the server refuses one anyway (403), and the page shows why.
//
// Webhook deliveries come from GET /api/webhooks/deliveries and then live from
// `delivery` events; their panel stays hidden on a server that has shown none
// (the list is empty both when no webhook URL is configured and before the
// first event).
//
// The nodes panel polls GET /api/nodes every few seconds while the page is
// visible: a heartbeat is no event on the stream, and a dead node sends none.
// Heartbeat ages are the database's (its clock judges the nodes), advanced by
// the time elapsed here since the answer, never by this machine's clock.
"use strict";

(() => {
  const STEP_ORDER = ["create-user", "send-verification-email", "wait-for-verification", "ai-risk-check", "finalize-user"];
  // A row shows its progress from the run's summary, which has no step names.
  const STEP_NAMES = {
    "create-user": "Create user", "send-verification-email": "Send verification email",
    "wait-for-verification": "Wait for verification", "ai-risk-check": "AI risk check", "finalize-user": "Finalize user",
  };
  const PAGE = 50;
  const DETAIL_DEBOUNCE_MS = 120;
  const DETAIL_CONCURRENCY = 4;
  const OVERVIEW_EVERY_MS = 2000;   // at most this often while runs change
  const OVERVIEW_IDLE_MS = 60000;   // and this often anyway: the time buckets move
  const KEEP_SUMMARIES = 2000;      // summaries seen live, beyond which those not shown are forgotten
  const NODES_EVERY_MS = 3000;      // the nodes panel: within this of a node going down (plus its timeout)

  const $ = (sel, root = document) => root.querySelector(sel);

  // -- state -----------------------------------------------------------------------

  const state = {
    runs: new Map(),        // id -> summary (of the runs shown, and of those seen live)
    details: new Map(),     // id -> detail, of open runs only
    detailText: new Map(),  // id -> JSON of the last rendered detail (skip needless re-renders)
    users: new Map(),       // userId -> user
    outbox: [],             // emails, newest first
    outboxEnabled: true,
    filter: "",
    query: "",              // the search shown ("": the list)
    rows: [],               // ids on the page shown, newest first
    pageStart: null,        // the cursor this page starts at (null: the newest runs)
    pageStack: [],          // the starts of the newer pages, for "Newer"
    nextCursor: null,
    pageLoaded: false,
    open: new Set(),        // runs whose detail is open (below their row)
    overview: null,         // GET /api/overview
    runMessages: new Map(), // id -> {text, kind}
    mailMessages: new Map(),// messageId -> {text, kind}
    openTimelines: new Set(),
    loaded: false,
    deliveries: new Map(),  // id -> delivery
    deliveriesSeen: false,  // the server has webhooks: it has shown a delivery
    deliveryFilter: "",
    deliveryCursor: null,
    deliveryMessages: new Map(), // id -> {text, kind}
    resending: new Map(),   // id -> its version when an operator here sent it again: the outcome is told
    confirmingRetryAll: false,
  };
  const cards = new Map();  // id -> <article>, the detail of an open run
  const rowEls = new Map(); // id -> <tr> of the table
  const detailRows = new Map(); // id -> <tr> holding its <article>

  // -- small helpers ---------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const badge = (status, label) => el("span", { class: `badge b-${status}`, "data-status": status }, label || status);

  // -- who is signed in -------------------------------------------------------------

  let me = null;         // {name, role, via, expiresAt} from GET /api/session
  let leaving = false;   // on the way to /signin: start nothing new

  const canAct = () => Boolean(me && me.role === "operator");

  function goToSignin(reason) {
    if (leaving) return;
    leaving = true;
    if (source) source.close();
    location.replace(reason ? `/signin?reason=${encodeURIComponent(reason)}` : "/signin");
  }

  async function api(path, options = {}) {
    const init = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
    if (options.json !== undefined) {
      init.method = init.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
      delete init.json;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, body: null, message: "Could not reach the server; is it running?" };
    }
    // Not (or no longer) signed in: a page with nothing it may show.
    if (response.status === 401) goToSignin(!me ? "" : me.via === "loopback" ? "accounts" : "ended");
    const body = await response.json().catch(() => null);
    const message = body && body.error && body.error.message
      ? body.error.message
      : response.ok ? "" : `the server answered ${response.status}`;
    return { ok: response.ok, status: response.status, body, message, headers: response.headers };
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    const abs = Math.abs(ms);
    if (abs < 1000) return `${Math.round(abs)} ms`;
    const s = abs / 1000;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 10) return `${m} min ${Math.floor(s % 60)} s`;
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.round(h / 24)} days`;
  }

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);

  function relative(iso, mode) {
    const t = ms(iso);
    if (Number.isNaN(t)) return "";
    const diff = Date.now() - t;
    if (mode === "elapsed") return formatDuration(Math.max(0, diff));
    if (mode === "until") return diff >= 0 ? "due now" : `in ${formatDuration(-diff)}`;
    return diff < 1000 ? "just now" : `${formatDuration(diff)} ago`;
  }

  function clock(iso, withDate) {
    const t = ms(iso);
    if (Number.isNaN(t)) return "";
    const d = new Date(t);
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    if (!withDate && new Date().toDateString() === d.toDateString()) return time;
    return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  // A <time> element the ticker keeps current: mode is ago, until or elapsed.
  function timeEl(iso, mode = "ago", prefix = "") {
    return el("time", { datetime: iso, "data-rel": mode, "data-prefix": prefix, title: new Date(ms(iso)).toString() },
      prefix + relative(iso, mode));
  }

  function tick() {
    for (const node of document.querySelectorAll("time[data-rel]")) {
      const text = node.dataset.prefix + relative(node.getAttribute("datetime"), node.dataset.rel);
      if (node.textContent !== text) node.textContent = text;
    }
    for (const node of document.querySelectorAll("[data-age]")) {
      const text = ageText(node);
      if (node.textContent !== text) node.textContent = text;
    }
  }

  // An age the server measured (seconds, at performance.now() `at` here), as of now.
  function ageEl(seconds, at) {
    const node = el("span", { class: "age", "data-age": seconds, "data-age-at": at });
    node.textContent = ageText(node);
    return node;
  }

  function ageText(node) {
    const age = Number(node.dataset.age) * 1000 + (performance.now() - Number(node.dataset.ageAt));
    return `${formatDuration(Math.max(0, age))} ago`;
  }

  // Which node did something: the run's, an attempt's, a timeline entry's.
  function nodeTag(node, attrs = {}, spoken = "on node ", shown = "") {
    return el("span", { class: "node-tag", "data-node": node, ...attrs },
      el("span", { class: "visually-hidden" }, spoken),
      shown ? el("span", { "aria-hidden": "true" }, shown) : null,
      node);
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  // Keep keyboard focus across a re-render: focusable parts carry data-focus.
  function replaceKeepingFocus(oldNode, newNode) {
    const active = document.activeElement;
    const key = active && oldNode.contains(active) ? active.dataset.focus : null;
    oldNode.replaceWith(newNode);
    if (key) {
      const again = newNode.querySelector(`[data-focus="${CSS.escape(key)}"]`);
      if (again && !again.disabled) again.focus({ preventScroll: true });
    }
  }

  // -- connection indicator ----------------------------------------------------------

  function setConnection(kind) {
    const text = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Disconnected — retrying" }[kind];
    const node = $("#conn");
    if (node.dataset.state === kind) return;
    node.dataset.state = kind;
    $("#conn-text").textContent = text;
    node.title = kind === "live" ? "Receiving live updates from the server" : "Not receiving live updates; the page will catch up when the connection is back";
  }

  // -- the account in the header ------------------------------------------------------

  function setMe(next) {
    const roleChanged = !me || me.role !== next.role;
    me = next;
    const box = $("#who");
    box.dataset.via = next.via;
    box.dataset.role = next.role;
    document.body.dataset.via = next.via;
    document.body.dataset.role = next.role;
    const role = $("#who-role");
    if (next.via === "loopback") {
      $("#who-label").textContent = "Access:";
      $("#who-name").textContent = "local (no accounts)";
      role.hidden = true;
      box.title = "No operator account exists, so this server answers only this machine. "
        + "Add one with: userflow operators add NAME --role operator";
    } else {
      $("#who-label").textContent = "Signed in as";
      $("#who-name").textContent = next.name;
      role.hidden = false;
      role.textContent = next.role;
      role.dataset.role = next.role;
      box.title = next.expiresAt ? `${next.name} (${next.role}), signed in until ${clock(next.expiresAt, true)}` : `${next.name} (${next.role})`;
    }
    $("#sign-out").hidden = next.via !== "session";
    $("#read-only").hidden = canAct();
    box.hidden = false;
    if (roleChanged) {
      renderAllRuns();
      renderSoon("list");
      renderSoon("deliveries");
    }
    watchExpiry();
  }

  // The server is the judge: a 401 sends the page to /signin (in api()).
  async function whoami() {
    const answer = await api("/api/session");
    if (answer.ok && answer.body && answer.body.role) setMe(answer.body);
    return answer;
  }

  // Look again when the stream breaks (an ended session ends the stream), at most once a second.
  let lastSessionCheck = 0;
  function checkSession() {
    if (leaving || Date.now() - lastSessionCheck < 1000) return;
    lastSessionCheck = Date.now();
    whoami();
  }

  // When the session is due to end, ask (clocks differ: a 200 then looks again later).
  let expiryTimer = null;
  function watchExpiry() {
    clearTimeout(expiryTimer);
    const at = me && me.expiresAt ? ms(me.expiresAt) : NaN;
    if (Number.isNaN(at)) return;
    const delay = at - Date.now();
    expiryTimer = setTimeout(whoami, delay > 0 ? Math.min(delay + 500, 2 ** 31 - 1) : 30000);
  }

  async function signOut(button) {
    button.disabled = true;
    const answer = await api("/api/session", { method: "DELETE" });
    if (answer.ok) {
      goToSignin("signed-out");
      return;
    }
    button.disabled = false;
    button.textContent = "Sign out failed: try again";
    button.title = answer.message;
  }

  // -- loading -------------------------------------------------------------------

  function putSummary(summary) {
    const known = state.runs.get(summary.id);
    if (known && known.updatedAt > summary.updatedAt) return false;  // an older answer than what we have
    state.runs.set(summary.id, summary);
    const user = state.users.get(summary.userId);
    if (user && summary.userStatus && user.status !== summary.userStatus) {
      state.users.set(summary.userId, { ...user, status: summary.userStatus });
      renderSoon("users");
      // A user who moved on has more to show than a status: a risk decision, when it ended.
      scheduleUser(summary.userId);
    }
    return true;
  }

  function putUser(user) {
    if (!user) return;
    state.users.set(user.id, user);
    renderSoon("users");
    renderSoon("outbox");
    renderSoon("deliveries");
    const row = rowEls.get(user.workflowId);
    if (row) renderRow(user.workflowId);
  }

  // A run's summary, from the stream or from a fetch: its row changes in place; a
  // new run this page would list (the first page, no search, its status if
  // filtered) goes in at its place, newest first.
  function takeSummary(summary) {
    if (!putSummary(summary)) return;
    const id = summary.id;
    // On the page already, even if its <tr> is only made at the next frame.
    if (state.rows.includes(id)) {
      renderRow(id);
      if (shown(id)) updateCardHead(id);
    } else if (belongsHere(summary)) {
      insertRow(id);
      if (!state.users.has(summary.userId)) scheduleUser(summary.userId);  // its name
    }
    if (state.outbox.some((email) => email.workflowId === id)) renderSoon("outbox");
    if (state.runs.size > KEEP_SUMMARIES) forgetUnshown();
  }

  function belongsHere(summary) {
    if (!state.pageLoaded || state.query || state.pageStart) return false;
    if (state.filter && summary.status !== state.filter) return false;
    const last = state.rows[state.rows.length - 1];
    return !state.nextCursor || (last !== undefined && summary.id > last);  // ids sort by creation
  }

  function insertRow(id) {
    if (state.rows.includes(id)) return;
    state.rows.push(id);
    state.rows.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    // Still one page: the oldest rows go, unless open or in use (the page grows instead).
    while (state.rows.length > PAGE && !inUse(state.rows[state.rows.length - 1])) {
      state.rows.pop();
      state.nextCursor = state.rows[state.rows.length - 1];
    }
    renderSoon("list");
  }

  function inUse(id) {
    if (state.open.has(id)) return true;
    const active = document.activeElement;
    const row = rowEls.get(id);
    return Boolean(row && active && row.contains(active));
  }

  const shown = (id) => state.open.has(id) && state.rows.includes(id);

  function forgetUnshown() {
    const keep = new Set([...state.rows, ...state.open, ...state.outbox.map((email) => email.workflowId)]);
    for (const id of [...state.runs.keys()]) {
      if (!keep.has(id)) state.runs.delete(id);
    }
    for (const id of [...rowEls.keys()]) {
      if (!keep.has(id)) rowEls.delete(id);
    }
  }

  // One page of runs: from `start` (a cursor; null for the newest), or the run
  // the search names. Only the answer to the latest request is shown.
  let pageSeq = 0;
  async function loadPage(start = state.pageStart) {
    const seq = ++pageSeq;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (state.filter) params.set("status", state.filter);
    if (state.query) params.set("q", state.query);
    else if (start) params.set("cursor", start);
    const answer = await api(`/api/workflows?${params}`);
    if (seq !== pageSeq) return true;  // a newer page was asked for meanwhile
    if (!answer.ok) {
      if (answer.status === 400 && state.query) {  // not an address or an id: nothing to find
        showPage(start, [], null);
        return true;
      }
      return false;
    }
    showPage(start, answer.body.workflows, state.query ? null : answer.body.nextCursor);
    fetchUsersOf(answer.body.workflows, params);
    // Open runs on this page show their detail as it is now.
    await fetchDetails(state.rows.filter((id) => state.open.has(id)));
    return true;
  }

  function showPage(start, summaries, nextCursor) {
    for (const summary of summaries) {
      putSummary(summary);
      const detail = state.details.get(summary.id);
      if (detail && detail.updatedAt < state.runs.get(summary.id).updatedAt) state.details.delete(summary.id);
    }
    state.pageStart = start;
    state.rows = summaries.map((summary) => summary.id);
    state.nextCursor = nextCursor;
    state.pageLoaded = true;
    for (const id of state.rows) if (rowEls.has(id)) renderRow(id);
    forgetUnshown();
    renderSoon("list");
    renderSoon("outbox");  // its notes ("link expired") read the runs' summaries, which may come after it
  }

  // The names on a page: a list without a filter has its users in the same order,
  // a page of them for the same cursor; otherwise the few unknown ones, one by one.
  async function fetchUsersOf(summaries, params) {
    const unknown = summaries.filter((summary) => !state.users.has(summary.userId));
    if (!unknown.length) return;
    if (!state.filter && !state.query) {
      const answer = await api(`/api/users?${params}`);
      if (answer.ok) for (const user of answer.body.users) putUser(user);
    }
    for (const summary of unknown) if (!state.users.has(summary.userId)) scheduleUser(summary.userId);
  }

  const userTimers = new Map();  // userId -> timer
  function scheduleUser(userId) {
    if (!userId || userTimers.has(userId)) return;
    userTimers.set(userId, setTimeout(async () => {
      userTimers.delete(userId);
      const answer = await api(`/api/users/${encodeURIComponent(userId)}`);
      if (answer.ok) putUser(answer.body);
    }, DETAIL_DEBOUNCE_MS));
  }

  async function fetchDetails(ids) {
    const queue = [...ids];
    const worker = async () => {
      while (queue.length) await fetchRun(queue.shift());
    };
    await Promise.all(Array.from({ length: Math.min(DETAIL_CONCURRENCY, queue.length) }, worker));
  }

  async function loadUsers() {
    const answer = await api("/api/users?limit=200");
    if (!answer.ok) return false;
    for (const user of answer.body.users) state.users.set(user.id, user);
    renderSoon("users");
    renderSoon("outbox");
    renderSoon("deliveries");
    return true;
  }

  async function loadOutbox() {
    const answer = await api("/api/outbox?limit=50");
    if (answer.status === 404) {
      state.outboxEnabled = false;
      $("#outbox-card").hidden = true;
      return true;
    }
    if (!answer.ok) return false;
    state.outboxEnabled = true;
    $("#outbox-card").hidden = false;
    state.outbox = answer.body.emails;
    renderSoon("outbox");
    return true;
  }

  // The overview: on load, then at most every OVERVIEW_EVERY_MS while runs change
  // (it is the server counting, cheap, but not per event), and after a quiet minute.
  let overviewAt = 0;
  let overviewTimer = null;
  let overviewIdle = null;
  let overviewSeq = 0;
  function scheduleOverview() {
    if (overviewTimer || leaving) return;
    const wait = Math.max(0, overviewAt + OVERVIEW_EVERY_MS - Date.now());
    overviewTimer = setTimeout(() => { overviewTimer = null; loadOverview(); }, wait);
  }

  async function loadOverview() {
    const seq = ++overviewSeq;
    overviewAt = Date.now();
    clearTimeout(overviewIdle);
    overviewIdle = setTimeout(scheduleOverview, OVERVIEW_IDLE_MS);
    const answer = await api("/api/overview");
    if (!answer.ok) return false;
    if (seq === overviewSeq) {
      state.overview = answer.body;
      renderSoon("overview");
      renderSoon("list");  // the filters' counts
    }
    return true;
  }

  // The nodes panel: asked again every NODES_EVERY_MS while the page is shown; a
  // hidden page asks nothing, and asks at once when it is shown again.
  let nodesTimer = null;
  let nodesSeq = 0;
  let nodesShown = null;  // id -> alive, as last shown: what changed is told

  function scheduleNodes(delay = NODES_EVERY_MS) {
    clearTimeout(nodesTimer);
    nodesTimer = null;
    if (leaving || document.hidden) return;
    nodesTimer = setTimeout(loadNodes, delay);
  }

  async function loadNodes() {
    nodesTimer = null;
    const seq = ++nodesSeq;
    const answer = await api("/api/nodes");
    if (seq !== nodesSeq) return;  // a newer request went out meanwhile
    if (answer.status === 404) {  // a server without nodes: no panel, and no more asking
      $("#nodes-card").hidden = true;
      return;
    }
    if (answer.ok) renderNodes(answer.body);
    else nodesUnknown(answer);
    scheduleNodes();
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) scheduleNodes();  // stops: nothing is scheduled for a hidden page
    else if (me) scheduleNodes(0);
  });

  function renderNodes(body) {
    const card = $("#nodes-card");
    const at = performance.now();
    // Alive first, then by name: the order stays put from one answer to the next.
    const nodes = [...body.nodes].sort((a, b) => Number(b.alive) - Number(a.alive) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const shared = nodes.some((n) => n.heartbeatAt !== undefined);
    const alive = nodes.filter((n) => n.alive).length;
    const down = nodes.length - alive;
    $("#nodes-count").textContent = `(${alive} alive${down ? `, ${down} down` : ""})`;
    $("#nodes-scope").textContent = shared
      ? `The servers sharing this database, alive while their heartbeat is recent by its clock; checked every ${NODES_EVERY_MS / 1000} s.`
      : "One server, on its data dir.";
    $("#nodes-scope").classList.remove("nodes-error");
    $("#nodes").replaceChildren(...nodes.map((n) => nodeItem(n, at)));
    tellNodeChanges(nodes);
    card.dataset.loaded = "true";
    card.dataset.stale = "false";
  }

  function nodeItem(n, at) {
    const state = n.alive ? "alive" : "down";
    const facts = [["Runs executing", el("span", { "data-role": "executing" }, num(n.executing))]];
    if (n.heartbeatAgeSeconds !== undefined && n.heartbeatAgeSeconds !== null) {
      const heartbeat = ageEl(n.heartbeatAgeSeconds, at);
      heartbeat.dataset.role = "heartbeat";
      heartbeat.title = n.heartbeatAt ? `${clock(n.heartbeatAt, true)} by the database's clock` : "";
      facts.push(["Last heartbeat", heartbeat]);
    }
    if (n.stoppedAt && n.heartbeatAt) {
      // Both stamps are the database's: its age from theirs, not from this machine's clock.
      const stopped = ageEl(n.heartbeatAgeSeconds - (ms(n.stoppedAt) - ms(n.heartbeatAt)) / 1000, at);
      stopped.dataset.role = "stopped";
      facts.push(["Stopped", stopped]);
    }
    facts.push(["Address", n.address ? el("code", { class: "node-address" }, n.address) : el("span", { class: "muted" }, "not given")]);
    return el("li", {
      class: `node n-${state}`, "data-node-id": n.id, "data-alive": String(Boolean(n.alive)), "data-self": String(Boolean(n.self)),
    },
      el("div", { class: "node-head" },
        el("code", { class: "node-id", "data-role": "node-id" }, n.id),
        el("span", { class: `badge b-node-${state}`, "data-role": "node-state" }, state),
        n.self ? el("span", { class: "badge node-self", "data-role": "self", title: "the server this page is connected to" }, "this node") : null),
      el("dl", { class: "node-facts" }, ...facts.flatMap(([label, value]) => [el("dt", {}, label), el("dd", {}, value)])));
  }

  // Said once per change, not at every poll: a node that went down, came back or joined.
  function tellNodeChanges(nodes) {
    const now = new Map(nodes.map((n) => [n.id, Boolean(n.alive)]));
    if (nodesShown) {
      const told = [];
      for (const [id, alive] of now) {
        const before = nodesShown.get(id);
        if (before === undefined) told.push(`Node ${id} joined${alive ? "" : ", down"}.`);
        else if (before !== alive) told.push(alive ? `Node ${id} is alive again.` : `Node ${id} is down.`);
      }
      if (told.length) $("#nodes-live").textContent = told.join(" ");
    }
    nodesShown = now;
  }

  // No answer: what is shown stays, said to be as of the last answer.
  function nodesUnknown(answer) {
    const card = $("#nodes-card");
    if (card.dataset.stale === "true") return;
    card.dataset.stale = "true";
    const scope = $("#nodes-scope");
    scope.textContent = `Not updated: ${answer.status ? `${answer.status}: ` : ""}${answer.message}`;
    scope.classList.add("nodes-error");
  }

  // Everything from scratch: at the first connection and on `reset`. A reset that
  // arrives during a load loads again after it; a failed load (the server is
  // starting: 503) is tried again a little later.
  let loading = null;
  let loadAgain = false;
  let loadRetry = 1000;
  let loadTimer = null;
  function loadAll() {
    if (leaving) return Promise.resolve();
    if (loading) { loadAgain = true; return loading; }
    loading = (async () => {
      let ok = false;
      try {
        const results = await Promise.all([loadUsers(), loadOutbox(), loadPage(), loadDeliveries(false), loadOverview()]);
        ok = results.every(Boolean);
      } finally {
        loading = null;
      }
      if (ok) {
        state.loaded = true;
        loadRetry = 1000;
        document.body.dataset.loaded = "true";
        renderSoon("list");
      }
      if (loadAgain) { loadAgain = false; loadAll(); }
      else if (!ok && !loadTimer) {
        loadTimer = setTimeout(() => { loadTimer = null; if (!state.loaded) loadAll(); }, loadRetry);
        loadRetry = Math.min(loadRetry * 2, 15000);
      }
    })();
    return loading;
  }

  // One detail fetch per run at a time; a change during a fetch fetches again after it.
  const pending = new Map();   // id -> timer
  const inflight = new Set();
  const again = new Set();

  function scheduleRun(id, delay = DETAIL_DEBOUNCE_MS) {
    if (pending.has(id)) return;
    pending.set(id, setTimeout(() => { pending.delete(id); fetchRun(id); }, delay));
  }

  async function fetchRun(id) {
    if (inflight.has(id)) { again.add(id); return; }
    inflight.add(id);
    try {
      const answer = await api(`/api/workflows/${encodeURIComponent(id)}`);
      if (answer.ok) {
        const detail = answer.body;
        const { steps, timeline, user, ...summary } = detail;
        putUser(user);  // first: a row this answer puts in has its name
        takeSummary(summary);
        // Only an open run keeps its detail: the others show their summary.
        if (state.open.has(id)) {
          state.details.set(id, detail);
          renderRun(id);
          renderRow(id);
        }
      }
    } finally {
      inflight.delete(id);
      if (again.delete(id)) scheduleRun(id, 0);
    }
  }

  // A delivery's later state replaces an earlier one: each change adds an attempt or a resend.
  const deliveryVersion = (d) => (d.attempts || []).length + (d.resent || []).length;

  function putDelivery(delivery, live) {
    const known = state.deliveries.get(delivery.id);
    if (known && deliveryVersion(known) > deliveryVersion(delivery)) return;  // an older answer
    state.deliveries.set(delivery.id, delivery);
    state.deliveriesSeen = true;
    // Sent again from here: a resend and an attempt later, the outcome.
    if (state.resending.has(delivery.id) && delivery.status !== "pending"
        && deliveryVersion(delivery) >= state.resending.get(delivery.id) + 2) {
      state.resending.delete(delivery.id);
      const last = delivery.attempts[delivery.attempts.length - 1];
      tellDelivery(delivery, delivery.status === "delivered"
        ? { text: `Sent again and delivered${last && last.status ? ` (HTTP ${last.status})` : ""}.`, kind: "ok" }
        : { text: `Sent again, and failed again: ${last && last.error ? last.error : "no answer"}.`, kind: "error" });
    }
    renderSoon("deliveries");
    // The run's timeline lists its webhook attempts: only its detail has them.
    if (live && shown(delivery.workflowId)) scheduleRun(delivery.workflowId);
  }

  async function loadDeliveries(append) {
    const params = new URLSearchParams({ limit: "100" });
    if (state.deliveryFilter) params.set("status", state.deliveryFilter);
    if (append && state.deliveryCursor) params.set("cursor", state.deliveryCursor);
    const answer = await api(`/api/webhooks/deliveries?${params}`);
    if (answer.status === 404) return true;  // a server without webhooks at all
    if (!answer.ok) return false;
    state.deliveryCursor = answer.body.nextCursor;
    for (const delivery of answer.body.deliveries) putDelivery(delivery, false);
    renderSoon("deliveries");
    return true;
  }

  let outboxTimer = null;
  function scheduleOutbox() {
    if (!state.outboxEnabled || outboxTimer) return;
    outboxTimer = setTimeout(() => { outboxTimer = null; loadOutbox(); }, DETAIL_DEBOUNCE_MS);
  }

  // -- the event stream ----------------------------------------------------------

  let source = null;
  let lastEventId = "";
  let retryDelay = 1000;

  function connect() {
    setConnection(source ? "reconnecting" : "connecting");
    // The browser resends Last-Event-ID on its own reconnects; a stream we open
    // again ourselves (after the server refused one) passes it in the query.
    const url = lastEventId ? `/api/events?lastEventId=${encodeURIComponent(lastEventId)}` : "/api/events";
    const es = new EventSource(url);
    source = es;
    es.addEventListener("open", () => {
      retryDelay = 1000;
      setConnection("live");
      if (!state.loaded) loadAll();
    });
    es.addEventListener("error", () => {
      if (leaving) return;
      checkSession();  // a stream ended by sign-out elsewhere, expiry or a removed account: to /signin
      if (!state.loaded) loadAll();  // show what there is, even without live updates
      if (es.readyState === EventSource.CLOSED) {
        // Refused (e.g. 503 while the server recovers): the browser gives up, we do not.
        setConnection("offline");
        setTimeout(() => { if (source === es) connect(); }, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      } else {
        setConnection("reconnecting");
      }
    });
    es.addEventListener("timeline", (event) => {
      lastEventId = event.lastEventId || lastEventId;
      const entry = JSON.parse(event.data);
      if (entry.type === "email-sent") scheduleOutbox();
    });
    es.addEventListener("run", (event) => {
      lastEventId = event.lastEventId || lastEventId;
      const summary = JSON.parse(event.data);
      takeSummary(summary);
      if (shown(summary.id)) scheduleRun(summary.id);
      scheduleOverview();
    });
    es.addEventListener("delivery", (event) => {
      lastEventId = event.lastEventId || lastEventId;
      putDelivery(JSON.parse(event.data), true);
    });
    es.addEventListener("reset", (event) => {
      lastEventId = event.lastEventId || lastEventId;
      state.loaded = false;
      loadAll();
    });
  }

  // -- rendering: batching ----------------------------------------------------------

  const dirty = new Set();
  let frame = 0;
  function renderSoon(part) {
    dirty.add(part);
    if (!frame) frame = requestAnimationFrame(flush);
  }
  function flush() {
    frame = 0;
    const parts = [...dirty];
    dirty.clear();
    if (parts.includes("overview")) renderOverview();
    if (parts.includes("list")) renderList();
    if (parts.includes("users")) renderUsers();
    if (parts.includes("outbox")) renderOutbox();
    if (parts.includes("deliveries")) renderDeliveries();
  }
  // requestAnimationFrame does not run in background tabs; do not let them fall behind.
  document.addEventListener("visibilitychange", () => { if (!document.hidden && dirty.size) flush(); });
  setInterval(() => { if (document.hidden && dirty.size) flush(); }, 1000);

  // -- rendering: the overview --------------------------------------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const percent = (f) => (f === null || f === undefined ? "—" : `${(Math.round(f * 1000) / 10).toLocaleString("en-US")}%`);

  function renderOverview() {
    const o = state.overview;
    if (!o) return;
    $("#overview").dataset.loaded = "true";
    renderFunnel(o);
    renderTimeToVerify(o.timeToVerify || { buckets: [], medianUpTo: null }, o.funnel.verified);
    renderActivity($("#activity-hour"), o.lastHour || [], "hour");
    renderActivity($("#activity-day"), o.lastDay || [], "day");
  }

  function renderFunnel(o) {
    const f = o.funnel;
    const share = (n) => (f.signedUp ? n / f.signedUp : null);
    const conv = o.conversion || {};
    const stages = [
      ["signedUp", "Signed up", f.signedUp, f.signedUp ? 1 : null],
      ["verified", "Verified", f.verified, conv.verified ?? share(f.verified)],
      ["active", "Active", f.active, conv.active ?? share(f.active)],
      ["flagged", "Flagged", f.flagged, share(f.flagged)],
      ["expired", "Expired", f.expired, share(f.expired)],
      ["cancelled", "Cancelled", f.cancelled, share(f.cancelled)],
    ];
    $("#funnel").replaceChildren(...stages.map(([key, label, n, fraction]) => {
      const fill = el("span", { class: "st-fill" });
      fill.style.width = `${Math.min(1, fraction || 0) * 100}%`;  // CSSOM: the page's CSP allows it, unlike a style attribute
      return el("li", { class: `stage st-${key}`, "data-stage": key },
        el("span", { class: "st-label" }, label),
        el("span", { class: "st-bar", "aria-hidden": "true" }, fill),
        el("span", { class: "st-n", "data-role": "n" }, num(n)),
        el("span", { class: "st-pct", "data-role": "pct", title: key === "signedUp" ? null : "of everyone who signed up" },
          key === "signedUp" ? "" : percent(fraction),
          key === "signedUp" ? null : el("span", { class: "visually-hidden" }, " of signups")));
    }));
    const pending = (o.users && o.users.PENDING) || 0;
    $("#funnel-note").textContent = pending ? `${num(pending)} still pending: not verified yet, or being checked.` : "";
  }

  function spanText(seconds, short) {
    if (seconds === null || seconds === undefined) return short ? ">1d" : "more than a day";
    if (seconds < 3600) return short ? `${seconds / 60}m` : `${seconds / 60} min`;
    if (seconds < 86400) return short ? `${seconds / 3600}h` : `${seconds / 3600} h`;
    return short ? `${seconds / 86400}d` : plural(seconds / 86400, "day");
  }

  function renderTimeToVerify(ttv, verified) {
    const median = $("#ttv-median");
    median.textContent = !verified ? "—"
      : ttv.medianUpTo === null ? "over a day" : `≤ ${spanText(ttv.medianUpTo)}`;
    $("#ttv-note").textContent = verified ? `median · ${num(verified)} verified` : "no one verified yet";
    const max = Math.max(1, ...ttv.buckets.map((b) => b.count));
    const medianIndex = verified ? ttv.buckets.findIndex((b) => b.upTo === ttv.medianUpTo) : -1;
    $("#ttv-chart").replaceChildren(...ttv.buckets.map((b, i) => {
      const fill = el("span", { class: "hist-fill" });
      fill.style.height = `${(b.count / max) * 100}%`;
      const within = b.upTo === null ? "after more than a day" : `within ${spanText(b.upTo)}`;
      return el("li", { class: `hist-col${i === medianIndex ? " is-median" : ""}`, "data-up-to": b.upTo === null ? "more" : b.upTo,
        "data-count": b.count, title: `${num(b.count)} verified ${within}` },
      el("span", { class: "hist-bar", "aria-hidden": "true" }, fill),
      el("span", { class: "hist-label", "aria-hidden": "true" }, b.upTo === null ? ">1d" : `≤${spanText(b.upTo, true)}`),
      el("span", { class: "visually-hidden" }, `${num(b.count)} verified ${within}${i === medianIndex ? " (the median)" : ""}`));
    }));
  }

  const SERIES = [["signups", "Signups"], ["verified", "Verified"], ["failures", "Failures"]];

  function hhmm(at) {
    const t = Date.parse(at);
    return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  function renderActivity(box, points, span) {
    const unit = span === "hour" ? "5 minutes" : "hour";
    const over = span === "hour" ? "the last hour" : "the last 24 hours";
    const n = points.length;
    const rows = SERIES.map(([key, label]) => {
      const values = points.map((p) => Number(p[key]) || 0);
      const total = values.reduce((a, b) => a + b, 0);
      const max = Math.max(0, ...values);
      const peak = values.indexOf(max);
      const bars = values.map((v, i) => {
        const h = max ? Math.max(2, (v / max) * 30) : 0;
        const end = points[i + 1] ? hhmm(points[i + 1].at) : "now";
        return svg("rect", { class: v ? "bar" : "bar zero", x: i * 10 + 1, width: 8, y: v ? 32 - h : 31, height: v ? h : 1 },
          svg("title", {}, `${hhmm(points[i].at)}–${end}: ${num(v)} ${label.toLowerCase()}`));
      });
      const chart = svg("svg", {
        class: "spark-chart", viewBox: `0 0 ${Math.max(1, n) * 10} 32`, preserveAspectRatio: "none", role: "img",
        "aria-label": `${label} over ${over}: ${num(total)}${max ? `; at most ${num(max)} in one ${unit}, from ${hhmm(points[peak].at)}` : ""}`,
      }, ...bars);
      return el("div", { class: `spark sp-${key}`, "data-series": key },
        el("span", { class: "spark-label" }, label),
        el("span", { class: "spark-total", "data-role": "total" }, num(total)),
        chart);
    });
    const axis = n ? el("div", { class: "spark-axis", "aria-hidden": "true" },
      el("span", {}, hhmm(points[0].at)), el("span", {}, "now")) : null;
    box.replaceChildren(...rows, axis || "");
  }

  // -- rendering: runs ------------------------------------------------------------

  const byNewest = (a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.id < b.id ? 1 : -1);

  const num = (n) => Number(n || 0).toLocaleString("en-US");

  // Counts over the whole store, from the overview (not from the page shown).
  function runCounts() {
    const runs = state.overview && state.overview.runs;
    if (!runs) return null;
    const counts = { "": Object.values(runs).reduce((a, b) => a + b, 0) };
    for (const [status, n] of Object.entries(runs)) counts[status] = n;
    return counts;
  }

  function renderList() {
    const counts = runCounts();
    for (const button of document.querySelectorAll("#filters button")) {
      $(".n", button).textContent = counts ? num(counts[button.dataset.filter]) : "";
    }
    const body = $("#runs");
    const wanted = [];
    for (const id of state.rows) {
      if (!state.runs.has(id)) continue;
      wanted.push(rowFor(id));
      if (state.open.has(id)) wanted.push(detailRowFor(id));
    }
    // Reorder only where needed, so focus and open timelines survive.
    let cursor = body.firstChild;
    for (const row of wanted) {
      if (row === cursor) { cursor = cursor.nextSibling; continue; }
      body.insertBefore(row, cursor);
    }
    while (cursor) { const next = cursor.nextSibling; cursor.remove(); cursor = next; }
    for (const [id, row] of rowEls) row.setAttribute("aria-expanded", String(state.open.has(id)));
    setRowTabStop();

    const rows = state.rows.length;
    $("#runs-wrap").hidden = rows === 0;
    const empty = $("#runs-empty");
    empty.hidden = rows > 0;
    const among = state.filter ? ` among ${state.filter.toLowerCase()} runs` : "";
    empty.textContent = !state.pageLoaded ? "Loading…"
      : state.query ? `No run matches “${state.query}”${among}.`
      : state.filter ? `No ${state.filter.toLowerCase()} runs${state.pageStart ? " older than these" : ""}.`
      : state.pageStart ? "No older runs." : "No runs yet: sign someone up.";
    renderPager(counts);
    renderBulk(counts ? counts.FAILED || 0 : 0);
  }

  // "41–60 of 1,316": where this page is among all the runs it pages through.
  function renderPager(counts) {
    const paged = !state.query && (state.nextCursor || state.pageStart);
    $("#pager").hidden = !paged;
    $("#runs-newer").disabled = !state.pageStart;
    $("#runs-older").disabled = !state.nextCursor;
    const range = $("#runs-range");
    if (!paged || !state.rows.length) { range.textContent = ""; return; }
    const first = state.pageStack.length * PAGE + 1;
    const total = counts ? counts[state.filter] : null;
    range.textContent = `${num(first)}–${num(first + state.rows.length - 1)}${total ? ` of ${num(total)}` : ""}`;
  }

  function rowFor(id) {
    let row = rowEls.get(id);
    if (!row) {
      row = el("tr", {
        class: "run-row", "data-run-id": id, tabindex: "-1", "aria-expanded": "false",
        "aria-controls": `run-detail-${id}`,
      });
      row.addEventListener("focus", () => { if (focusRow !== id) { focusRow = id; setRowTabStop(); } });
      row.addEventListener("click", () => {
        if (String(window.getSelection() || "")) return;  // selecting an address to copy it
        toggleRun(id);
      });
      row.addEventListener("keydown", (event) => {
        if (event.target !== row || event.altKey || event.ctrlKey || event.metaKey) return;
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); toggleRun(id); return; }
        const at = state.rows.indexOf(id);
        const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: state.rows.length - 1 }[event.key];
        if (to === undefined) return;
        event.preventDefault();
        const next = rowEls.get(state.rows[to]);
        if (next && next.isConnected) next.focus();
      });
      rowEls.set(id, row);
      renderRow(id);
    }
    return row;
  }

  // The table is one stop for Tab, at the row last focused (else the first):
  // the arrow keys, Home and End move between rows.
  let focusRow = null;
  function setRowTabStop() {
    const stop = state.rows.includes(focusRow) ? focusRow : state.rows[0];
    for (const id of state.rows) {
      const row = rowEls.get(id);
      if (row) row.tabIndex = id === stop ? 0 : -1;
    }
  }

  // The row of a run, rebuilt in place (the <tr> stays: focus and position survive).
  function renderRow(id) {
    const row = rowEls.get(id);
    const run = state.runs.get(id);
    if (!row || !run) return;
    const user = state.users.get(run.userId);
    const name = user && user.name;
    const steps = progressOf(run, currentDetail(id));
    const key = JSON.stringify([run.status, run.userStatus, run.email, name, steps, run.createdAt]);
    if (row.dataset.key === key) return;
    row.dataset.key = key;
    row.className = `run-row r-${run.status}`;
    row.dataset.status = run.status;
    row.dataset.userStatus = run.userStatus || "";
    row.dataset.email = run.email || "";
    const status = runStatusBadge(run.status);
    status.dataset.role = "row-status";
    row.replaceChildren(
      el("td", { class: "c-person", "data-label": "Person" },
        name ? el("span", { class: "who" }, name) : null,
        el("span", { class: "email" }, run.email || run.userId)),
      el("td", { class: "c-status", "data-label": "Run" }, status),
      el("td", { class: "c-user", "data-label": "User" },
        el("span", { class: `badge b-${run.userStatus}`, "data-role": "row-user-status" }, run.userStatus || "?")),
      el("td", { class: "c-progress", "data-label": "Progress" }, progressEl(run, steps)),
      el("td", { class: "c-age", "data-label": "Started" }, timeEl(run.createdAt, "ago")));
  }

  // The detail, if it is not older than the summary (which the stream updates first).
  function currentDetail(id) {
    const detail = state.details.get(id);
    const run = state.runs.get(id);
    return detail && run && detail.updatedAt >= run.updatedAt ? detail : null;
  }

  // Each of the five steps' state: from the detail when it is current, else
  // derived from the summary: the steps before currentStep are done.
  function progressOf(run, detail) {
    if (detail && detail.steps) {
      const byId = new Map(detail.steps.map((step) => [step.id, step.status]));
      return STEP_ORDER.map((id) => (byId.get(id) || "PENDING"));
    }
    const finished = ["COMPLETED", "CANCELLED", "FAILED"].includes(run.status);
    const at = run.currentStep ? STEP_ORDER.indexOf(run.currentStep) : STEP_ORDER.length;
    return STEP_ORDER.map((id, k) => {
      if (k < at) return "COMPLETED";
      if (k > at) return finished && run.status !== "FAILED" ? "SKIPPED" : "PENDING";
      if (run.status === "COMPLETED") return "COMPLETED";  // the wait ended by its expiry
      if (run.status === "CANCELLED") return "SKIPPED";
      return run.status;  // RUNNING, WAITING or FAILED
    });
  }

  function progressText(run, steps) {
    const at = steps.findIndex((status) => !["COMPLETED", "SKIPPED"].includes(status));
    if (run.status === "COMPLETED") return run.outcome === "expired" ? "link expired" : "all steps done";
    if (run.status === "CANCELLED") return "cancelled";
    if (at < 0) return "";
    const stepId = STEP_ORDER[at];
    const name = STEP_NAMES[stepId] || stepId;
    const how = { FAILED: "failed at", RETRYING: "retrying", WAITING: "", RUNNING: "", PENDING: "" }[steps[at]] || "";
    return `${how ? `${how} ` : ""}${how ? name.toLowerCase() : name}`;
  }

  function progressEl(run, steps) {
    const text = progressText(run, steps);
    const done = steps.filter((status) => status === "COMPLETED").length;
    const label = `${done} of ${STEP_ORDER.length} steps done${text ? `: ${text}` : ""}`;
    return el("span", { class: "progress", "data-role": "progress", "data-steps": steps.join(" "), title: label },
      el("span", { class: "segs", "aria-hidden": "true" },
        ...steps.map((status, k) => el("span", {
          class: `seg g-${status}`, "data-step": STEP_ORDER[k], "data-status": status,
          title: `${k + 1}. ${STEP_NAMES[STEP_ORDER[k]]}: ${status.toLowerCase()}`,
        }))),
      el("span", { class: "visually-hidden" }, label),
      el("span", { class: "prog-text", "aria-hidden": "true" }, text));
  }

  function detailRowFor(id) {
    let row = detailRows.get(id);
    if (!row) {
      row = el("tr", { class: "run-detail", id: `run-detail-${id}`, "data-run-id": id },
        el("td", { colspan: "5" }, cardFor(id)));
      row.addEventListener("keydown", (event) => {
        if (event.key !== "Escape" || event.defaultPrevented || event.target.closest(".confirm")) return;
        event.preventDefault();
        toggleRun(id, false);
        const back = rowEls.get(id);
        if (back) back.focus();
      });
      detailRows.set(id, row);
    }
    return row;
  }

  function toggleRun(id, open = !state.open.has(id)) {
    if (open === state.open.has(id)) return;
    if (open) {
      state.open.add(id);
      fetchRun(id);  // the detail as it is now: only open runs follow theirs
    } else {
      state.open.delete(id);
      state.details.delete(id);
      state.detailText.delete(id);
      cards.delete(id);
      detailRows.delete(id);
    }
    renderList();
    renderRow(id);
  }

  function cardFor(id) {
    let card = cards.get(id);
    if (!card) {
      card = buildCard(id);
      cards.set(id, card);
    }
    return card;
  }

  // The role decides which buttons a card has: all cards again when it changes.
  function renderAllRuns() {
    state.detailText.clear();
    for (const id of cards.keys()) renderRun(id);
    renderSoon("outbox");
  }

  function renderRun(id) {
    const detail = state.details.get(id);
    const text = detail ? JSON.stringify(detail) : "";
    const old = cards.get(id);
    if (old && state.detailText.get(id) === text && !old.dataset.stale) return;
    state.detailText.set(id, text);
    const card = buildCard(id);
    cards.set(id, card);
    if (old && old.isConnected) replaceKeepingFocus(old, card);
  }

  // A `run` event arrives before its detail: show the new status at once.
  function updateCardHead(id) {
    const card = cards.get(id);
    const summary = state.runs.get(id);
    if (!card || !summary) return;
    const status = $("[data-role=run-status]", card);
    if (status && status.dataset.status !== summary.status) {
      status.replaceWith(runStatusBadge(summary.status));
      card.dataset.status = summary.status;
      card.dataset.stale = "1";  // re-render when the detail arrives even if it equals the old one
    }
  }

  function runStatusBadge(status) {
    const node = badge(status);
    node.dataset.role = "run-status";
    node.setAttribute("aria-label", `run ${status}`);
    return node;
  }

  function buildCard(id) {
    const summary = state.runs.get(id);
    const detail = state.details.get(id);
    const run = detail || summary;
    const user = (detail && detail.user) || state.users.get(run.userId);
    const titleId = `run-title-${id}`;

    const head = el("div", { class: "run-head" },
      el("div", { class: "run-line" },
        el("h3", { id: titleId, class: "run-title" },
          user && user.name ? el("span", { class: "who" }, user.name) : null,
          el("span", { class: "email" }, run.email || (user && user.email) || run.userId)),
        el("div", { class: "run-badges" },
          runStatusBadge(run.status),
          el("span", { class: `badge b-${run.userStatus} user-badge`, "data-role": "user-status" }, `user ${run.userStatus || "?"}`))),
      el("div", { class: "run-meta" },
        timeEl(run.createdAt, "ago", "started "),
        run.finishedAt ? [" · ", el("span", {}, `finished in ${formatDuration(ms(run.finishedAt) - ms(run.createdAt))}`)] : null,
        run.node ? [" · ", el("span", { class: "run-node" }, run.status === "RUNNING" ? "on " : "last on ",
          nodeTag(run.node, { "data-role": "run-node", title: run.status === "RUNNING" ? "the node executing this run" : "the node that executed this run last" }, "node "))] : null,
        " · ", el("code", { class: "run-id" }, id)),
      actionsFor(run, titleId));

    const message = state.runMessages.get(id);
    const children = [
      head,
      el("p", { class: `run-msg ${message ? message.kind : ""}`, role: "status", "aria-live": "polite", "data-role": "run-msg" },
        message ? message.text : ""),
    ];
    if (run.error) {
      children.push(el("p", { class: "run-error", "data-role": "run-error" },
        `Failed${run.error.step ? ` at ${run.error.step}` : ""}: ${run.error.message || JSON.stringify(run.error)}`));
    }
    if (detail && detail.detailsDropped) {
      children.push(el("p", { class: "hint", "data-role": "details-dropped" },
        "Step details and timeline dropped by retention ", timeEl(detail.detailsDropped, "ago"),
        "; the user's record and risk decision are kept."));
    }
    if (detail) {
      children.push(el("ol", { class: "steps", "aria-label": "steps" },
        ...orderSteps(detail.steps).map((step, i) => renderStep(step, i, detail))));
      children.push(renderTimeline(id, detail.timeline));
    } else {
      children.push(el("p", { class: "hint" }, "Loading steps…"));
    }
    return el("article", {
      class: `run r-${run.status}`, "data-run-id": id, "data-status": run.status,
      "data-user-status": run.userStatus, "aria-labelledby": titleId,
    }, ...children);
  }

  function orderSteps(steps) {
    return [...steps].sort((a, b) => {
      const ia = STEP_ORDER.indexOf(a.id), ib = STEP_ORDER.indexOf(b.id);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
  }

  function actionsFor(run, titleId) {
    const buttons = [];
    if (!canAct()) return el("div", { class: "actions" });  // a viewer reads; the server would refuse (403)
    const action = (name, label, handler) => el("button", {
      type: "button", class: `action a-${name}`, "data-action": name, "data-focus": `action-${name}`,
      "aria-describedby": titleId, onclick: (event) => handler(run, event.currentTarget),
    }, label);
    if (run.status === "FAILED") buttons.push(action("retry", "Retry", retryRun));
    if (run.status === "WAITING" && run.userStatus === "PENDING") buttons.push(action("resend", "Resend link", resendLink));
    if (run.status === "RUNNING" || run.status === "WAITING") buttons.push(action("cancel", "Cancel", cancelRun));
    return el("div", { class: "actions" }, ...buttons);
  }

  function deadlinesOf(step, detail) {
    if (step.deadlines && typeof step.deadlines === "object") return step.deadlines;
    // Older servers: the deadlines are only in the "waiting" timeline entry.
    const entry = [...(detail.timeline || [])].reverse().find((e) => e.type === "waiting" && e.step === step.id);
    if (!entry) return null;
    const found = {};
    for (const match of entry.message.matchAll(/;\s*([\w-]+) at (\S+)/g)) found[match[1]] = match[2];
    return Object.keys(found).length ? found : null;
  }

  function renderStep(step, index, detail) {
    const attempts = step.attempts || [];
    const failed = attempts.filter((a) => a.error);
    const last = attempts[attempts.length - 1];
    const isCurrent = detail.currentStep === step.id && !["COMPLETED", "CANCELLED", "FAILED"].includes(detail.status);
    const parts = [
      el("div", { class: "step-top" },
        el("span", { class: "step-n", "aria-hidden": "true" }, String(index + 1)),
        el("span", { class: "step-name" }, step.name)),
      el("div", { class: "step-status" }, badge(step.status)),
    ];
    const meta = [];
    if (attempts.length) meta.push(plural(attempts.length, "attempt"));
    if (step.durationMs !== null && step.durationMs !== undefined) {
      meta.push(step.kind === "wait" ? `waited ${formatDuration(step.durationMs)}` : formatDuration(step.durationMs));
    }
    if (meta.length) {
      parts.push(el("div", { class: "step-meta", "data-role": "attempts", "data-attempts": attempts.length,
        title: step.durationMs != null ? `took ${formatDuration(step.durationMs)}, from the first attempt to the last` : null }, meta.join(" · ")));
    }
    const onNodes = attempts.filter((a) => a.node);
    if (onNodes.length) {
      // All on one node (always so on a data dir): said once; else beside each attempt.
      const one = onNodes.length === attempts.length && onNodes.every((a) => a.node === onNodes[0].node);
      parts.push(el("div", { class: "step-nodes", "data-role": "attempt-nodes" }, one
        ? ["on ", nodeTag(onNodes[0].node, { "data-attempts": onNodes.map((a) => a.number).join(","),
          title: attempts.length === 1 ? `attempt 1 on node ${onNodes[0].node}` : `every attempt on node ${onNodes[0].node}` }, "node ")]
        : onNodes.map((a) => nodeTag(a.node, { "data-attempts": String(a.number), title: `attempt ${a.number} on node ${a.node}` },
          `attempt ${a.number} on node `, `#${a.number} `))));
    }
    if (last && !last.finishedAt && step.status === "RUNNING") {
      parts.push(el("div", { class: "step-meta" }, `attempt ${last.number} running `, timeEl(last.startedAt, "elapsed")));
    }
    if (step.status === "RETRYING" && step.retryAt) {
      const node = el("div", { class: "step-retry", "data-role": "retry-at" }, "retry ", timeEl(step.retryAt, "until"));
      node.title = `next attempt at ${clock(step.retryAt, true)}`;
      parts.push(node);
    }
    if (step.status === "WAITING" && step.startedAt) {
      parts.push(el("div", { class: "step-meta" }, "waiting for ", timeEl(step.startedAt, "elapsed")));
    }
    if (failed.length) {
      // Consecutive attempts that failed the same way share one line: "#1 #2 #3 TransientEmailError: …".
      const groups = [];
      for (const a of failed) {
        const prev = groups[groups.length - 1];
        if (prev && prev.error === a.error) prev.attempts.push(a); else groups.push({ error: a.error, attempts: [a] });
      }
      parts.push(el("ul", { class: "attempt-errors", "aria-label": "failed attempts" },
        ...groups.map((g) => el("li", {
          class: "attempt-error", "data-attempts": g.attempts.map((a) => a.number).join(","),
          title: g.attempts.map((a) => `attempt ${a.number}: ${clock(a.startedAt)}, ${a.finishedAt ? formatDuration(ms(a.finishedAt) - ms(a.startedAt)) : "unfinished"}`).join("\n"),
        },
          el("span", { class: "attempt-no" }, g.attempts.map((a) => `#${a.number}`).join(" ")), " ",
          el("span", { class: "attempt-text" }, g.error)))));
    }
    const risk = step.id === "ai-risk-check" && step.output && step.output.decision ? step.output : null;
    if (risk) {
      parts.push(el("div", { class: "step-risk", "data-role": "risk" },
        badge(risk.decision), ` score ${Number(risk.score).toFixed(2)} · ${risk.source}`));
      if (risk.reasons && risk.reasons.length) {
        parts.push(el("ul", { class: "step-reasons", "aria-label": "risk reasons" }, ...risk.reasons.map((r) => el("li", {}, r))));
      }
    }
    if (step.kind === "wait") {
      const deadlines = deadlinesOf(step, detail);
      if (deadlines && step.status === "WAITING") {
        parts.push(el("dl", { class: "deadlines", "data-role": "deadlines" },
          ...Object.entries(deadlines).filter(([, at]) => at).flatMap(([name, at]) => [
            el("dt", {}, name),
            el("dd", { title: `${name} at ${clock(at, true)} (${at})` }, timeEl(at, "until")),
          ])));
      }
      if (step.output && step.output.receivedAt) {
        parts.push(el("div", { class: "step-meta" }, "verified ", timeEl(step.output.receivedAt, "ago")));
      }
    }
    return el("li", {
      class: `step s-${step.status}${isCurrent ? " current" : ""}`, "data-step": step.id, "data-status": step.status,
      "aria-current": isCurrent ? "step" : null,
    }, ...parts);
  }

  function renderTimeline(id, timeline) {
    const entries = timeline || [];
    const details = el("details", { class: "timeline", "data-role": "timeline", open: state.openTimelines.has(id) },
      el("summary", { "data-focus": "timeline" }, `Timeline · ${entries.length} ${entries.length === 1 ? "entry" : "entries"}`),
      el("ol", { class: "timeline-list" }, ...entries.slice(-300).map(timelineEntry)));
    details.addEventListener("toggle", () => {
      if (details.open) state.openTimelines.add(id); else state.openTimelines.delete(id);
    });
    return details;
  }

  // Webhook attempts (seq null) come from the deliveries, not from the run's own records.
  function timelineEntry(e) {
    const webhook = e.seq === null || String(e.type).startsWith("webhook-");
    return el("li", {
      class: `t-${e.type}${webhook ? " t-webhook" : ""}`, "data-type": e.type,
      title: webhook ? "a webhook delivery: kept by the webhook sender, beside the run's own records" : null,
    },
      el("time", { datetime: e.at, title: e.at }, clock(e.at)),
      el("span", { class: "t-type" }, e.type),
      el("span", { class: "t-msg" }, e.message),
      e.node ? nodeTag(e.node, { class: "node-tag t-node", title: `recorded by node ${e.node}` }) : el("span", { class: "t-node" }));
  }

  // -- operator actions -------------------------------------------------------------

  async function runAction(run, button, path, busyText, doneText) {
    button.disabled = true;
    setRunMessage(run.id, busyText, "busy");
    const answer = await api(path, { method: "POST" });
    if (answer.ok) {
      setRunMessage(run.id, doneText, "ok");
    } else {
      let text = answer.message;
      const wait = answer.headers && answer.headers.get("Retry-After");
      if (answer.status === 429 && wait && !/\d+\s*s\b/.test(text)) text += ` (try again in ${wait} s)`;
      setRunMessage(run.id, `${answer.status ? `${answer.status}: ` : ""}${text}`, "error");
      button.disabled = false;
      if (answer.status === 403) whoami();  // e.g. now a viewer: the buttons go
    }
    scheduleRun(run.id, 0);  // the truth, even if the event stream is down
    return answer;
  }

  function setRunMessage(id, text, kind) {
    state.runMessages.set(id, { text, kind });
    const card = cards.get(id);
    const node = card && $("[data-role=run-msg]", card);
    if (node) {
      node.textContent = text;
      node.className = `run-msg ${kind}`;
    }
  }

  const retryRun = (run, button) => runAction(run, button, `/api/workflows/${encodeURIComponent(run.id)}/retry`, "Retrying…", "Retry accepted: the failed step runs again.");
  const cancelRun = (run, button) => runAction(run, button, `/api/workflows/${encodeURIComponent(run.id)}/cancel`, "Cancelling…", "Cancelled.");
  async function resendLink(run, button) {
    const answer = await runAction(run, button, `/api/users/${encodeURIComponent(run.userId)}/resend-verification`,
      "Sending a new link…", "A new link is on its way; the old one no longer works.");
    if (answer.ok) scheduleOutbox();
  }

  // -- retry every failed run: a button, then a confirmation in the page ----------------

  function renderBulk(failed) {
    const offered = canAct() && failed > 0;
    if (!offered) state.confirmingRetryAll = false;
    const bulk = $("#bulk");
    const active = document.activeElement;
    const hadFocus = active && bulk.contains(active);
    bulk.hidden = !offered;
    const known = Boolean(state.overview);  // counted over the whole store
    $("#retry-failed").hidden = state.confirmingRetryAll;
    $("#retry-failed-note").hidden = state.confirmingRetryAll;
    $("#retry-failed-note").textContent = known ? `${plural(failed, "run")} failed` : "";
    $("#retry-failed-confirm").hidden = !state.confirmingRetryAll;
    $("#retry-failed-q").textContent = known
      ? `Retry ${failed === 1 ? "the failed run" : `all ${failed} failed runs`}, each from the step it failed at?`
      : "Retry every failed run, each from the step it failed at?";
    if (hadFocus && active.closest("[hidden]")) $("#bulk-msg").focus({ preventScroll: true });
  }

  function bulkMessage(text, kind) {
    const node = $("#bulk-msg");
    node.textContent = text;
    node.className = `run-msg ${kind}`;
  }

  function confirmRetryAll(on) {
    state.confirmingRetryAll = on;
    renderList();
    const target = on ? $("#retry-failed-yes") : $("#retry-failed");
    if (!target.closest("[hidden]")) target.focus();
  }

  async function retryAllFailed() {
    const yes = $("#retry-failed-yes"), no = $("#retry-failed-no");
    yes.disabled = no.disabled = true;
    bulkMessage("Retrying every failed run…", "busy");
    const answer = await api("/api/workflows/failed/retry", { method: "POST" });
    yes.disabled = no.disabled = false;
    state.confirmingRetryAll = false;
    if (answer.ok) {
      const ids = answer.body.workflowIds || [];
      const n = answer.body.retried;
      bulkMessage(n ? `Retried ${plural(n, "failed run")}: each runs again from the step it failed at.`
        : "No run was failed any more: nothing to retry.", "ok");
      // The truth, even if the event stream is down: the page's rows, the open runs, the counts.
      for (const id of ids) if (shown(id)) scheduleRun(id, 0);
      loadPage();
      scheduleOverview();
    } else {
      bulkMessage(`${answer.status ? `${answer.status}: ` : ""}${answer.message}`, "error");
      if (answer.status === 403) whoami();
    }
    renderList();
    $("#bulk-msg").focus({ preventScroll: true });  // the buttons may be gone: the result has the focus
  }

  $("#retry-failed").addEventListener("click", () => { bulkMessage("", ""); confirmRetryAll(true); });
  $("#retry-failed-no").addEventListener("click", () => confirmRetryAll(false));
  $("#retry-failed-yes").addEventListener("click", retryAllFailed);
  $("#retry-failed-confirm").addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); confirmRetryAll(false); }
  });

  // -- rendering: outbox --------------------------------------------------------------

  function tokenOf(link) {
    try { return new URL(link, location.href).searchParams.get("token"); } catch { return null; }
  }

  function safeHref(link) {
    try {
      const url = new URL(link, location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch { return null; }
  }

  function renderOutbox() {
    if (!state.outboxEnabled) return;
    const list = $("#outbox");
    const newestLink = new Map();  // workflowId -> link of its newest email
    for (const email of state.outbox) if (!newestLink.has(email.workflowId)) newestLink.set(email.workflowId, email.link);
    $("#outbox-count").textContent = state.outbox.length ? `(${state.outbox.length})` : "";
    const active = document.activeElement;
    const focusKey = active && list.contains(active) ? active.dataset.focus : null;
    const items = state.outbox.map((email) => {
      const user = state.users.get(email.userId);
      const run = state.runs.get(email.workflowId);
      const verified = Boolean(user && user.verifiedAt);
      const replaced = newestLink.get(email.workflowId) !== email.link;
      const closed = run && ["CANCELLED", "COMPLETED"].includes(run.status) && !verified;
      const message = state.mailMessages.get(email.messageId);
      const href = safeHref(email.link);
      // A viewer only reads: the state instead of the button.
      const button = canAct() ? el("button", {
        type: "button", class: "verify-btn", "data-action": "verify", "data-focus": `verify-${email.messageId}`,
        disabled: verified, "aria-describedby": `mail-${email.messageId}`,
        onclick: (event) => verifyEmail(email, event.currentTarget),
      }, verified ? "Verified ✓" : "Verify email")
        : el("span", { class: `mail-state${verified ? " verified" : ""}` }, verified ? "Verified ✓" : "not verified yet");
      let note = null;
      if (!verified && replaced) note = "replaced by a newer link";
      else if (!verified && closed) note = run.outcome === "expired" ? "link expired" : `run ${run.status.toLowerCase()}`;
      return el("li", { class: "mail", "data-to": email.to, "data-kind": email.kind, "data-workflow-id": email.workflowId },
        el("div", { class: "mail-head" },
          el("span", { class: `badge k-${email.kind}` }, email.kind),
          el("span", { class: "mail-time" }, "sent ", timeEl(email.sentAt, "ago"))),
        el("div", { class: "mail-subject", id: `mail-${email.messageId}` }, email.subject),
        el("div", { class: "mail-to" }, "to ", el("span", { class: "addr" }, email.to)),
        href ? el("a", { class: "mail-link", href, target: "_blank", rel: "noopener noreferrer" }, email.link)
          : el("span", { class: "mail-link" }, email.link),
        el("div", { class: "mail-actions" }, button,
          note ? el("span", { class: "mail-note" }, note) : null,
          el("span", { class: `mail-msg ${message ? message.kind : ""}`, role: "status", "aria-live": "polite" }, message ? message.text : "")));
    });
    list.replaceChildren(...items);
    if (!items.length) list.append(el("li", { class: "hint empty" }, "No emails yet."));
    if (focusKey) {
      const again = list.querySelector(`[data-focus="${CSS.escape(focusKey)}"]`);
      if (again && !again.disabled) again.focus({ preventScroll: true });
    }
  }

  async function verifyEmail(email, button) {
    const token = tokenOf(email.link);
    button.disabled = true;
    const answer = await api("/api/verify", { json: { token } });
    state.mailMessages.set(email.messageId, answer.ok
      ? { text: "Verified: the run continues.", kind: "ok" }
      : { text: `${answer.status ? `${answer.status}: ` : ""}${answer.message}`, kind: "error" });
    if (!answer.ok) button.disabled = false;
    renderOutbox();
    scheduleRun(email.workflowId, 0);
  }

  // -- rendering: webhook deliveries ---------------------------------------------------

  function userLabel(userId, runId) {
    const user = state.users.get(userId);
    if (user && user.email) return user.email;
    const run = state.runs.get(runId);
    return (run && run.email) || userId || "unknown user";
  }

  function renderDeliveries() {
    const card = $("#webhooks-card");
    card.hidden = !state.deliveriesSeen;
    if (!state.deliveriesSeen) return;
    const all = [...state.deliveries.values()].sort(byNewest);
    const counts = { "": all.length };
    for (const d of all) counts[d.status] = (counts[d.status] || 0) + 1;
    for (const button of document.querySelectorAll("#delivery-filters button")) {
      $(".n", button).textContent = String(counts[button.dataset.filter] || 0);
    }
    $("#deliveries-count").textContent = `(${all.length})`;
    const shown = all.filter((d) => !state.deliveryFilter || d.status === state.deliveryFilter);
    const list = $("#deliveries");
    const active = document.activeElement;
    const focusKey = active && list.contains(active) ? active.dataset.focus : null;
    list.replaceChildren(...shown.map(deliveryItem));
    const empty = $("#deliveries-empty");
    empty.hidden = shown.length > 0;
    empty.textContent = state.deliveryFilter ? `No ${state.deliveryFilter} deliveries.` : "No deliveries yet.";
    $("#deliveries-more").hidden = !state.deliveryCursor;
    if (focusKey) {
      // The same control again; else (a Send again that is gone) its delivery.
      const again = [focusKey, focusKey.replace(/^redeliver-/, "delivery-")]
        .map((key) => list.querySelector(`[data-focus="${CSS.escape(key)}"]`))
        .find((node) => node && !node.disabled);
      // Gone from this filter (sent again from "Failed"): to the filter, not to the page's start.
      (again || $("#delivery-filters [aria-pressed=true]")).focus({ preventScroll: true });
    }
  }

  function deliveryItem(d) {
    const attempts = d.attempts || [];
    const last = attempts[attempts.length - 1];
    const headId = `dlv-${d.id}`;
    const message = state.deliveryMessages.get(d.id);
    const when = [];
    if (d.status === "pending") {
      if (d.nextAttemptAt) {
        when.push(el("span", { class: "dl-next", "data-role": "next-attempt", title: `next attempt at ${clock(d.nextAttemptAt, true)}` },
          "next attempt ", timeEl(d.nextAttemptAt, "until")));
      } else {
        // Not scheduled yet: in order per user, it waits for that user's earlier events to this URL.
        when.push(el("span", { class: "dl-next" }, attempts.length ? "attempt under way" : "queued behind this user's earlier events"));
      }
    } else if (last) {
      when.push(el("span", {}, d.status === "delivered" ? "delivered " : "given up ", timeEl(last.at, "ago")));
    }
    const resent = (d.resent || []).at(-1);
    const meta = [
      el("span", { class: "dl-url" }, "to ", el("code", {}, d.url)),
      el("span", { class: "dl-attempts", "data-role": "attempts", "data-attempts": attempts.length }, plural(attempts.length, "attempt")),
      ...when,
      resent ? el("span", { class: "dl-resent" }, `sent again by ${resent.by} `, timeEl(resent.at, "ago")) : null,
    ].filter(Boolean);
    const lastError = [...attempts].reverse().find((a) => a.error);
    const button = canAct() && d.status === "failed" ? el("button", {
      type: "button", class: "action a-redeliver", "data-action": "redeliver", "data-focus": `redeliver-${d.id}`,
      // Busy: aria-disabled, not disabled, so the keyboard focus stays on it.
      "aria-disabled": state.resending.has(d.id) ? "true" : null,
      "aria-describedby": headId, onclick: (event) => sendAgain(d, event.currentTarget),
    }, "Send again") : null;
    return el("li", {
      class: `delivery dl-${d.status}`, "data-delivery-id": d.id, "data-status": d.status, "data-type": d.type,
      "data-url": d.url, "data-workflow-id": d.workflowId, "data-focus": `delivery-${d.id}`, tabindex: "-1",
      "aria-labelledby": headId,
    },
      el("div", { class: "dl-head", id: headId },
        el("span", { class: "badge dl-type" }, d.type),
        el("span", { class: "dl-user" }, el("span", { class: "visually-hidden" }, "for "), userLabel(d.userId, d.workflowId)),
        el("span", { class: `badge b-${d.status}`, "data-role": "delivery-status" }, d.status)),
      el("div", { class: "dl-meta" }, ...meta.flatMap((part, i) => (i ? [" · ", part] : [part]))),
      lastError ? el("div", { class: `dl-error${d.status === "delivered" ? " dl-error-old" : ""}`, "data-role": "last-error",
        title: `attempt ${attempts.indexOf(lastError) + 1} at ${clock(lastError.at, true)}` },
        d.status === "delivered" ? "earlier error: " : "last error: ", lastError.error) : null,
      button ? el("div", { class: "dl-act" }, button) : null,
      message ? el("p", { class: `dl-msg ${message.kind}`, "data-role": "delivery-msg" }, message.text) : null);
  }

  function tellDelivery(d, message) {
    state.deliveryMessages.set(d.id, message);
    $("#deliveries-live").textContent = `${d.type} to ${d.url}: ${message.text}`;
    renderSoon("deliveries");
  }

  async function sendAgain(d, button) {
    if (button.getAttribute("aria-disabled") === "true") return;
    button.setAttribute("aria-disabled", "true");
    // Before the request: its outcome may come on the event stream before the answer does.
    state.resending.set(d.id, deliveryVersion(d));
    tellDelivery(d, { text: "Sending again…", kind: "busy" });
    const answer = await api(`/api/webhooks/deliveries/${encodeURIComponent(d.id)}/retry`, { method: "POST" });
    if (answer.ok) {
      if (state.resending.has(d.id)) tellDelivery(d, { text: "Sent again: one more attempt, with the same webhook-id.", kind: "busy" });
      putDelivery(answer.body, false);
    } else {
      state.resending.delete(d.id);
      tellDelivery(d, { text: `${answer.status ? `${answer.status}: ` : ""}${answer.message}`, kind: "error" });
      button.removeAttribute("aria-disabled");
      if (answer.status === 403) whoami();
      loadDeliveries(false);  // the truth, e.g. after a 409
    }
  }

  for (const button of document.querySelectorAll("#delivery-filters button")) {
    button.addEventListener("click", () => {
      state.deliveryFilter = button.dataset.filter;
      for (const other of document.querySelectorAll("#delivery-filters button")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      state.deliveryCursor = null;
      renderDeliveries();
      loadDeliveries(false);  // older deliveries of this status than the ones loaded
    });
  }
  $("#deliveries-more").addEventListener("click", () => loadDeliveries(true));

  // -- rendering: users ----------------------------------------------------------------

  function renderUsers() {
    const users = [...state.users.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
    const rows = users.map((u) => {
      const risk = u.risk;
      // An erased user keeps its id, status and decision; who it was is gone.
      const erased = u.erasedAt ? el("span", { class: "muted" }, "erased") : null;
      return el("tr", { "data-user-id": u.id, "data-email": u.email || "", "data-status": u.status },
        el("td", { "data-label": "Email", class: "u-email" }, u.email || erased),
        el("td", { "data-label": "Name", class: "u-name" }, u.name || (erased && erased.cloneNode(true))),
        el("td", { "data-label": "Status", class: "u-status" }, badge(u.status)),
        el("td", { "data-label": "Risk", class: "u-risk" }, risk ? badge(risk.decision) : el("span", { class: "muted" }, "—")),
        el("td", { "data-label": "Score", class: "u-score" }, risk ? Number(risk.score).toFixed(2) : "—"),
        el("td", { "data-label": "Reasons", class: "u-reasons" },
          risk && risk.reasons && risk.reasons.length
            ? el("ul", { class: "reasons" }, ...risk.reasons.map((r) => el("li", {}, r)))
            : el("span", { class: "muted" }, risk ? "none given" : "not assessed yet")),
        el("td", { "data-label": "Source", class: "u-source" }, risk ? risk.source + (risk.model ? ` (${risk.model})` : "") : "—"));
    });
    $("#users tbody").replaceChildren(...rows);
    $("#users-empty").hidden = rows.length > 0;
    $("#users-count").textContent = rows.length ? `(${rows.length})` : "";
  }

  // -- the signup form ---------------------------------------------------------------

  const form = $("#signup-form");
  const fields = { name: $("#signup-name"), email: $("#signup-email") };

  function fieldError(name, text) {
    const input = fields[name];
    const slot = $(`#signup-${name}-err`);
    slot.textContent = text || "";
    slot.hidden = !text;
    if (text) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }

  function formMessage(text, kind) {
    const node = $("#signup-msg");
    node.textContent = text;
    node.className = `form-msg ${kind || ""}`;
  }

  function checkForm() {
    const name = fields.name.value.trim();
    const email = fields.email.value.trim();
    const errors = {};
    if (!name) errors.name = "Enter a name.";
    if (!email) errors.email = "Enter an email address.";
    else if (!/^[^\s@]+@[^\s@]+$/.test(email)) errors.email = "Enter an email address like ann@example.com.";
    fieldError("name", errors.name);
    fieldError("email", errors.email);
    return errors;
  }

  for (const input of Object.values(fields)) {
    input.addEventListener("input", () => { if (input.getAttribute("aria-invalid")) fieldError(input.name, ""); });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errors = checkForm();
    if (Object.keys(errors).length) {
      formMessage("Please fix the highlighted fields.", "error");
      fields[errors.name ? "name" : "email"].focus();
      return;
    }
    const submit = $("#signup-submit");
    submit.disabled = true;
    formMessage("Signing up…", "busy");
    const answer = await api("/api/signup", { json: { name: fields.name.value, email: fields.email.value } });
    submit.disabled = false;
    if (answer.ok) {
      formMessage(`Signed up ${fields.email.value.trim()}: workflow ${answer.body.workflowId} is ${answer.body.status}.`, "ok");
      form.reset();
      scheduleRun(answer.body.workflowId, 0);
    } else {
      formMessage(answer.message, "error");
      const field = /^(email|name):/.exec(answer.message || "");
      if (field) fields[field[1]].setAttribute("aria-invalid", "true");
    }
  });

  // -- filters, search and paging ------------------------------------------------------

  // A new list of runs (another filter, search or page): the rows go at once,
  // "Loading…" until the answer; the live region says what is shown then.
  async function goTo(start, stack) {
    state.pageStack = stack;
    state.rows = [];
    state.pageStart = start;
    state.nextCursor = null;
    state.pageLoaded = false;
    renderList();
    if (!(await loadPage(start))) return;
    renderList();  // now, not at the next frame: what is told is what is shown
    tellPage();
  }

  function tellPage() {
    const n = state.rows.length;
    const range = $("#runs-range").textContent;
    $("#runs-live").textContent = state.query
      ? (n ? `Found the run for ${state.query}.` : $("#runs-empty").textContent)
      : n ? `Showing runs ${range || `1–${n}`}.` : $("#runs-empty").textContent;
  }

  for (const button of document.querySelectorAll("#filters button")) {
    button.addEventListener("click", () => {
      state.filter = button.dataset.filter;
      for (const other of document.querySelectorAll("#filters button")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      goTo(null, []);
    });
  }

  $("#runs-older").addEventListener("click", () => {
    if (!state.nextCursor) return;
    goTo(state.nextCursor, [...state.pageStack, state.pageStart]).then(showTableTop);
  });
  $("#runs-newer").addEventListener("click", () => {
    if (!state.pageStart) return;
    const stack = [...state.pageStack];
    goTo(stack.pop() || null, stack).then(showTableTop);
  });
  // The pager is under the table: the new page starts above, maybe out of sight.
  function showTableTop() {
    const head = $("#runs-table thead");
    if (head.getBoundingClientRect().top < 0) $("#runs-h").scrollIntoView({ block: "start" });
  }

  const search = $("#runs-q");
  $("#runs-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = search.value.trim();
    goTo(null, []);
  });
  // Cleared (its x, Escape, or deleting the text): back to the list.
  search.addEventListener("input", () => {
    if (!search.value.trim() && state.query) {
      state.query = "";
      goTo(null, []);
    }
  });

  // -- start -------------------------------------------------------------------------

  $("#sign-out").addEventListener("click", (event) => signOut(event.currentTarget));

  // Who is signed in first: no stream and no lists for a page that goes to /signin.
  async function start() {
    let delay = 500;
    for (;;) {
      const answer = await whoami();
      if (answer.ok || leaving) break;
      setConnection("offline");  // starting (503) or unreachable: try again
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
    if (leaving) return;
    connect();
    scheduleNodes(0);
  }

  renderList();
  renderOutbox();
  renderUsers();
  setInterval(tick, 1000);
  start();
})();
