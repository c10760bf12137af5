// The console of CONTRACT.md ("Browser pages"): this server's API, from the
// same origin, for a person. Top to bottom, the flow: talking to the API,
// signing up or in, the account (profile, stats, report), the leaderboard,
// the users, and leaving (log out, password change, deletion). What the API
// refuses is shown in its own words: the `message` of its JSON errors.

const $ = (selector) => document.querySelector(selector);

// The token is this tab's alone: sessionStorage, never a cookie or localStorage.
let token = sessionStorage.getItem("token");
let me = null; // the signed-in user, as the API returns it
let leaving = new AbortController(); // aborted on sign-out: ends a wait for the report

// Talking to the API

class ApiError extends Error {
  constructor(status, message, retryAfter = 0) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from a 429's or 503's Retry-After
  }
}

function api(method, path, { body, headers = {}, signal } = {}) {
  // no-store: always the server's answer now, never a copy the browser kept
  const init = { method, headers: { ...headers }, signal, cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  return fetch(path, init);
}

// Stats go up to 2**63-1, past what a JS number holds exactly: integers are
// read from the digits as written (and sent that way: the stats form).
const exactly = (key, value, context) =>
  typeof value === "number" && context?.source && !/[.eE]/.test(context.source)
    ? context.source
    : value;

// A success's body; else the API's message, thrown.
async function check(response) {
  const text = await response.text();
  if (response.ok) return text ? JSON.parse(text, exactly) : null;
  let message = `The server answered ${response.status}.`;
  try {
    message = JSON.parse(text).message ?? message;
  } catch {} // not JSON: say the status
  throw new ApiError(response.status, message, Number(response.headers.get("Retry-After")));
}

const call = async (method, path, options) => check(await api(method, path, options));

function announce(text) {
  $("#status").textContent = text;
}

// Every form: the API's refusal shown in the form, on the field it names;
// after a Retry-After, the form sends nothing until that time has passed.
// The action gets the fields, and the button that sent them.
function handle(form, action) {
  let busy = false; // not disabled: a disabled button would lose the focus
  let heldUntil = 0;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const held = Math.ceil((heldUntil - Date.now()) / 1000);
    if (held > 0) announce(`The server asked for a pause: send again in ${held} s.`);
    if (busy || held > 0) return;
    busy = true;
    form.setAttribute("aria-busy", "true");
    clearError(form);
    try {
      await action(Object.fromEntries(new FormData(form)), event.submitter);
    } catch (error) {
      heldUntil = Date.now() + (error.retryAfter || 0) * 1000;
      refused(form, error);
    } finally {
      busy = false;
      form.removeAttribute("aria-busy");
    }
  });
}

function clearError(form) {
  form.querySelector(".error").hidden = true;
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby");
  }
}

function refused(form, error) {
  if (error.name === "AbortError") return; // signed out meanwhile
  if (!(error instanceof ApiError)) error = new ApiError(0, "The server could not be reached.");
  if (error.status === 401 && token) {
    signOut("Your session has ended: log in again.");
    return;
  }
  const out = form.querySelector(".error");
  out.textContent = error.message;
  out.hidden = false;
  const field = /'([a-z_]+)'/.exec(error.message)?.[1]; // the API names a field 'so'
  const input = field && form.elements?.namedItem(field); // a form's, not a section's
  if (input instanceof HTMLInputElement && !input.hidden) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", out.id);
    input.focus();
  }
}

// Signing up or in

handle($("#sign-up"), async (fields) => {
  const body = { username: fields.username, password: fields.password };
  if (fields.email) body.email = fields.email;
  if (fields.gender) body.gender = fields.gender;
  token = null;
  const created = await call("POST", "/users", { body });
  signedIn(created.user, created.token);
});

handle($("#log-in"), async ({ username, password }) => {
  token = null;
  const loggedIn = await call("POST", "/login", { body: { username, password } });
  token = loggedIn.token;
  signedIn(await call("GET", "/users/me"), loggedIn.token);
});

function signedIn(user, newToken) {
  token = newToken;
  sessionStorage.setItem("token", token);
  leaving = new AbortController();
  for (const form of document.forms) form.reset();
  showMe(user);
  $("#signed-out").hidden = true;
  $("#account").hidden = false;
  announce(`Signed in as ${user.username}.`);
  $("#account-heading").focus();
  loadStats().catch((error) => refused($("#stats"), error));
  showReportState("Looking for your report…");
  watchReport().catch((error) => refused($("#report"), error));
  $("#leaderboard-by").value = "victory_count";
  showLeaderboard(leaderboardPath("victory_count"));
  firstUsersPage();
}

