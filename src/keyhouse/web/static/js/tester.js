// The API tester: sends the composed call from this browser straight to /v1 with the key
// typed in (never stored), shows status, timing, headers (rate-limit ones marked) and body
// (streamed bodies as they arrive), and fills "Copy as" from POST /tester/snippets.
// Every string shown comes from the page's data-* attributes (the page's language).
(function () {
  "use strict";
  var form = document.getElementById("tester");
  if (!form) return;
  var data = form.dataset;
  var examples = JSON.parse(data.examples);
  var method = document.getElementById("f-method");
  var path = document.getElementById("f-path");
  var key = document.getElementById("f-key");
  var body = document.getElementById("f-body");
  var problem = document.getElementById("request-error");
  var snippet = document.getElementById("snippet");
  var tabs = Array.prototype.slice.call(document.querySelectorAll('#copy-as [role="tab"]'));
  var language = "curl";
  var timer = null;

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, name) { return String(values[name]); });
  }
  function say(text) {
    problem.textContent = text || "";
    problem.hidden = !text;
  }
  function parsedBody() {
    var text = body.value.trim();
    if (method.value === "GET" || !text) return { ok: true, value: null };
    try { return { ok: true, value: JSON.parse(text) }; }
    catch (error) { return { ok: false }; }
  }

  function refreshSnippet() {
    var parsed = parsedBody();
    if (!parsed.ok) return;
    fetch("/tester/snippets", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
      body: JSON.stringify({
        method: method.value, path: path.value, body: parsed.value, key: key.value.trim() || null,
      }),
    }).then(function (response) {
      return response.ok ? response.json() : Promise.reject(new Error(String(response.status)));
    }).then(function (made) {
      snippet.textContent = made[language];
      snippet.setAttribute("data-lang", language);
    }, function () {
      snippet.textContent = data.copyFailed;
    });
  }
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refreshSnippet, 250);
  }
  function select(tab) {
    tabs.forEach(function (other) {
      var on = other === tab;
      other.setAttribute("aria-selected", on ? "true" : "false");
      other.tabIndex = on ? 0 : -1;
    });
    document.getElementById("panel-copy").setAttribute("aria-labelledby", tab.id);
    language = tab.getAttribute("data-lang");
    refreshSnippet();
  }
  tabs.forEach(function (tab, index) {
    tab.addEventListener("click", function () { select(tab); });
    tab.addEventListener("keydown", function (event) {
      var next = null;
      if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
      if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
      if (event.key === "Home") next = tabs[0];
      if (event.key === "End") next = tabs[tabs.length - 1];
      if (next) { event.preventDefault(); next.focus(); select(next); }
    });
  });
  [method, path, key, body].forEach(function (input) {
    input.addEventListener("input", soon);
    input.addEventListener("change", soon);
  });
  document.getElementById("f-example").addEventListener("change", function (event) {
    var example = examples[event.target.value];
    method.value = example.method;
    path.value = example.path;
    body.value = example.body ? JSON.stringify(example.body, null, 2) : "";
    say("");
    refreshSnippet();
  });

  function showHeaders(headers) {
    var rows = document.getElementById("headers");
    rows.textContent = "";
    var names = [];
    headers.forEach(function (value, name) { names.push([name, value]); });
    names.sort(function (a, b) {
      var ra = /^x-ratelimit-|^retry-after/.test(a[0]) ? 0 : 1;
      var rb = /^x-ratelimit-|^retry-after/.test(b[0]) ? 0 : 1;
      return ra - rb || (a[0] < b[0] ? -1 : 1);
    });
    names.forEach(function (pair) {
      var row = document.createElement("tr");
      if (/^x-ratelimit-|^retry-after/.test(pair[0])) row.className = "rate-limit";
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = pair[0];
      var td = document.createElement("td");
      td.textContent = pair[1];
      row.appendChild(th);
      row.appendChild(td);
      rows.appendChild(row);
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    say("");
    var parsed = parsedBody();
    if (!parsed.ok) { say(data.badJson); body.focus(); return; }
    if (!key.value.trim()) { say(data.needKey); key.focus(); return; }
    var send = document.getElementById("send");
    send.disabled = true;
    var out = document.getElementById("response-body");
    var status = document.getElementById("status");
    var timing = document.getElementById("timing");
    document.getElementById("response-empty").hidden = true;
    document.getElementById("response").hidden = false;
    out.textContent = "";
    status.textContent = "…";
    timing.textContent = "";
    var started = performance.now();
    try {
      var init = {
        method: method.value,
        credentials: "omit",
        headers: { "Authorization": "Bearer " + key.value.trim() },
      };
      if (parsed.value !== null) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(parsed.value);
      }
      var response = await fetch(path.value, init);
      var firstByte = Math.round(performance.now() - started);
      status.textContent = response.status + " " + response.statusText;
      status.className = response.ok ? "status-ok" : "status-bad";
      showHeaders(response.headers);
      var type = response.headers.get("content-type") || "";
      if (type.indexOf("text/event-stream") === 0 && response.body) {
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        for (;;) {
          var chunk = await reader.read();
          if (chunk.done) break;
          out.textContent += decoder.decode(chunk.value, { stream: true });
        }
      } else {
        var text = await response.text();
        try { out.textContent = JSON.stringify(JSON.parse(text), null, 2); }
        catch (notJson) { out.textContent = text; }
      }
      var total = Math.round(performance.now() - started);
      timing.textContent = fill(data.ms, { ms: total }) + " · " + fill(data.firstByte, { ms: firstByte });
    } catch (error) {
      status.textContent = data.network;
      status.className = "status-bad";
    } finally {
      send.disabled = false;
    }
  });

  refreshSnippet();
})();
