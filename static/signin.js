// The sign-in page: a token pasted once becomes a session cookie (HttpOnly: no script sees it).
"use strict";
(function () {
  const form = document.getElementById("signin-form");
  const input = document.getElementById("signin-token");
  const message = document.getElementById("signin-msg");
  const button = document.getElementById("signin-submit");

  // Already signed in (or a local server with no accounts): straight to the dashboard.
  fetch("/api/session", { credentials: "same-origin" }).then((r) => { if (r.ok) location.replace("/"); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      message.textContent = "Paste your token first.";
      message.className = "form-msg error";
      input.focus();
      return;
    }
    button.disabled = true;
    message.textContent = "Signing in…";
    message.className = "form-msg busy";
    try {
      const response = await fetch("/api/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
      });
      if (response.status === 204) {
        location.replace("/");
        return;
      }
      let text = "Sign-in failed.";
      try { text = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      message.textContent = text;
      message.className = "form-msg error";
      input.select();
    } catch (_) {
      message.textContent = "The server cannot be reached; try again.";
      message.className = "form-msg error";
    } finally {
      button.disabled = false;
    }
  });
})();
