// abtest console: small progressive enhancements; every page works without this script.
(function () {
  "use strict";

  // The live report: fetch its sections every data-refresh-s seconds and swap them in.
  function startRefresh(box) {
    var seconds = parseFloat(box.getAttribute("data-refresh-s") || "0");
    var url = box.getAttribute("data-fragment");
    if (!url || !(seconds > 0)) { return; }
    var busy = false;
    window.setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) {
            box.innerHTML = html;
            box.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* keep the last report; try again next time */ })
        .then(function () { busy = false; });
    }, seconds * 1000);
  }

  // Buttons with data-confirm ask first (the lifecycle buttons have their own confirm page).
  function confirmButtons() {
    document.querySelectorAll("[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  // The filter on the experiments list applies as soon as it changes.
  function autoFilter() {
    var select = document.getElementById("status-filter");
    if (select && select.form) {
      select.addEventListener("change", function () { select.form.submit(); });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("live-report");
    if (box) { startRefresh(box); }
    confirmButtons();
    autoFilter();
  });
})();
