// UTC or this browser's time zone: the choice is kept in this browser (as the theme is). The pages
// render times in UTC with the moment in data-epoch; in local time this rewrites them, including
// those a callback renders later. The grids format their own (dashAgGridFunctions.js).
(function () {
  var KEY = "flowerbed-timezone";

  function localStamp(element) {
    var epoch = Number(element.getAttribute("data-epoch"));
    if (!element.hasAttribute("data-local")) {
      element.setAttribute("data-local", "");
      element.setAttribute("title", element.textContent);  // the UTC text stays a hover away
    }
    var text = window.flowerbedTimeMs(epoch) + " " + window.flowerbedZoneName(new Date(epoch * 1000));
    if (element.textContent !== text) { element.textContent = text; }
  }

  function rewrite(root) {
    if (!window.flowerbedLocalTime() || !root.querySelectorAll) { return; }
    Array.prototype.forEach.call(root.querySelectorAll("[data-epoch]"), localStamp);
  }

  function label(button) {
    var local = window.flowerbedLocalTime();
    button.textContent = local ? "Local" : "UTC";
    button.title = local ? "Times in this browser's time zone; click for UTC" : "Times in UTC; click for this browser's time zone";
  }

  new MutationObserver(function (changes) {
    changes.forEach(function (change) {
      Array.prototype.forEach.call(change.addedNodes, function (node) {
        if (node.nodeType !== 1) { return; }
        if (node.id === "timezone-toggle") { label(node); }
        if (node.hasAttribute("data-epoch") && window.flowerbedLocalTime()) { localStamp(node); }
        rewrite(node);
        var button = node.querySelector && node.querySelector("#timezone-toggle");
        if (button) { label(button); }
      });
    });
  }).observe(document.documentElement, {childList: true, subtree: true});

  // Switching reloads the page: every grid, header and stamp is drawn again in the new zone.
  document.addEventListener("click", function (event) {
    if (!event.target.closest || !event.target.closest("#timezone-toggle")) { return; }
    window.localStorage.setItem(KEY, window.flowerbedLocalTime() ? "utc" : "local");
    window.location.reload();
  });
})();
