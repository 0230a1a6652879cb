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

// Analytics grids: durations in the unit that reads best, rates as percentages, counts grouped.
window.flowerbedDuration = dagfuncs.flowerbedDuration = function (seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) { return ""; }
  if (seconds < 0.01) { return (seconds * 1000).toFixed(1) + " ms"; }
  if (seconds < 1) { return (seconds * 1000).toFixed(0) + " ms"; }
  if (seconds < 60) { return seconds.toFixed(2) + " s"; }
  if (seconds < 3600) { return (seconds / 60).toFixed(1) + " min"; }
  return (seconds / 3600).toFixed(1) + " h";
};

window.flowerbedPercent = dagfuncs.flowerbedPercent = function (fraction) {
  if (fraction === null || fraction === undefined || isNaN(fraction)) { return ""; }
  return (fraction * 100).toFixed(fraction > 0 && fraction < 0.001 ? 3 : 2) + " %";
};

window.flowerbedPercentChange = dagfuncs.flowerbedPercentChange = function (change) {
  if (change === null || change === undefined || isNaN(change)) { return ""; }
  return (change > 0 ? "+" : "") + (change * 100).toFixed(2) + " pt";
};

window.flowerbedCount = dagfuncs.flowerbedCount = function (value) {
  return value === null || value === undefined ? "" : Number(value).toLocaleString("en-US");
};

// A drill-down from the Analytics page: target is [search text, state chip] whose {0}, {1}... are
// filled from `values` (a clicked point's customdata); see components/analytics.py.
window.flowerbedOpenTasks = function (base, target, values) {
  var params = new URLSearchParams();
  params.set("q", target[0].replace(/\{(\d+)\}/g, function (_match, index) { return values[Number(index)]; }));
  if (target[1]) { params.set("state", target[1]); }
  window.flowerbedNavigate(base + "tasks?" + params.toString());
};

// CSV export (every Analytics table, csvExportParams.processCellCallback): text starting with
// = + - @ tab or carriage return is a formula to Excel, LibreOffice and Google Sheets, so a task
// named =HYPERLINK(...) or an exception =cmd|... would run when the file is opened. Such text gets
// a leading ' (OWASP's advice). A cell exports as the grid shows it (its valueFormatter); a number's
// text is our own formatting, never a formula, so a negative one keeps its minus sign.
var CSV_FORMULA_START = /^[=+\-@\t\r]/;

window.flowerbedCsvText = dagfuncs.flowerbedCsvText = function (value, shown) {
  if (typeof value === "number" || typeof shown !== "string") { return shown; }
  return CSV_FORMULA_START.test(shown) ? "'" + shown : shown;
};

dagfuncs.flowerbedCsvCell = function (params) {
  return dagfuncs.flowerbedCsvText(params.value, params.formatValue(params.value));
};

// The Dashboard's utilisation: active / pool size, marked when the worker stayed busy for minutes.
dagfuncs.flowerbedUtilisation = function (params) {
  if (params.value === null || params.value === undefined) { return "—"; }
  return (params.value * 100).toFixed(0) + " %" + (params.data && params.data.busy ? " · busy" : "");
};

// Enter on a focused row opens it, as a click does: the grids work from the keyboard.
dagfuncs.flowerbedOpenOnEnter = function (params, base) {
  var event = params.event;
  if (event && event.key === "Enter" && !event.ctrlKey && !event.altKey && params.node && params.node.id) {
    window.flowerbedNavigate(base + encodeURIComponent(params.node.id));
  }
};

// A grid whose context names a columnPriority shows, in that order, the columns that fit its width
// and hides the rest (never fewer than three): a phone gets the three that matter, a laptop keeps
// the ones that answer questions on screen instead of behind a horizontal scroll.
var MIN_SHOWN_COLUMNS = 3;
dagfuncs.flowerbedFitColumns = function (params) {
  var api = params.api;
  var priority = (api.getGridOption("context") || {}).columnPriority;
  // A size change says the new width; other events leave it to the visible part of the grid.
  var range = params.clientWidth ? null : api.getHorizontalPixelRange();
  var room = params.clientWidth || (range && range.right - range.left);
  if (!priority || !room) { return; }
  api.getAllDisplayedColumns().forEach(function (column) {
    if (priority.indexOf(column.getColId()) < 0) { room -= column.getActualWidth(); }
  });
  var show = [], hide = [], full = false;
  priority.forEach(function (id) {
    var column = api.getColumn(id);
    if (!column) { return; }
    var def = column.getColDef();
    var width = def.width || def.minWidth || 100;
    full = full || (show.length >= MIN_SHOWN_COLUMNS && width > room);
    if (full) { hide.push(id); return; }
    show.push(id);
    room -= width;
  });
  var changed = show.some(function (id) { return !api.getColumn(id).isVisible(); }) ||
    hide.some(function (id) { return api.getColumn(id).isVisible(); });
  if (changed) {
    api.setColumnsVisible(show, true);
    api.setColumnsVisible(hide, false);
  }
};
