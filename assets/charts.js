// Charts below the first screen are drawn when the browser is next idle: plotly.js takes tens of
// milliseconds a chart on a small machine, and the first screen should not wait for charts nobody sees
// yet. callbacks/analytics.py (_SHOW_FIGURES) asks here.
(function () {
  var waiting = {};  // graph id: the newest figure it is to draw

  function drawWaiting() {
    Object.keys(waiting).forEach(function (id) {
      var figure = waiting[id];
      delete waiting[id];
      if (document.getElementById(id)) { window.dash_clientside.set_props(id, {figure: figure}); }
    });
  }

  // The figure to draw now, or null when it is to wait for the browser's next idle moment.
  window.flowerbedFigureNowOrLater = function (id, figure, later) {
    if (!later) {
      delete waiting[id];  // an older figure waiting must not replace this one
      return figure;
    }
    if (Object.keys(waiting).length === 0) {
      if (window.requestIdleCallback) { window.requestIdleCallback(drawWaiting, {timeout: 2000}); }
      else { window.setTimeout(drawWaiting, 200); }
    }
    waiting[id] = figure;
    return null;
  };
})();
