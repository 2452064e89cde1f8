// AdMedia console: keeps relative times current and refreshes the
// overview's live part. Plain JavaScript, no dependencies; every page works
// without it.
(function () {
  "use strict";

  // The same words as src/console/view.rs `ago`.
  function ago(ms) {
    var secs = Math.trunc(ms / 1000);
    var span = Math.abs(secs);
    if (span < 5) return "just now";
    var amount;
    if (span < 60) amount = span + " s";
    else if (span < 3600) amount = Math.floor(span / 60) + " min";
    else if (span < 86400) amount = Math.floor(span / 3600) + " h";
    else amount = Math.floor(span / 86400) + " d";
    return secs >= 0 ? amount + " ago" : "in " + amount;
  }

  function refreshTimes(root) {
    var now = Date.now();
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(at)) t.textContent = ago(now - at);
    });
  }

  function live(region) {
    var url = region.getAttribute("data-refresh");
    var every = Number(region.getAttribute("data-every")) || 5000;
    function tick() {
      if (document.hidden) {
        setTimeout(tick, every);
        return;
      }
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (res) {
          // Signed out or expired: the page itself goes to the sign-in form.
          if (res.redirected || res.status === 401 || res.status === 403) {
            window.location.reload();
            return null;
          }
          if (!res.ok) throw new Error("HTTP " + res.status);
          return res.text();
        })
        .then(function (html) {
          if (html === null) return;
          region.innerHTML = html;
          region.classList.remove("stale");
          refreshTimes(region);
        })
        .catch(function () {
          region.classList.add("stale");
        })
        .then(function () {
          setTimeout(tick, every);
        });
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes(document);
    setInterval(function () {
      refreshTimes(document);
    }, 10000);
    document.querySelectorAll("[data-refresh]").forEach(live);
    // A form whose button was pressed once is not sent twice.
    document.addEventListener("submit", function (e) {
      var form = e.target;
      if (form.method && form.method.toLowerCase() === "post") {
        if (form.dataset.sent) {
          e.preventDefault();
          return;
        }
        form.dataset.sent = "1";
      }
    });
  });
})();
