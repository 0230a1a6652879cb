// Chrome keeps the code it compiled from a script only once it has run the script twice, so a second visit
// compiles Dash, AG Grid and plotly.js again (about a second here before the charts show). Once a page has
// settled, this runs the framework scripts it loaded a second time, in hidden same-origin frames at idle
// moments; Chrome then keeps their compiled code, and the next visit starts as a returning one. The cost,
// most of a second once (plotly.js's run, Chrome writing the code down), moves to an idle moment of this visit.
// <html data-code-warmed> says whether what the page loaded is warmed; each frame is a performance measure.
(function () {
  if (!navigator.userAgentData || !window.requestIdleCallback || !window.PerformanceObserver) {
    return;  // not Chromium, whose keeping of compiled code this is measured on (bench/first_screen.py)
  }
  var WARMED_KEY = "flowerbed-warmed-scripts";
  var SETTLED_MS = 2000;  // after the last framework script arrived: the page has drawn with it
  var IDLE_WAIT_MS = 5000;  // the longest wait for an idle moment (a busy or hidden tab gets none)
  var fetched = [];  // the framework scripts the page fetched, in order (the browser's list stops at 250)
  var settling = null;
  var running = false;  // a frame is running or about to: it picks up what arrives meanwhile

  function frameworkScript(address) {
    return address.indexOf("/_dash-component-suites/") >= 0 && /\.js(\?|$)/.test(address);
  }

  // The scripts of the page's HTML (not async: those inserted later are), in their order: each needs the
  // ones before it (React, then Dash's renderer, then the components). Their addresses name the release.
  function pageScripts() {
    return Array.prototype.filter.call(document.scripts, function (script) {
      return !script.async && frameworkScript(script.src);
    }).map(function (script) { return script.src; });
  }

  // What this browser warmed for this release ({release, warmed}); a new release starts afresh, code
  // split off a bundle too, whose addresses stay the same from release to release. null: no storage.
  function record(release) {
    var text, kept = null;
    try { text = localStorage.getItem(WARMED_KEY); } catch (unavailable) { return null; }
    try { kept = JSON.parse(text); } catch (garbled) {}
    return kept && kept.release === release && Array.isArray(kept.warmed) ? kept : {release: release, warmed: []};
  }

  function remember(kept, scripts) {
    kept.warmed = kept.warmed.concat(scripts);
    try { localStorage.setItem(WARMED_KEY, JSON.stringify(kept)); } catch (full) {}
  }

  // The page's scripts run together (all of them, when any is new); a script fetched later (split code,
  // plotly.js) needs nothing and runs in a frame of its own, at an idle moment of its own.
  function nextScripts(kept) {
    var own = pageScripts();
    var fresh = function (address) { return kept.warmed.indexOf(address) < 0; };
    if (own.some(fresh)) { return own; }
    var later = fetched.filter(function (address) { return own.indexOf(address) < 0 && fresh(address); });
    return later.length ? [later[0]] : [];
  }

  function say(done) { document.documentElement.setAttribute("data-code-warmed", done ? "true" : "false"); }

  function warmNext() {  // one frame at a time, each chosen afresh: what arrived meanwhile is included
    var kept = record(pageScripts().join(" "));
    var scripts = kept ? nextScripts(kept) : [];
    running = scripts.length > 0;
    if (!running) { say(true); return; }
    var frame = document.createElement("iframe");
    frame.hidden = true;
    frame.srcdoc = scripts.map(function (address) {
      return '<script src="' + address.replace(/&/g, "&amp;").replace(/"/g, "&quot;") + '"></script>';
    }).join("");
    var started = performance.now();
    frame.addEventListener("load", function () {
      performance.measure("flowerbed-code-warm-up", {start: started, end: performance.now()});
      frame.remove();
      remember(kept, scripts);
      requestIdleCallback(warmNext, {timeout: IDLE_WAIT_MS});
    });
    document.body.appendChild(frame);
  }

  new PerformanceObserver(function (list) {
    var arrived = list.getEntries().map(function (entry) { return entry.name; }).filter(function (address) {
      return frameworkScript(address) && fetched.indexOf(address) < 0;
    });
    if (arrived.length === 0) { return; }
    fetched = fetched.concat(arrived);
    say(false);
    clearTimeout(settling);
    settling = setTimeout(function () {
      if (!running) {
        running = true;
        requestIdleCallback(warmNext, {timeout: IDLE_WAIT_MS});
      }
    }, SETTLED_MS);
  }).observe({type: "resource", buffered: true});
})();
