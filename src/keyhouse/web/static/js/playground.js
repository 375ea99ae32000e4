// The playground: each turn goes to POST /api/playground/chat/completions with the session's
// CSRF token (no key in the browser), streamed; tokens are appended to the aria-live
// transcript as they arrive; Stop aborts the request (the server charges what was made);
// each reply's tokens and cost are read back from /api/usage/requests/{x-request-id}.
// Every string shown comes from the page's data-* attributes (the page's language).
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) return;
  var data = form.dataset;
  var transcript = document.getElementById("transcript");
  var message = document.getElementById("f-message");
  var send = document.getElementById("send");
  var stop = document.getElementById("stop");
  var temperature = document.getElementById("f-temperature");
  var temperatureValue = document.getElementById("temperature-value");
  var history = [];
  var controller = null;

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, name) {
      return name in values ? String(values[name]) : "";
    });
  }
  function number(value) { return new Intl.NumberFormat(data.locale).format(value); }
  function money(micros) {
    var amount = micros / 1e6;
    var currency = data.currency;
    if (/^[A-Z]{3}$/.test(currency)) {
      return new Intl.NumberFormat(data.locale, {
        style: "currency", currency: currency, minimumFractionDigits: 2, maximumFractionDigits: 6,
      }).format(amount);
    }
    return new Intl.NumberFormat(data.locale, { minimumFractionDigits: 2, maximumFractionDigits: 6 })
      .format(amount) + " " + (data.currencyName || currency);
  }
  function bubble(role, text) {
    var empty = document.getElementById("empty-chat");
    if (empty) empty.remove();
    var item = document.createElement("div");
    item.className = "message " + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? data.you : data.assistant;
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text || "";
    item.appendChild(who);
    item.appendChild(body);
    transcript.appendChild(item);
    transcript.scrollTop = transcript.scrollHeight;
    return item;
  }
  function meta(item, text) {
    var line = item.querySelector(".meta");
    if (!line) {
      line = document.createElement("span");
      line.className = "meta";
      item.appendChild(line);
    }
    line.textContent = text;
    return line;
  }
  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
  }
  function fetchCost(requestId, line, tokensText, tries) {
    fetch("/api/usage/requests/" + encodeURIComponent(requestId), { credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 404 && tries > 0) {
          setTimeout(function () { fetchCost(requestId, line, tokensText, tries - 1); }, 250);
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (used) {
        if (!used) return;
        var tokens = fill(data.tokens, {
          prompt: number(used.prompt_tokens), completion: number(used.completion_tokens),
        });
        line.textContent = tokens + " · " + fill(data.cost, { cost: money(used.cost_micros) });
        line.setAttribute("data-cost-micros", used.cost_micros);
      });
  }

  async function readStream(response, item) {
    var body = item.querySelector(".text");
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var usage = null;
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var events = buffer.split("\n\n");
      buffer = events.pop();
      for (var i = 0; i < events.length; i++) {
        var lines = events[i].split("\n");
        for (var j = 0; j < lines.length; j++) {
          if (lines[j].indexOf("data: ") !== 0) continue;
          var payload = lines[j].slice(6);
          if (payload === "[DONE]") continue;
          var event = JSON.parse(payload);
          if (event.error) throw new Error(event.error.message);
          if (event.usage) usage = event.usage;
          if (event.choices && event.choices.length && event.choices[0].delta) {
            var text = event.choices[0].delta.content;
            if (text) {
              if (item.classList.contains("pending")) {
                item.classList.remove("pending");
                body.textContent = "";
              }
              body.textContent += text;
              transcript.scrollTop = transcript.scrollHeight;
            }
          }
        }
      }
    }
    return usage;
  }

  async function turn(text) {
    var system = document.getElementById("f-system").value.trim();
    history.push({ role: "user", content: text });
    bubble("user", text);
    var item = bubble("assistant", data.thinking);
    item.classList.add("pending");
    var messages = (system ? [{ role: "system", content: system }] : []).concat(history);
    var request = {
      model: document.getElementById("f-model").value,
      messages: messages,
      temperature: Number(temperature.value),
      max_tokens: Number(document.getElementById("f-max-tokens").value) || undefined,
      stream: true,
      stream_options: { include_usage: true },
    };
    controller = new AbortController();
    busy(true);
    var requestId = null;
    var line = null;
    try {
      var response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
        body: JSON.stringify(request),
        signal: controller.signal,
      });
      requestId = response.headers.get("x-request-id");
      if (!response.ok) {
        var reason = response.statusText;
        try { reason = (await response.json()).error.message; } catch (ignored) { /* keep */ }
        throw new Error(reason);
      }
      var usage = await readStream(response, item);
      history.push({ role: "assistant", content: item.querySelector(".text").textContent });
      line = meta(item, usage ? fill(data.tokens, {
        prompt: number(usage.prompt_tokens), completion: number(usage.completion_tokens),
      }) + " · " + data.costPending : data.costPending);
    } catch (error) {
      if (error.name === "AbortError") {
        item.classList.remove("pending");
        line = meta(item, data.stopped + " " + data.costPending);
        history.push({ role: "assistant", content: item.querySelector(".text").textContent });
      } else {
        item.classList.remove("pending");
        item.classList.add("error");
        item.querySelector(".text").textContent = fill(data.failed, {
          reason: error.message || data.offline,
        });
        history.pop();
      }
    } finally {
      busy(false);
      controller = null;
      message.focus();
    }
    if (line && requestId) fetchCost(requestId, line, "", 40);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = message.value.trim();
    if (!text || controller) return;
    message.value = "";
    turn(text);
  });
  message.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", function () { if (controller) controller.abort(); });
  document.getElementById("clear").addEventListener("click", function () {
    if (controller) controller.abort();
    history = [];
    transcript.querySelectorAll(".message").forEach(function (node) { node.remove(); });
  });
  temperature.addEventListener("input", function () {
    temperatureValue.textContent = number(Number(temperature.value));
  });
  // Each model's own default temperature (a tiny local model is greedy by default).
  var modelSelect = document.getElementById("f-model");
  modelSelect.addEventListener("change", function () {
    var option = modelSelect.options[modelSelect.selectedIndex];
    if (option && option.dataset.temperature !== undefined) {
      temperature.value = option.dataset.temperature;
      temperatureValue.textContent = number(Number(temperature.value));
    }
  });
  temperatureValue.textContent = number(Number(temperature.value));
})();
