/*
 * Test tools: each form posts once (with its CSRF token) and shows the server-rendered
 * outcome of the fan-out the server made. Without JavaScript the forms post as usual.
 */
(function () {
  "use strict";

  function show(target, text, isError) {
    target.textContent = "";
    var message = document.createElement("p");
    message.className = isError ? "result-error" : "muted";
    message.textContent = text;
    target.appendChild(message);
  }

  document.querySelectorAll("form[data-async]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var target = document.getElementById(form.getAttribute("data-target"));
      var button = form.querySelector("button[type=submit]");
      var label = button.textContent;
      button.disabled = true;
      button.textContent = "Running…";
      target.setAttribute("aria-busy", "true");
      show(target, "Sending the requests…", false);

      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" },
      })
        .then(function (response) {
          return response.text().then(function (text) {
            if (!response.ok || response.headers.get("X-Fragment") !== "1") {
              throw new Error("the server answered HTTP " + response.status);
            }
            target.innerHTML = text;
          });
        })
        .catch(function (error) {
          show(target, "Failed: " + error.message + ". Are you still signed in?", true);
        })
        .then(function () {
          button.disabled = false;
          button.textContent = label;
          target.removeAttribute("aria-busy");
        });
    });
  });
})();
