"use strict";
// Refreshes parts of admin pages in place: an element with data-refresh-url gets that URL's HTML every
// data-refresh-seconds (with data-refresh-select, only the matching element of the fetched page). A refresh
// waits while the operator is choosing something in the element, and pauses while the tab is hidden.
(function () {
  function busy(element) {
    var active = document.activeElement;
    if (active && element.contains(active) && /^(SELECT|INPUT|TEXTAREA|BUTTON)$/.test(active.tagName)) {
      return true;
    }
    return Array.prototype.some.call(element.querySelectorAll("select"), function (s) { return s.value !== ""; });
  }

  function start(element) {
    var every = parseFloat(element.getAttribute("data-refresh-seconds") || "5") * 1000;
    var url = element.getAttribute("data-refresh-url");
    var select = element.getAttribute("data-refresh-select");
    function tick() {
      if (document.hidden || busy(element)) {
        window.setTimeout(tick, every);
        return;
      }
      window.fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (!response.ok || response.redirected) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (text) {
          if (busy(element)) { return; }
          if (select) {
            var found = new DOMParser().parseFromString(text, "text/html").querySelector(select);
            if (!found) { throw new Error("nothing to show"); }
            text = found.innerHTML;
          }
          element.innerHTML = text;
          element.removeAttribute("data-refresh-failed");
          element.dispatchEvent(new CustomEvent("gateway:refreshed", { bubbles: true }));
        })
        .catch(function (error) {
          element.setAttribute("data-refresh-failed", String(error.message || error));
          var note = element.querySelector(".gw-updated");
          if (note) {
            note.textContent = "Refresh failed (" + (error.message || error) + "); trying again.";
            note.className = "gw-updated gw-refresh-failed";
          }
        })
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }

  function copyButtons(root) {
    Array.prototype.forEach.call(root.querySelectorAll("[data-copy]"), function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        var text = source ? source.textContent : "";
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { select(source); });
        } else {
          select(source);
        }
      });
    });
  }

  function select(node) {
    if (!node) { return; }
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh-url]"), start);
    copyButtons(document);
  });
})();
