// The frame: the phone menu button, and Escape closes the account menu. Optional: without
// script the navigation simply stays open above the page.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  document.addEventListener("DOMContentLoaded", function () {
    // After a refused form, the field to fix has the focus (unless a dialog takes it).
    var invalid = document.querySelector("main [aria-invalid='true']");
    if (invalid && !document.getElementById("dialog")) invalid.focus();
    var button = document.getElementById("menu-button");
    var nav = document.getElementById("nav");
    if (button && nav) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var open = nav.classList.toggle("open");
        button.setAttribute("aria-expanded", open ? "true" : "false");
        if (open) { var first = nav.querySelector("a"); if (first) first.focus(); }
      });
    }
    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      document.querySelectorAll("details.account-menu[open]").forEach(function (menu) {
        menu.open = false;
        menu.querySelector("summary").focus();
      });
      if (nav && nav.classList.contains("open")) {
        nav.classList.remove("open");
        button.setAttribute("aria-expanded", "false");
        button.focus();
      }
    });
  });
})();
