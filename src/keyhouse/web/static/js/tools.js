// Copy buttons on the webtools pages: <button data-copy="ID"> copies the value (inputs) or
// the text (anything else) of element ID. Without script the buttons stay hidden and the
// text can still be selected by hand.
(function () {
  "use strict";
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy") ? resolve() : reject(new Error("copy refused")); }
      catch (error) { reject(error); }
      finally { document.body.removeChild(area); }
    });
  }
  function wire(button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target) return;
      var text = "value" in target && target.tagName !== "PRE" ? target.value : target.textContent;
      var label = button.firstChild && button.firstChild.nodeType === 3 ? button.firstChild : null;
      var before = label ? label.nodeValue : "";
      copyText(text).then(function () {
        if (label) {
          label.nodeValue = button.getAttribute("data-copied") || before;
          setTimeout(function () { label.nodeValue = before; }, 2000);
        }
      }, function () {
        if ("select" in target) target.select();
      });
    });
  }
  window.KeyhouseCopy = { wire: wire, copyText: copyText };
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button[data-copy]").forEach(wire);
  });
})();