function showMe(user) {
  me = user;
  $("#me-name").textContent = user.username;
  const profile = $("#profile").elements;
  for (const name of ["username", "email", "gender", "profile_pic"]) {
    profile.namedItem(name).value = user[name] ?? "";
  }
  $("#password").elements.namedItem("username").value = user.username; // for password managers
}

// The account: profile and stats

handle($("#profile"), async (fields) => {
  const body = { username: fields.username };
  for (const name of ["email", "gender", "profile_pic"]) body[name] = fields[name] || null;
  showMe(await call("PATCH", me.self, { body }));
  announce("Profile saved.");
  showUsers($("#users").dataset.path);
  refreshLeaderboard(); // the new username
});

async function loadStats() {
  showStats(await call("GET", me.stats));
}

function showStats(stats) {
  for (const [name, value] of Object.entries(stats)) {
    $("#stats").elements.namedItem(name).value = value;
  }
}

handle($("#stats"), async (fields) => {
  // Digits go as they are (a JSON integer of any size); anything else as a
  // string, for the API to refuse in its own words.
  const value = (text) => (/^-?(0|[1-9][0-9]*)$/.test(text) ? text : JSON.stringify(text));
  const body = `{${Object.entries(fields)
    .map(([name, text]) => `${JSON.stringify(name)}:${value(text.trim())}`)
    .join(",")}}`;
  showStats(await call("PUT", me.stats, { body }));
  announce("Stats saved.");
  refreshLeaderboard(); // the new values, and ranks
});

// The report: POST asks for one; GET with Prefer: wait=10 answers as soon as
// the first one is done, and a 202 (still pending) is asked again only after
// its Retry-After. GET always has the newest finished report: a newer one is
// watched for with If-None-Match, whose 304 (not yet) is asked again each second.

let reportUrl = null; // the object URL of the PDF on show
let reportEtag = null; // and its ETag

handle($("#report"), async () => {
  await call("POST", me.pdf);
  showReportState("Pending: the report is being made…");
  await watchReport(reportEtag);
});

async function watchReport(newerThan = null) {
  const { signal } = leaving;
  const headers = { Prefer: "wait=10" };
  if (newerThan) headers["If-None-Match"] = newerThan;
  for (let asked = 1; ; asked++) {
    const response = await api("GET", me.pdf, { headers, signal });
    const pending = response.status === 202 || (response.status === 304 && asked < 60);
    if (!pending) return reportArrived(response);
    showReportState("Pending: the report is being made…");
    await pause(Number(response.headers.get("Retry-After")) || 1, signal);
  }
}

async function reportArrived(response) {
  if (response.status === 304) {
    showReportState("The new report is not ready yet; the last one is shown below.");
  } else if (response.status === 404) {
    showReportState("No report yet: request one.");
  } else if (!response.ok) {
    showReportState("No report to show.");
    await check(response); // throws the API's message
  } else {
    showPdf(await response.blob(), response.headers);
  }
}

function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    const stop = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", stop, { once: true });
  });
}

function showReportState(text) {
  $("#report-status").textContent = text; // a live region of its own
}

function showPdf(blob, headers) {
  forgetPdf();
  reportUrl = URL.createObjectURL(blob);
  reportEtag = headers.get("ETag");
  const frame = $("#report-frame");
  frame.src = reportUrl;
  frame.dataset.etag = reportEtag;
  frame.hidden = false;
  const link = $("#report-link");
  link.href = reportUrl;
  link.download = /filename="([^"]+)"/.exec(headers.get("Content-Disposition"))?.[1] ?? "report.pdf";
  link.hidden = false;
  const made = new Date(headers.get("Last-Modified")).toLocaleString();
  showReportState(`Ready: the report made ${made} is shown below.`);
}

function forgetPdf() {
  if (reportUrl) URL.revokeObjectURL(reportUrl);
  reportUrl = reportEtag = null;
  $("#report-frame").removeAttribute("src");
  $("#report-frame").hidden = true;
  $("#report-link").hidden = true;
}

