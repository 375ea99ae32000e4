// The keys page: the dialog takes focus, Escape closes it, and the copy button copies the
// secret (which is never stored: closing the dialog leaves it behind for good).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var dialog = document.getElementById("dialog");
    if (dialog) {
      var main = document.getElementById("main");
      Array.prototype.forEach.call(main.children, function (child) {
        if (!child.classList.contains("modal-backdrop")) child.setAttribute("inert", "");
      });
      var nav = document.getElementById("nav");
      if (nav) nav.setAttribute("inert", "");
      var target = dialog.querySelector("[aria-invalid='true']") ||
        dialog.querySelector("input:not([type=hidden]), select, textarea, button, a.button");
      if (target) target.focus();
      document.addEventListener("keydown", function (event) {
        if (event.key === "Escape") window.location.href = dialog.getAttribute("data-close");
      });
    }
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) return;
      button.hidden = false;
      var label = button.textContent;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(source.value).then(function () {
          button.textContent = button.getAttribute("data-copied");
          setTimeout(function () { button.textContent = label; }, 2000);
        });
      });
    });
  });
})();
