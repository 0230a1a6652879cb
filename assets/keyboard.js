// Keyboard and phone helpers for every page: "/" jumps to the page's search box (unless the user is
// typing somewhere), Escape (or a click elsewhere) closes what opened, and the menu button folds the
// navigation open and shut on a narrow screen; an address with #id scrolls to that part once the page
// has drawn it.
(function () {
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }
  function setMenu(open) {
    var bar = document.querySelector(".topbar");
    var button = document.getElementById("nav-toggle");
    if (!bar || !button) { return; }
    bar.classList.toggle("nav-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
  }
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {  // folds the menu and the search help away
      setMenu(false);
      document.querySelectorAll("details.search-help[open]").forEach(function (help) { help.open = false; });
      return;
    }
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) { return; }
    var search = document.querySelector("#page input[type=search]");
    if (search) {
      event.preventDefault();
      search.focus();
      search.select();
    }
  });
  document.addEventListener("click", function (event) {
    if (!event.target.closest) { return; }
    // The search help closes with its button or a click elsewhere (on a phone it covers its "?").
    document.querySelectorAll("details.search-help[open]").forEach(function (help) {
      if (event.target.closest(".search-help-close") || !help.contains(event.target)) { help.open = false; }
    });
    if (event.target.closest("#nav-toggle")) {
      setMenu(!document.querySelector(".topbar").classList.contains("nav-open"));
    } else if (!event.target.closest("#nav") || event.target.closest(".nav-link")) {
      setMenu(false);  // a choice made, or a click elsewhere: fold it away
    }
  });
  // The pages are drawn after the address changes (a dcc.Link, or the first load), so the browser's own
  // jump to the #id finds nothing: jump once the element appears, and again while the page around it is
  // still being drawn (its grids and charts push it down), until the user scrolls or HOLD_MS have passed.
  var HOLD_MS = 5000;
  var jumped = null, holdUntil = 0;
  ["wheel", "touchstart", "keydown", "mousedown"].forEach(function (kind) {
    window.addEventListener(kind, function () { holdUntil = 0; }, {passive: true, capture: true});
  });
  new MutationObserver(function () {
    var address = location.pathname + location.hash;
    if (!location.hash || (jumped === address && performance.now() > holdUntil)) { return; }
    var target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (!target) { return; }
    if (jumped !== address) {
      jumped = address;
      holdUntil = performance.now() + HOLD_MS;
    }
    target.scrollIntoView({block: "start"});
  }).observe(document.documentElement, {childList: true, subtree: true});
})();
