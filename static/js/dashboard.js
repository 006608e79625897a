/*
 * The live dashboard: follows GET /api/events (SSE) and swaps in server-rendered fragments.
 *
 * Events carry ids only. For each burst of events the page asks /dashboard/fragments once for
 * the provider rows, feed items, services and summary they touch, and replaces those elements
 * by id. The stream starts from the event id the page was rendered at, so an event committed
 * between the render and the connection is replayed; ids already seen are dropped.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-dashboard]");
  if (!root) {
    return;
  }

  var EVENT_TYPES = [
    "lead.allocated",
    "lead.waiting",
    "quota.reset",
    "provider.updated",
    "delivery.updated",
  ];
  var FEED_MAX = 60;
  var BATCH_MS = 60;
  var RETRY_MS = 3000;

  var streamUrl = root.getAttribute("data-stream-url");
  var fragmentsUrl = root.getAttribute("data-fragments-url");
  var feed = root.querySelector("[data-feed]");
  var liveStatus = root.querySelector("[data-live-status]");
  var liveText = root.querySelector("[data-live-text]");
  var livePosition = root.querySelector("[data-live-position]");

  // "dashboard:42": where the page was rendered; then the last event applied.
  var position = root.getAttribute("data-last-event-id") || "";
  var lastSeen = sequence(position);
  var source = null;

  var pending = newPending();
  var batchTimer = null;
  var inFlight = false;

  function newPending() {
    return { providers: {}, allProviders: false, events: {}, services: false, summary: false };
  }

  function hasPending() {
    return (
      pending.allProviders ||
      pending.services ||
      pending.summary ||
      Object.keys(pending.providers).length > 0 ||
      Object.keys(pending.events).length > 0
    );
  }

  function sequence(id) {
    var match = /:(\d+)$/.exec(id || "");
    return match ? Number(match[1]) : -1;
  }

  function setStatus(state, text) {
    liveStatus.setAttribute("data-state", state);
    liveText.textContent = text;
  }

  function connect() {
    var url = streamUrl;
    if (position) {
      url += "?lastEventId=" + encodeURIComponent(position);
    }
    source = new EventSource(url);
    source.addEventListener("open", function () {
      setStatus("live", "Live");
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (signed out?) or the server went away: try again from our position.
        setStatus("down", "Disconnected, retrying…");
        source.close();
        window.setTimeout(connect, RETRY_MS);
      } else {
        setStatus("connecting", "Reconnecting…");
      }
    });
    EVENT_TYPES.forEach(function (type) {
      source.addEventListener(type, onEvent);
    });
    source.addEventListener("stream-reset", function (event) {
      // Our position is no longer stored (events expire): refresh everything visible.
      if (event.lastEventId) {
        position = event.lastEventId;
        lastSeen = sequence(position);
      }
      pending.allProviders = true;
      pending.services = true;
      pending.summary = true;
      schedule();
    });
  }

  function onEvent(event) {
    var seq = sequence(event.lastEventId);
    if (seq >= 0) {
      if (seq <= lastSeen) {
        return; // already on the page: rendered with it, or replayed twice
      }
      lastSeen = seq;
      position = event.lastEventId;
      livePosition.textContent = position;
    }
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    if (event.type === "lead.allocated") {
      (data.provider_ids || []).forEach(function (id) {
        pending.providers[id] = true;
      });
      pending.events[seq] = true;
    } else if (event.type === "lead.waiting") {
      pending.events[seq] = true;
    } else if (event.type === "quota.reset") {
      if (Array.isArray(data.provider_ids)) {
        data.provider_ids.forEach(function (id) {
          pending.providers[id] = true;
        });
      } else {
        pending.allProviders = true; // null: every provider
      }
      pending.events[seq] = true;
    } else if (event.type === "provider.updated") {
      pending.providers[data.provider_id] = true;
    } else if (event.type === "delivery.updated") {
      showDelivery(data);
      if (data.status === "delivered" || data.status === "failed") {
        pending.providers[data.provider_id] = true; // its delivery rate
        schedule();
      }
      return; // nothing else on the page depends on a delivery
    }
    // Any of these can move a service's cursor, its next provider, the chart or the totals.
    pending.services = true;
    pending.summary = true;
    schedule();
  }

  // A delivery's chip in its lead's feed item, updated in place from the event's data.
  function showDelivery(data) {
    var chip = root.querySelector('[data-delivery-id="' + Number(data.delivery_id) + '"]');
    if (!chip) {
      return; // not on the page, or not yet: its feed item is rendered with the current status
    }
    var status = String(data.status).replace(/[^a-z]/g, "");
    chip.className = "delivery-chip delivery-" + status;
    chip.querySelector("[data-delivery-status]").textContent =
      status + (data.attempts > 1 ? " \u00d7" + Number(data.attempts) : "");
  }

  function schedule() {
    if (batchTimer === null && !inFlight) {
      batchTimer = window.setTimeout(flush, BATCH_MS);
    }
  }

  function visibleProviderIds() {
    return Array.prototype.map.call(
      root.querySelectorAll("[data-provider-id]"),
      function (row) {
        return row.getAttribute("data-provider-id");
      }
    );
  }

  function flush() {
    batchTimer = null;
    var work = pending;
    pending = newPending();

    var params = new URLSearchParams();
    visibleProviderIds().forEach(function (id) {
      if (work.allProviders || work.providers[id]) {
        params.append("provider", id);
      }
    });
    Object.keys(work.events)
      .map(Number)
      .filter(function (eid) {
        return eid >= 0;
      })
      .sort(function (a, b) {
        return b - a;
      })
      .slice(0, FEED_MAX)
      .forEach(function (eid) {
        params.append("event", eid);
      });
    if (work.services) {
      params.append("services", "1");
    }
    if (work.summary) {
      params.append("summary", "1");
    }
    if (!params.toString()) {
      return;
    }

    inFlight = true;
    var failed = false;
    fetch(fragmentsUrl + "?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(apply)
      .catch(function () {
        failed = true;
        merge(work);
        setStatus("down", "Update failed, retrying…");
      })
      .then(function () {
        inFlight = false;
        if (hasPending()) {
          batchTimer = window.setTimeout(flush, failed ? RETRY_MS : BATCH_MS);
        }
      });
  }

  function merge(work) {
    Object.keys(work.providers).forEach(function (id) {
      pending.providers[id] = true;
    });
    Object.keys(work.events).forEach(function (eid) {
      pending.events[eid] = true;
    });
    pending.allProviders = pending.allProviders || work.allProviders;
    pending.services = pending.services || work.services;
    pending.summary = pending.summary || work.summary;
  }

  function apply(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    holder.content.querySelectorAll("template[data-swap]").forEach(function (piece) {
      var fresh = piece.content.firstElementChild;
      var current = fresh && document.getElementById(fresh.id);
      if (current) {
        current.replaceWith(fresh);
        flash(fresh);
      }
    });
    holder.content.querySelectorAll("template[data-feed-item]").forEach(function (piece) {
      var item = piece.content.firstElementChild;
      if (item && !document.getElementById(item.id)) {
        insertFeedItem(item);
        flash(item);
      }
    });
    if (source && source.readyState === EventSource.OPEN) {
      setStatus("live", "Live");
    }
  }

  function insertFeedItem(item) {
    var empty = feed.querySelector("[data-feed-empty]");
    if (empty) {
      empty.remove();
    }
    // Newest first, by event id, whatever order the fragments arrive in.
    var eid = Number(item.getAttribute("data-eid"));
    var before = null;
    var items = feed.querySelectorAll("[data-eid]");
    for (var i = 0; i < items.length; i += 1) {
      if (Number(items[i].getAttribute("data-eid")) < eid) {
        before = items[i];
        break;
      }
    }
    feed.insertBefore(item, before);
    var all = feed.querySelectorAll("[data-eid]");
    for (var j = FEED_MAX; j < all.length; j += 1) {
      all[j].remove();
    }
  }

  function flash(element) {
    element.classList.add("flash");
    window.setTimeout(function () {
      element.classList.remove("flash");
    }, 1200);
  }

  connect();
})();
