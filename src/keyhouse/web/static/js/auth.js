// The resend cool-down as a countdown: the button waits, saying how long, then comes back.
// The wording comes from the page (data-wait, with {seconds}), so it is translated there.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button[data-cooldown]").forEach(function (button) {
      var left = parseInt(button.getAttribute("data-cooldown"), 10) || 0;
      if (left <= 0) return;
      var label = button.textContent;
      var wait = button.getAttribute("data-wait") || "{seconds}";
      var tick = function () {
        if (left <= 0) {
          button.disabled = false;
          button.textContent = label;
          return;
        }
        button.disabled = true;
        button.textContent = wait.replace("{seconds}", String(left));
        left -= 1;
        setTimeout(tick, 1000);
      };
      tick();
    });
  });
})();
