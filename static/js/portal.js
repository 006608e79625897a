// The provider portal, live: its own events over SSE (/portal/api/events), and the server's
// fragments for what they name (a lead's row, the numbers), so the first render and every
// update come from the same templates.
(function () {
  "use strict";

  var root = document.querySelector("[data-portal]");
  if (!root) {
    return;
  }
  var rows = document.getElementById("portal-leads");
  var live = root.querySelector("[data-live]");
  var rowUrl = root.getAttribute("data-row-url");
  var summaryUrl = root.getAttribute("data-summary-url");
  var position = root.getAttribute("data-last-event-id") || "";
  var firstPage = !/[?&](q|page)=/.test(window.location.search) ||
    /[?&]page=1(&|$)/.test(window.location.search);
  var EVENT_TYPES = [
    "lead.allocated",
    "provider.updated",
    "quota.reset",
    "lead.returned",
    "return.decided",
    "delivery.updated",
  ];

  function fetchText(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(
      function (response) {
        if (response.status === 401 || response.status === 403) {
          showState("signed-out", "signed out: reload the page");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      }
    );
  }

  function fromHtml(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function refreshSummary() {
    fetchText(summaryUrl)
      .then(function (html) {
        var old = document.getElementById("portal-summary");
        var fresh = fromHtml(html);
        if (old && fresh) {
          old.replaceWith(fresh);
        }
      })
      .catch(function () {});
  }

  // Insert a new lead's row at the top (first page only), or refresh a row already shown.
  function refreshRow(leadId, isNew) {
    var existing = document.getElementById("lead-" + Number(leadId));
    if (!existing && !(isNew && firstPage)) {
      return;
    }
    fetchText(rowUrl.replace("/0/", "/" + Number(leadId) + "/")).catch(function () {
      return "";
    }).then(function (html) {
      var fresh = fromHtml(html);
      if (!fresh) {
        return;
      }
      var current = document.getElementById("lead-" + Number(leadId));
      if (current) {
        current.replaceWith(fresh);
        return;
      }
      var empty = rows.querySelector(".empty-row");
      if (empty) {
        empty.remove();
      }
      fresh.classList.add("row-new");
      rows.insertBefore(fresh, rows.firstElementChild);
      var count = document.querySelector("[data-lead-count]");
      if (count) {
        var n = Number(count.getAttribute("data-lead-count")) + 1;
        count.setAttribute("data-lead-count", String(n));
        count.textContent = n + (n === 1 ? " lead" : " leads");
      }
    });
  }

  function onEvent(event) {
    if (event.lastEventId) {
      position = event.lastEventId;
    }
    var data = {};
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    if (event.type === "lead.allocated") {
      refreshRow(data.lead_id, true);
      refreshSummary();
    } else if (event.type === "lead.returned" || event.type === "return.decided") {
      refreshRow(data.lead_id, false);
      refreshSummary();
    } else if (event.type === "delivery.updated") {
      refreshRow(data.lead_id, false);
    } else {
      refreshSummary();
    }
  }

  function showState(state, text) {
    if (live) {
      live.setAttribute("data-state", state);
      live.querySelector("[data-live-text]").textContent = text;
    }
  }

  function connect() {
    var url = root.getAttribute("data-stream-url");
    if (position) {
      url += "?lastEventId=" + encodeURIComponent(position);
    }
    var source = new EventSource(url);
    source.addEventListener("open", function () {
      showState("live", "live");
    });
    source.addEventListener("error", function () {
      showState("reconnecting", "reconnecting…");
    });
    source.addEventListener("stream-error", function () {
      source.close();
      showState("signed-out", "signed out: reload the page");
    });
    EVENT_TYPES.forEach(function (type) {
      source.addEventListener(type, onEvent);
    });
  }

  connect();
})();