// The leaderboard: the users ranked by one stat, a page of 10 at a time.
// "next" is the API's Link header; "previous" is 10 before the offset on show.
// Only the answer to the newest request is shown: an older one arriving late
// (the order changed meanwhile) is dropped.

const leaderboardLimit = 10;
const leaderboardPath = (by, offset = 0) =>
  `/leaderboard?by=${by}&limit=${leaderboardLimit}&offset=${offset}`;
let leaderboardAsked = 0;

const percent = new Intl.NumberFormat("en", { style: "percent", maximumFractionDigits: 1 });
const UNITS = [["h", 3600n], ["min", 60n], ["s", 1n]]; // hours at most, as the report has them

// Counts and seconds are exact integers (digits, from `exactly`), win rates 0..1.
function valueCell(cell, by, value) {
  if (by === "win_rate") {
    cell.textContent = percent.format(Number(value));
  } else if (by === "total_time") {
    let left = BigInt(value);
    const parts = [];
    for (const [unit, size] of UNITS) {
      if (left >= size) parts.push(`${(left / size).toLocaleString("en")} ${unit}`);
      left %= size;
    }
    const time = document.createElement("time");
    time.dateTime = `PT${value}S`;
    time.textContent = parts.join(" ") || "0 s";
    cell.append(time);
  } else {
    cell.textContent = BigInt(value).toLocaleString("en");
  }
}

async function showLeaderboard(path) {
  const section = $("#leaderboard");
  const asked = ++leaderboardAsked;
  clearError(section);
  section.setAttribute("aria-busy", "true");
  let response, entries;
  try {
    response = await api("GET", path, { signal: leaving.signal });
    entries = await check(response);
  } catch (failure) {
    if (asked === leaderboardAsked) refused(section, failure);
    return;
  } finally {
    if (asked === leaderboardAsked) section.removeAttribute("aria-busy");
  }
  if (asked !== leaderboardAsked) return;
  const query = new URL(path, location.href).searchParams;
  const by = query.get("by");
  const offset = Number(query.get("offset") ?? 0);
  const order = $(`#leaderboard-by option[value="${by}"]`).textContent;
  const rows = entries.map((entry) => {
    const row = document.createElement("tr");
    row.insertCell().textContent = entry.rank;
    const name = row.insertCell();
    name.textContent = entry.username;
    if (entry.self === me?.self) {
      row.className = "me";
      name.append(" (you)");
    }
    valueCell(row.insertCell(), by, entry.value);
    return row;
  });
  $("#leaderboard tbody").replaceChildren(...rows);
  $("#leaderboard-value").textContent = order;
  const total = response.headers.get("X-Total-Count");
  $("#leaderboard-caption").textContent = entries.length
    ? `Ranked by ${order.toLowerCase()}: ${offset + 1}–${offset + entries.length} of ${total}`
    : `No one ranked here by ${order.toLowerCase()} (${total} in all)`;
  const next = /<([^>]*)>;\s*rel="next"/.exec(response.headers.get("Link") ?? "")?.[1];
  const focused = document.activeElement;
  $("#leaderboard-next").disabled = !next;
  $("#leaderboard-next").dataset.path = next ?? "";
  $("#leaderboard-previous").disabled = offset === 0;
  const previous = Math.max(0, offset - leaderboardLimit);
  $("#leaderboard-previous").dataset.path = leaderboardPath(by, previous);
  if (focused?.disabled) $("#leaderboard-caption").focus(); // its button is gone: stay in the table
  section.dataset.path = path;
}

function refreshLeaderboard() {
  showLeaderboard($("#leaderboard").dataset.path || leaderboardPath($("#leaderboard-by").value));
}

$("#leaderboard-by").addEventListener("change", (event) => {
  showLeaderboard(leaderboardPath(event.target.value));
});

for (const button of [$("#leaderboard-previous"), $("#leaderboard-next")]) {
  button.addEventListener("click", () => {
    if (!$("#leaderboard").ariaBusy) showLeaderboard(button.dataset.path);
  });
}

function forgetLeaderboard() {
  leaderboardAsked++; // an answer still on its way is not shown
  delete $("#leaderboard").dataset.path;
  $("#leaderboard tbody").replaceChildren();
  $("#leaderboard-caption").textContent = "Loading…";
  $("#leaderboard-previous").disabled = $("#leaderboard-next").disabled = true;
}

