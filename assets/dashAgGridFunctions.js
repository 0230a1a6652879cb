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

// Keep what the user set on a page in the address bar (shareable; Back comes back to it) without a
// re-render: replaceState tells no router. `params` sets its keys (a list repeats the key; empty
// removes it) and keeps the others. `page` is the path the params belong to: a callback answered
// after the user left it writes nothing.
window.flowerbedReplaceQuery = function (params, page) {
  if (page && window.location.pathname !== page) { return; }
  var query = new URLSearchParams(window.location.search);
  Object.keys(params).forEach(function (key) {
    query.delete(key);
    [].concat(params[key] === null || params[key] === undefined ? [] : params[key]).forEach(function (value) {
      if (value !== "" && value !== null && value !== undefined) { query.append(key, value); }
    });
  });
  var text = query.toString();
  if (text === window.location.search.replace(/^\?/, "")) { return; }
  window.history.replaceState(window.history.state, "", window.location.pathname + (text ? "?" + text : ""));
};

// The Tasks grid's sort and visible columns as the address keeps them: sort=state,-received (a
// leading - for descending, as /api/tasks?sort_by= reads it) and cols=name,state,... when they differ from
// `defaultColumns`.
window.flowerbedGridView = function (columnState, defaultColumns) {
  var sorted = (columnState || []).filter(function (column) { return column.sort; });
  sorted.sort(function (a, b) { return (a.sortIndex || 0) - (b.sortIndex || 0); });
  var visible = (columnState || []).filter(function (column) { return !column.hide; })
    .map(function (column) { return column.colId; });
  return {
    sort: sorted.map(function (column) { return (column.sort === "desc" ? "-" : "") + column.colId; }).join(","),
    cols: visible.join(",") === defaultColumns.join(",") ? "" : visible.join(","),
  };
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
