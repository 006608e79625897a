/*
 * The dashboard's forecast (issue 23): each active service's next leads as chips, a what-if
 * form, and each provider row's forecast run-out. Everything comes from the JSON API,
 * GET /api/services/ID/forecast, with the page's staff session: this script parses no
 * what-if itself, it passes the form's values on and shows the API's 422 messages.
 *
 * Live, but throttled: an event marks the services it can change (below), and a service's
 * forecast is fetched again at most once a second, with at most one refresh of it in flight;
 * events that arrive meanwhile fold into the next one. Page-wide, refreshes start at least
 * SPACING_MS apart (and at most MAX_IN_FLIGHT run at once), whatever the number of services.
 * So a burst of 100 leads a second costs an open dashboard at most 2 forecasts a second.
 *
 * Which services an event can change:
 * - lead.allocated: its own service, and every service whose forecast involves one of the
 *   lead's providers (a provider that is not in a forecast cannot change it by losing quota);
 * - lead.waiting, lead.expired: its own service (its waiting queue);
 * - quota.reset, provider.updated, return.decided, stream-reset: every service (capacity
 *   may come back anywhere); the stream (re)opening: every service whose refresh failed.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-dashboard]");
  var section = document.querySelector("[data-forecast-section]");
  if (!root || !section) {
    return;
  }

  var MIN_INTERVAL_MS = 1000;
  var SPACING_MS = 500;
  // After an event, let the dashboard's own update (its fragment request, 60 ms after the
  // event) go first: the forecast must not delay the page's one-second promise (SPEC §6).
  var SETTLE_MS = 300;
  var MAX_IN_FLIGHT = 2;
  var RETRY_MS = 3000;
  var CITY_DELAY_MS = 400;
  var SHOWN = Number(section.getAttribute("data-forecast-leads")) || 10;
  var HORIZON = Number(section.getAttribute("data-forecast-horizon")) || SHOWN;
  var REASONS = {
    not_enough_providers: "fewer than 3 providers can take it",
    queued: "behind this city's waiting leads",
  };
  var leadTemplate = section.querySelector("template[data-forecast-lead]");
  var chipTemplate = section.querySelector("template[data-forecast-chip]");

  var inFlight = 0;
  var nextSlot = 0; // when the page may start its next refresh
  var queue = [];
  var cards = Array.prototype.map.call(
    section.querySelectorAll("[data-forecast-card]"),
    function (element) {
      return {
        element: element,
        id: Number(element.getAttribute("data-service-id")),
        name: element.getAttribute("data-service-name"),
        url: element.getAttribute("data-url"),
        list: element.querySelector("[data-forecast-leads]"),
        status: element.querySelector("[data-forecast-status]"),
        basis: element.querySelector("[data-forecast-basis]"),
        city: "",
        whatIf: null, // URLSearchParams of the what-if, or null
        plain: null, // the last plain answer
        asIf: null, // the last what-if answer
        dirty: false,
        failed: false,
        running: false,
        queued: false,
        lastStart: -Infinity,
        timer: null,
      };
    }
  );

  // --- Throttled refreshes -----------------------------------------------------------------

  function refresh(card, settle) {
    card.dirty = true;
    if (card.running || card.queued || card.timer !== null) {
      return; // the refresh to come will read the state as it is then
    }
    var now = Date.now();
    var wait = Math.max(settle || 0, card.lastStart + MIN_INTERVAL_MS - now, nextSlot - now);
    nextSlot = now + wait + SPACING_MS; // the page's next free start, reserved in turn
    card.timer = window.setTimeout(function () {
      card.timer = null;
      start(card);
    }, wait);
  }

  function start(card) {
    if (!card.dirty) {
      return;
    }
    if (inFlight >= MAX_IN_FLIGHT) {
      card.queued = true;
      queue.push(card);
      return;
    }
    card.dirty = false;
    card.running = true;
    card.lastStart = Date.now();
    inFlight += 1;
    load(card).then(function (retry) {
      card.running = false;
      inFlight -= 1;
      var next = queue.shift();
      if (next) {
        next.queued = false;
        start(next);
      }
      if (retry) {
        card.dirty = true;
        card.timer = window.setTimeout(function () {
          card.timer = null;
          start(card);
        }, RETRY_MS);
      } else if (card.dirty) {
        refresh(card);
      }
    });
  }

  function query(card, leads, whatIf) {
    var params = new URLSearchParams();
    params.set("leads", String(leads));
    if (card.city) {
      params.set("city", card.city);
    }
    if (whatIf) {
      whatIf.forEach(function (value, name) {
        params.append(name, value);
      });
    }
    return fetch(card.url + "?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      redirect: "manual",
    }).then(function (response) {
      return response
        .json()
        .catch(function () {
          return null;
        })
        .then(function (body) {
          return { status: response.status, body: body };
        });
    });
  }

  // One refresh: the plain forecast, and the what-if beside it when one is tried. Resolves to
  // true when it should be tried again later.
  function load(card) {
    var whatIf = card.whatIf;
    var asking = [query(card, HORIZON, null)];
    if (whatIf) {
      asking.push(query(card, SHOWN, whatIf));
    }
    return Promise.all(asking).then(
      function (answers) {
        var plain = answers[0];
        if (plain.status !== 200) {
          card.failed = true;
          say(card, refusal(plain));
          return plain.status >= 500;
        }
        card.failed = false;
        card.plain = plain.body;
        if (whatIf && whatIf === card.whatIf) {
          var asIf = answers[1];
          if (asIf.status === 200) {
            card.asIf = asIf.body;
            showErrors(card, null);
          } else {
            card.asIf = null;
            card.whatIf = null;
            showErrors(card, asIf);
          }
        }
        render(card);
        showRunOuts();
        return false;
      },
      function () {
        card.failed = true;
        say(card, "The server cannot be reached; the forecast will come back with the stream.");
        return false;
      }
    );
  }

  function refusal(answer) {
    if (answer.status === 401 || answer.status === 403 || answer.status === 0) {
      return "Signed out: sign in again to see the forecast.";
    }
    var error = answer.body && answer.body.error;
    if (answer.status === 422 && error && error.fields && error.fields.city) {
      return "City: " + error.fields.city.join(" ");
    }
    if (error && error.message) {
      return error.message;
    }
    return "The forecast failed (" + answer.status + "); trying again.";
  }

  function say(card, text) {
    card.status.textContent = text;
  }

  // --- Rendering ---------------------------------------------------------------------------

  function providerIds(lead) {
    return (lead && lead.providers ? lead.providers : []).map(function (p) {
      return p.id;
    });
  }

  function render(card) {
    var plainLeads = card.plain.leads.slice(0, SHOWN);
    var shown = card.asIf ? card.asIf.leads.slice(0, SHOWN) : plainLeads;
    var changed = 0;
    var items = shown.map(function (lead, index) {
      var before = card.asIf ? plainLeads[index] : null;
      var item = leadItem(lead, before);
      if (item.changed) {
        changed += 1;
      }
      return item.element;
    });
    card.list.replaceChildren.apply(card.list, items);
    card.element.classList.toggle("forecast-as-if", Boolean(card.asIf));

    var basis = card.plain.based_on;
    var where = basis.city ? "in " + basis.city : "any city";
    var ahead = basis.waiting_ahead ? ", " + basis.waiting_ahead + " waiting ahead" : "";
    card.basis.textContent = where + ahead;
    if (card.asIf) {
      say(
        card,
        "As if: " +
          describe(card.whatIf) +
          ". " +
          (changed === 0
            ? "No difference from the plain forecast."
            : changed + " of " + shown.length + " leads differ from the plain forecast (marked).")
      );
    } else {
      say(card, "");
    }
  }

  function describe(whatIf) {
    var parts = [];
    whatIf.forEach(function (value, name) {
      parts.push(name + " " + value);
    });
    return parts.join(", ");
  }

  // One forecast lead; ``before`` is the plain forecast's lead at the same place, when the
  // shown one is a what-if: chips that differ from it are marked.
  function leadItem(lead, before) {
    var element = leadTemplate.content.firstElementChild.cloneNode(true);
    var chips = element.querySelector("[data-chips]");
    var wait = element.querySelector("[data-wait]");
    element.setAttribute("data-n", String(lead.n));
    element.setAttribute("data-status", lead.status);
    element.querySelector("[data-n]").textContent = String(lead.n);
    var beforeIds = providerIds(before);
    var changed = Boolean(before) && before.status !== lead.status;
    if (lead.status === "allocated") {
      wait.remove();
      lead.providers.forEach(function (provider, index) {
        var was = before ? beforeIds[index] : provider.id;
        var differs = Boolean(before) && was !== provider.id;
        changed = changed || differs;
        chips.appendChild(chip(provider, differs, before));
      });
    } else {
      chips.remove();
      wait.hidden = false;
      wait.querySelector("[data-reason]").textContent = REASONS[lead.reason] || lead.reason;
    }
    if (changed) {
      element.classList.add("forecast-lead-changed");
    }
    return { element: element, changed: changed };
  }

  function chip(provider, differs, before) {
    var element = chipTemplate.content.firstElementChild.cloneNode(true);
    element.setAttribute("data-provider-id", String(provider.id));
    element.classList.add("chip-role-" + provider.role);
    element.querySelector("[data-rank]").textContent = String(provider.rank);
    element.querySelector("[data-name]").textContent = provider.name;
    // "mand" keeps three chips on a line; the chip's title and the legend spell it out.
    element.querySelector("[data-role]").textContent =
      provider.role === "mandatory" ? "mand" : provider.role;
    var title = "Rank " + provider.rank + ", " + provider.role + ": " + provider.name;
    if (differs) {
      element.classList.add("chip-changed");
      element.querySelector("[data-changed]").hidden = false;
      var was =
        before.status === "allocated" ? before.providers[provider.rank - 1].name : "waiting";
      title += "; the plain forecast has " + was;
    }
    element.title = title;
    return element;
  }

  // Each provider row: the soonest run-out over the plain forecasts of the services shown
  // (each assumes the next leads are all of that one service and its city), the others after.
  function showRunOuts() {
    var byProvider = {};
    cards.forEach(function (card) {
      if (!card.plain) {
        return;
      }
      card.plain.providers.forEach(function (p) {
        (byProvider[p.id] = byProvider[p.id] || []).push({
          service: card.name,
          at: p.runs_out_at,
        });
      });
    });
    root.querySelectorAll("[data-provider-id] [data-runout]").forEach(function (cell) {
      var id = cell.closest("[data-provider-id]").getAttribute("data-provider-id");
      var entries = (byProvider[id] || []).slice().sort(function (a, b) {
        return (a.at === null ? Infinity : a.at) - (b.at === null ? Infinity : b.at);
      });
      cell.replaceChildren.apply(cell, runOut(entries));
    });
  }

  function runOut(entries) {
    var main = document.createElement("span");
    if (entries.length === 0) {
      main.className = "muted";
      main.textContent = "\u2014";
      main.title = "Not picked in the next " + HORIZON + " leads of any service shown";
      return [main];
    }
    var first = entries[0];
    if (first.at === null) {
      main.className = "muted";
      main.textContent = "not within " + HORIZON + " leads";
    } else {
      main.className = "runout-at";
      main.textContent = "out after about " + first.at + " more lead" + (first.at === 1 ? "" : "s");
    }
    main.setAttribute("data-runout-at", first.at === null ? "" : String(first.at));
    var where = document.createElement("span");
    where.className = "muted runout-service";
    where.textContent = " of " + first.service;
    var parts = [main, where];
    if (entries.length > 1) {
      var others = document.createElement("span");
      others.className = "muted runout-others";
      others.textContent =
        "also " +
        entries
          .slice(1)
          .map(function (e) {
            return e.service + ": " + (e.at === null ? "not within " + HORIZON : e.at);
          })
          .join(", ");
      parts.push(others);
    }
    return parts;
  }

  // --- The forms ---------------------------------------------------------------------------

  // The form's values as the API's repeatable parameters: ids and ID:N pairs separated by
  // spaces or commas, areas by semicolons (a city name may hold spaces). The API parses them.
  function whatIfOf(form) {
    var params = new URLSearchParams();
    ["pause", "resume", "quota"].forEach(function (name) {
      form.elements[name].value
        .split(/[\s,]+/)
        .filter(Boolean)
        .forEach(function (value) {
          params.append(name, value);
        });
    });
    form.elements.cities.value
      .split(";")
      .map(function (value) {
        return value.trim();
      })
      .filter(Boolean)
      .forEach(function (value) {
        params.append("cities", value);
      });
    return params.toString() ? params : null;
  }

  function showErrors(card, answer) {
    var list = card.element.querySelector("[data-what-if-errors]");
    var items = [];
    var error = answer && answer.body && answer.body.error;
    if (error) {
      var fields = error.fields || {};
      Object.keys(fields).forEach(function (name) {
        fields[name].forEach(function (message) {
          var item = document.createElement("li");
          item.textContent = name + ": " + message;
          items.push(item);
        });
      });
      if (items.length === 0) {
        var item = document.createElement("li");
        item.textContent = error.message || "The what-if was refused (" + answer.status + ").";
        items.push(item);
      }
    }
    list.replaceChildren.apply(list, items);
  }

  cards.forEach(function (card) {
    var cityForm = card.element.querySelector("[data-forecast-city-form]");
    var cityInput = cityForm.elements.city;
    var cityTimer = null;
    function cityChanged() {
      window.clearTimeout(cityTimer);
      if (cityInput.value.trim() !== card.city) {
        card.city = cityInput.value.trim();
        refresh(card);
      }
    }
    cityForm.addEventListener("submit", function (event) {
      event.preventDefault();
      cityChanged();
    });
    cityInput.addEventListener("input", function () {
      window.clearTimeout(cityTimer);
      cityTimer = window.setTimeout(cityChanged, CITY_DELAY_MS);
    });

    var form = card.element.querySelector("[data-what-if-form]");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      card.whatIf = whatIfOf(form);
      card.asIf = null;
      showErrors(card, null);
      say(card, card.whatIf ? "Working out the what-if\u2026" : "");
      refresh(card);
    });
    form.addEventListener("reset", function () {
      card.whatIf = null;
      card.asIf = null;
      showErrors(card, null);
      if (card.plain) {
        render(card);
      }
    });
  });

  // --- Following the dashboard's stream ----------------------------------------------------

  function involves(card, ids) {
    return [card.plain, card.asIf].some(function (answer) {
      return (
        answer &&
        answer.providers.some(function (p) {
          return ids.indexOf(p.id) >= 0;
        })
      );
    });
  }

  root.addEventListener("dashboard:event", function (event) {
    var type = event.detail.type;
    var data = event.detail.data || {};
    cards.forEach(function (card) {
      var touched = false;
      if (type === "lead.allocated") {
        touched = card.id === data.service_id || involves(card, data.provider_ids || []);
      } else if (type === "lead.waiting" || type === "lead.expired") {
        touched = card.id === data.service_id;
      } else if (
        type === "quota.reset" ||
        type === "provider.updated" ||
        type === "return.decided" ||
        type === "stream-reset"
      ) {
        touched = true;
      } else if (type === "stream-open") {
        touched = card.failed;
      }
      if (touched) {
        refresh(card, SETTLE_MS);
      }
    });
  });

  // Provider rows swapped in by the live fragments come with an empty run-out cell.
  root.addEventListener("dashboard:swapped", showRunOuts);

  cards.forEach(function (card) {
    refresh(card, 0);
  });
})();