// The users, page by page: "next" is the API's Link header; "previous" is
// the page seen before it.

const usersPath = "/users?limit=10";
const pagesSeen = [];

function firstUsersPage() {
  pagesSeen.length = 0;
  showUsers(usersPath);
}

async function showUsers(path) {
  const section = $("#users");
  const error = $("#users-error");
  error.hidden = true;
  section.setAttribute("aria-busy", "true");
  let response, users;
  try {
    response = await api("GET", path);
    users = await check(response);
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
    return;
  } finally {
    section.removeAttribute("aria-busy");
  }
  const rows = users.map((user) => {
    const row = document.createElement("tr");
    for (const value of [user.id, user.username, user.email, user.gender]) {
      row.insertCell().textContent = value ?? "—";
    }
    return row;
  });
  $("#users tbody").replaceChildren(...rows);
  const offset = Number(new URL(path, location.href).searchParams.get("offset") ?? 0);
  const total = response.headers.get("X-Total-Count");
  $("#users-caption").textContent = users.length
    ? `Users ${offset + 1} to ${offset + users.length} of ${total}`
    : `No users here (${total} in all)`;
  const next = /<([^>]*)>;\s*rel="next"/.exec(response.headers.get("Link") ?? "")?.[1];
  const focused = document.activeElement;
  $("#users-next").disabled = !next;
  $("#users-next").dataset.path = next ?? "";
  $("#users-previous").disabled = pagesSeen.length === 0;
  if (focused?.disabled) $("#users-caption").focus(); // its button is gone: stay in the list
  section.dataset.path = path;
}

$("#users-next").addEventListener("click", () => {
  if ($("#users").ariaBusy) return;
  pagesSeen.push($("#users").dataset.path);
  showUsers($("#users-next").dataset.path);
});

$("#users-previous").addEventListener("click", () => {
  if ($("#users").ariaBusy) return;
  showUsers(pagesSeen.pop() ?? usersPath);
});

// Leaving: log out (here or everywhere), a password change (it revokes
// every token), deletion

function signOut(message, { username = "" } = {}) {
  leaving.abort();
  token = null;
  me = null;
  sessionStorage.removeItem("token");
  forgetPdf();
  forgetLeaderboard();
  for (const form of document.forms) form.reset();
  $("#account").hidden = true;
  $("#signed-out").hidden = false;
  announce(message);
  $("#log-in-username").value = username;
  $(username ? "#log-in-password" : "#log-in-username").focus();
}

// POST /logout ends the token on the server, then this tab forgets it. A 401
// (the token had already ended) is no news; when the server cannot be reached
// the tab forgets it all the same and says what still holds. Any other refusal
// (a 429, a 503) is shown in the API's words, still signed in, to try again.
handle($("#leave"), async (fields, button) => {
  const everywhere = button?.id === "log-out-everywhere";
  try {
    await call("POST", "/logout", everywhere ? { body: { everywhere: true } } : {});
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) throw error;
    const unreached = "the server could not be reached to end";
    if (error instanceof ApiError) signOut("Logged out.");
    else if (everywhere) signOut(`Logged out here only: ${unreached} your other sessions.`);
    else signOut(`Logged out here: ${unreached} the token.`);
    return;
  }
  signOut(everywhere ? "Logged out everywhere: every token of yours has ended." : "Logged out.");
});

handle($("#password"), async ({ current_password, password }) => {
  await call("PATCH", me.self, { body: { current_password, password } });
  signOut("Password changed: log in again with the new one.", { username: me.username });
});

const confirmDelete = $("#confirm-delete");

handle($("#delete"), async () => {
  $("#doomed-name").textContent = me.username;
  confirmDelete.showModal();
});

confirmDelete.addEventListener("close", () => {
  if (confirmDelete.returnValue !== "delete") return;
  confirmDelete.returnValue = "";
  const { username } = me;
  call("DELETE", me.self)
    .then(() => {
      signOut(`The account ${username} is deleted.`);
      firstUsersPage();
    })
    .catch((error) => refused($("#delete"), error));
});

// At the start: the tab may still hold a token (a reload)

if (token) {
  call("GET", "/users/me")
    .then((user) => signedIn(user, token))
    .catch(() => signOut("Your session has ended: log in again."));
} else {
  firstUsersPage();
}
