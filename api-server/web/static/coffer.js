// Coffer's dashboard: what htmx does not do. Copy to clipboard, mask revealed values again
// after a while, filter table rows. No inline handlers, no eval: the page's
// Content-Security-Policy allows scripts from this server only.
(function () {
  "use strict";

  // Copy buttons copy the value shown beside them.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var holder = button.closest(".revealed");
    var value = holder && holder.querySelector(".value");
    if (!value) return;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value.textContent).then(done, function () {});
    } else {
      var range = document.createRange();
      range.selectNodeContents(value);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done();
    }
  });

  // Revealed values are masked again after `data-remask` seconds.
  function arm(root) {
    root.querySelectorAll("[data-remask]").forEach(function (el) {
      if (el.dataset.armed) return;
      el.dataset.armed = "1";
      var seconds = parseInt(el.dataset.remask, 10) || 30;
      setTimeout(function () {
        var hide = el.querySelector("[hx-trigger*=remask]");
        if (hide && document.body.contains(hide) && window.htmx) {
          window.htmx.trigger(hide, "remask");
        }
      }, seconds * 1000);
    });
  }

  // `<input data-filter="#tbody">` hides the rows whose key does not contain the text.
  document.addEventListener("input", function (event) {
    var input = event.target;
    if (!input.matches || !input.matches("[data-filter]")) return;
    var body = document.querySelector(input.dataset.filter);
    if (!body) return;
    var needle = input.value.trim().toLowerCase();
    body.querySelectorAll("tr[data-key]").forEach(function (row) {
      row.hidden = needle !== "" && row.dataset.key.toLowerCase().indexOf(needle) < 0;
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    arm(document);
    if (window.htmx) {
      window.htmx.onLoad(function (el) { arm(el.parentNode || el); });
    }
  });
})();
