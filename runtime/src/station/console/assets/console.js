// The station console's only script (served from the station; the page's
// Content-Security-Policy allows no other). It refreshes the part of a page
// marked data-live with the HTML the station answers at that address, and
// focuses the first field marked data-focus (a scanner types into it).
"use strict";
(function () {
  const focus = document.querySelector("[data-focus]");
  if (focus) {
    focus.focus();
  }
  const live = document.querySelector("[data-live]");
  if (!live) {
    return;
  }
  const every = Number(live.getAttribute("data-every")) || 5000;
  let refreshed = 0;
  async function refresh() {
    try {
      const answer = await fetch(live.getAttribute("data-live"), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (answer.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (answer.ok) {
        live.innerHTML = await answer.text();
        refreshed += 1;
        live.setAttribute("data-refreshed", String(refreshed));
      }
    } catch (e) {
      // The station is unreachable for a moment: the next round tries again.
    }
  }
  window.setInterval(refresh, every);
})();
