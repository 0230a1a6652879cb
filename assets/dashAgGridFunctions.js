// Value formatters for the grids (AG Grid calls these by name from columnDefs).
var dagfuncs = (window.dashAgGridFunctions = window.dashAgGridFunctions || {});

function pad(n, width) { return String(n).padStart(width || 2, "0"); }

// Epoch seconds → "2026-11-24 10:30:05" in UTC, as the column headers say (the detail view and
// the tooltip give milliseconds; the grid keeps the column narrow).
window.flowerbedTime = dagfuncs.flowerbedTime = function (value) {
  if (value === null || value === undefined || value === "") { return ""; }
  var d = new Date(value * 1000);
  return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
    pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
};

window.flowerbedTimeMs = dagfuncs.flowerbedTimeMs = function (value) {
  if (value === null || value === undefined || value === "") { return ""; }
  return dagfuncs.flowerbedTime(value) + "." + pad(new Date(value * 1000).getUTCMilliseconds(), 3);
};

window.flowerbedSeconds = dagfuncs.flowerbedSeconds = function (value) {
  if (value === null || value === undefined) { return ""; }
  return value < 0.001 ? value.toFixed(6) : value.toFixed(3);
};

window.flowerbedAge = dagfuncs.flowerbedAge = function (seconds) {
  if (seconds === null || seconds === undefined) { return "never"; }
  if (seconds < 60) { return seconds.toFixed(0) + " s ago"; }
  if (seconds < 3600) { return (seconds / 60).toFixed(0) + " min ago"; }
  return (seconds / 3600).toFixed(1) + " h ago";
};

// Navigation from clientside callbacks: the same pushState + event that dcc.Link uses, so the
// router sees the new path and the browser's back button works.
window.flowerbedNavigate = function (path) {
  window.history.pushState({}, "", path);
  window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
};

// Keep the Tasks page's query in the address bar (shareable, restored by Back) without a re-render.
window.flowerbedReplaceQuery = function (params) {
  var query = new URLSearchParams();
  Object.keys(params).forEach(function (key) { if (params[key]) { query.set(key, params[key]); } });
  var text = query.toString();
  window.history.replaceState(window.history.state, "", window.location.pathname + (text ? "?" + text : ""));
};
