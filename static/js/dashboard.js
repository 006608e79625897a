/*
 * The live dashboard: follows GET /api/events (SSE) and swaps in server-rendered fragments.
 *
 * Events carry ids only. For each burst of events the page asks /dashboard/fragments once for
 * the provider rows, feed items, services and summary they touch, and replaces those elements
 * by id. The stream starts from the event id the page was rendered at, so an event committed
 * between the render and the connection is replayed; ids already seen are dropped.
 *
 * The status in the header says only what is true:
 * - "Live" while the stream is open;
 * - "Reconnecting…" while the server cannot be reached; the stream comes back by itself and
 *   resumes after the last event applied (Last-Event-ID), so nothing is missed and nothing
 *   reloads;
 * - "Signed out — sign in again" once the stream or a fragment is refused (401/403: the session
 *   ended in another tab, expired, or its password changed). The page stops following and asks
 *   now and then whether the session is back (signed in again in another tab), then catches up.
 * EventSource does not expose the status of a refused connection: it only closes. So on a
 * close, the page asks the fragments URL, which answers 401/403 rather than redirecting.
 *
 * Other scripts of the page (static/js/forecast.js) follow along through two DOM events on the
 * [data-dashboard] element: "dashboard:event" ({type, data}) for each new event applied, the
 * stream opening ("stream-open") and a reset ("stream-reset"), and "dashboard:swapped" once
 * fragments have replaced rows.
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
    "lead.expired",
    "quota.reset",
    "provider.updated",
    "delivery.updated",
    "lead.returned",
    "return.decided",
  ];
  var FEED_MAX = 60;
  var BATCH_MS = 60;
  var RETRY_MS = 3000;
  var SIGNED_OUT_RETRY_MS = 5000;

  var streamUrl = root.getAttribute("data-stream-url");
  var fragmentsUrl = root.getAttribute("data-fragments-url");
  var feed = root.querySelector("[data-feed]");
  var liveStatus = root.querySelector("[data-live-status]");
  var liveText = root.querySelector("[data-live-text]");
  var signIn = root.querySelector("[data-live-signin]");

  // "dashboard:42": where the page was rendered; then the last event applied.
  var position = root.getAttribute("data-last-event-id") || "";
  var lastSeen = sequence(position);
  var source = null;
  var signedOut = false;
  var retryTimer = null;

  var pending = newPending();
  var batchTimer = null;
  var inFlight = false;

  function newPending() {
    return {
      providers: {},
      allProviders: false,
      events: {},
      services: false,
      summary: false,
      last: -1,
    };
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

  function announce(type, data) {
    root.dispatchEvent(new CustomEvent("dashboard:event", { detail: { type: type, data: data } }));
  }

  function setStatus(state, text) {
    liveStatus.setAttribute("data-state", state);
    liveText.textContent = text;
    signIn.hidden = state !== "signed-out";
  }

  function later(task, ms) {
    window.clearTimeout(retryTimer);
    retryTimer = window.setTimeout(task, ms);
  }

  function stopFollowing() {
    if (source) {
      source.close();
      source = null;
    }
  }

  // A fragment request made with the page's session: redirects are not followed, so a login
  // redirect is seen as one (the server answers 401/403, but a proxy might redirect).
  function fetchFragments(query) {
    return fetch(fragmentsUrl + (query ? "?" + query : ""), {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
      redirect: "manual",
    });
  }

  function refused(response) {
    return (
      response.status === 401 || response.status === 403 || response.type === "opaqueredirect"
    );
  }

  function toSignedOut() {
    signedOut = true;
    stopFollowing();
    setStatus("signed-out", "Signed out \u2014");
    later(probe, SIGNED_OUT_RETRY_MS);
  }

  function toReconnecting() {
    setStatus("reconnecting", "Reconnecting\u2026");
  }

  // The stream closed for good, or the page is signed out: find out why, and act on it.
  function probe() {
    fetchFragments("").then(
      function (response) {
        if (refused(response)) {
          toSignedOut();
        } else if (response.ok) {
          signedOut = false;
          connect();
        } else {
          toReconnecting(); // a 5xx: the server is up but not well; try again
          later(probe, RETRY_MS);
        }
      },
      function () {
        if (!signedOut) {
          toReconnecting();
        }
        later(probe, signedOut ? SIGNED_OUT_RETRY_MS : RETRY_MS);
      }
    );
  }

  function connect() {
    stopFollowing();
    var url = streamUrl;
    if (position) {
      url += "?lastEventId=" + encodeURIComponent(position);
    }
    var stream = new EventSource(url);
    source = stream;
    stream.addEventListener("open", function () {
      setStatus("live", "Live");
      announce("stream-open", {});
      if (hasPending()) {
        schedule(); // work a refusal or an outage left undone
      }
    });
    stream.addEventListener("error", function () {
      if (stream !== source) {
        return;
      }
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (401/403, or another answer than a stream) or gone for good: ask why.
        stopFollowing();
        toReconnecting();
        probe();
      } else {
        // The browser reconnects by itself, with Last-Event-ID.
        toReconnecting();
      }
    });
    stream.addEventListener("stream-error", function () {
      // The server closed the stream because the session ended; a reconnection would be
      // refused, so ask straight away.
      stopFollowing();
      probe();
    });
    EVENT_TYPES.forEach(function (type) {
      stream.addEventListener(type, onEvent);
    });
    source.addEventListener("stream-reset", function (event) {
      // Our position is no longer stored (events expire): refresh everything visible.
      if (event.lastEventId) {
        position = event.lastEventId;
        lastSeen = sequence(position);
        pending.last = lastSeen;
      }
      pending.allProviders = true;
      pending.services = true;
      pending.summary = true;
      schedule();
      announce("stream-reset", {});
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
      pending.last = seq;
    }
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    announce(event.type, data);
    if (event.type === "lead.allocated") {
      (data.provider_ids || []).forEach(function (id) {
        pending.providers[id] = true;
      });
      pending.events[seq] = true;
    } else if (event.type === "lead.waiting" || event.type === "lead.expired") {
      pending.events[seq] = true;
    } else if (event.type === "lead.returned" || event.type === "return.decided") {
      // A return is listed in the feed; an approval may credit its provider's quota.
      pending.providers[data.provider_id] = true;
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
        pending.summary = true; // speed to lead, p50 and p99
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
    if (batchTimer === null && !inFlight && !signedOut) {
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
    if (work.last >= 0) {
      params.append("last", work.last);
    }
    if (!params.toString()) {
      return;
    }

    inFlight = true;
    var failed = false;
    fetchFragments(params.toString())
      .then(
        function (response) {
          if (refused(response)) {
            failed = true;
            merge(work); // fetched again once signed in
            toSignedOut();
            return;
          }
          if (!response.ok) {
            failed = true;
            merge(work);
            setStatus("down", "Update failed, retrying\u2026");
            return;
          }
          return response.text().then(apply);
        },
        function () {
          // The server cannot be reached: the stream will notice too, and come back.
          failed = true;
          merge(work);
          toReconnecting();
        }
      )
      .then(function () {
        inFlight = false;
        if (hasPending() && !signedOut) {
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
    pending.last = Math.max(pending.last, work.last);
  }

  function apply(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    holder.content.querySelectorAll("template[data-swap]").forEach(function (piece) {
      var fresh = piece.content.firstElementChild;
      var current = fresh && document.getElementById(fresh.id);
      if (current) {
        current.replaceWith(fresh);
        if (!fresh.hasAttribute("data-no-flash")) {
          flash(fresh);
        }
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
    root.dispatchEvent(new CustomEvent("dashboard:swapped"));
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

  // Back to this tab, perhaps after signing out in another one: check before claiming "Live".
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && source && !signedOut) {
      fetchFragments("").then(
        function (response) {
          if (refused(response)) {
            toSignedOut();
          }
        },
        function () {} // unreachable: the stream says so by itself
      );
    }
  });

  connect();
})();
