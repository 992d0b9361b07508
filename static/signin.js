// The sign-in page: a token pasted once becomes a session cookie (HttpOnly: no script sees it).
"use strict";
(function () {
  const form = document.getElementById("signin-form");
  const input = document.getElementById("signin-token");
  const message = document.getElementById("signin-msg");
  const notice = document.getElementById("signin-notice");
  const button = document.getElementById("signin-submit");

  // Why the dashboard sent us here: a fixed set of texts, never text from the URL.
  const NOTICES = {
    "signed-out": ["You are signed out.", "notice ok"],
    ended: ["Your session has ended (signed out, expired, or the account was removed); sign in again.", "notice"],
    accounts: ["This server has operator accounts now: sign in with your token.", "notice"],
  };
  const reason = new URLSearchParams(location.search).get("reason");
  if (reason && Object.prototype.hasOwnProperty.call(NOTICES, reason)) {
    notice.textContent = NOTICES[reason][0];
    notice.className = NOTICES[reason][1];
    notice.hidden = false;
  }

  // Already signed in (or a local server with no accounts): straight to the dashboard.
  fetch("/api/session", { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => { if (r.ok) location.replace("/"); })
    .catch(() => { /* the form still works once the server is back */ });

  function show(text, kind) {
    message.textContent = text;
    message.className = `form-msg ${kind}`;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      show("Paste your token first.", "error");
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    button.disabled = true;
    show("Signing in…", "busy");
    try {
      const response = await fetch("/api/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token }),
      });
      if (response.status === 204) {
        show("Signed in.", "ok");
        location.replace("/");
        return;
      }
      let text = `Sign-in failed: the server answered ${response.status}.`;
      try { text = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      const wait = response.headers.get("Retry-After");
      if (response.status === 429 && wait && !/\d+\s*s\b/.test(text)) text += ` (try again in ${wait} s)`;
      show(text, "error");
      input.setAttribute("aria-invalid", "true");
      input.select();
    } catch (_) {
      show("The server cannot be reached; try again.", "error");
    } finally {
      button.disabled = false;
    }
  });
  input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
})();
