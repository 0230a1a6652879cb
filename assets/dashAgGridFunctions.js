// Value formatters for the grids (AG Grid calls these by name from columnDefs).
var dagfuncs = (window.dashAgGridFunctions = window.dashAgGridFunctions || {});

function pad(n, width) { return String(n).padStart(width || 2, "0"); }

// Times show in UTC unless the user chose this browser's time zone (the switch in the top bar,
// assets/timezone.js; kept in this browser as the theme is).
window.flowerbedLocalTime = function () {
  try { return window.localStorage.getItem("flowerbed-timezone") === "local"; } catch (blocked) { return false; }
};

// "UTC", or the browser's offset from it at that moment ("UTC+05:30").
window.flowerbedZoneName = function (date) {
  if (!window.flowerbedLocalTime()) { return "UTC"; }
  var offset = -(date || new Date()).getTimezoneOffset();
  return "UTC" + (offset < 0 ? "-" : "+") + pad(Math.floor(Math.abs(offset) / 60)) + ":" + pad(Math.abs(offset) % 60);
};

// Epoch seconds → "2026-11-24 10:30:05" in the chosen zone, as the column headers say (the detail
// view and the tooltip give milliseconds; the grid keeps the column narrow).
window.flowerbedTime = dagfuncs.flowerbedTime = function (value) {
  if (value === null || value === undefined || value === "") { return ""; }
  var d = new Date(value * 1000);
  if (window.flowerbedLocalTime()) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
    pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
};

window.flowerbedTimeMs = dagfuncs.flowerbedTimeMs = function (value) {
  if (value === null || value === undefined || value === "") { return ""; }
  return dagfuncs.flowerbedTime(value) + "." + pad(new Date(value * 1000).getUTCMilliseconds(), 3);
};

// A time column's header: "Received (UTC)" or "Received (UTC+05:30)".
window.flowerbedZonedHeader = dagfuncs.flowerbedZonedHeader = function (label) {
  return label + " (" + window.flowerbedZoneName() + ")";
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

// The Tasks grid's sort and chosen columns as the address keeps them: sort=state,-received (a leading
// - for descending, as /api/tasks?sort_by= reads it) and cols=name,state,... when the column
// chooser's ticks differ from `defaultChosen`.
window.flowerbedGridView = function (columnState, chosen, defaultChosen) {
  var sorted = (columnState || []).filter(function (column) { return column.sort; });
  sorted.sort(function (a, b) { return (a.sortIndex || 0) - (b.sortIndex || 0); });
  var differs = (chosen || []).join(",") !== (defaultChosen || []).join(",");
  return {
    sort: sorted.map(function (column) { return (column.sort === "desc" ? "-" : "") + column.colId; }).join(","),
    cols: differs ? ["name", "state"].concat(chosen || []).join(",") : "",
  };
};

// Analytics grids: durations in the unit that reads best, rates as percentages, counts grouped.
// Durations in the unit that reads best: "0.35 ms", "17 ms", "2.4 s", "3 min 12 s", "2 h 5 min",
// "3 d 4 h". The twin of components/common.py format_duration (the detail view and the charts
// format in Python): change both together; tests/test_durations.py holds them to the same.
function trimmed(value, decimals) {
  var text = value.toFixed(decimals);
  return text.indexOf(".") < 0 ? text : text.replace(/0+$/, "").replace(/\.$/, "");
}

function twoUnits(count, per, unit, smaller) {
  var whole = Math.floor(count / per), rest = count % per;
  return whole + " " + unit + (rest ? " " + rest + " " + smaller : "");
}

window.flowerbedDuration = dagfuncs.flowerbedDuration = function (seconds) {
  if (seconds === null || seconds === undefined || typeof seconds !== "number" || isNaN(seconds)) { return ""; }
  if (seconds < 0) { return "-" + dagfuncs.flowerbedDuration(-seconds); }
  var ms = seconds * 1000;
  if (ms < 999.5) { return trimmed(ms, ms < 1 ? 2 : ms < 10 ? 1 : 0) + " ms"; }
  if (seconds < 59.5) { return trimmed(seconds, seconds < 9.95 ? 1 : 0) + " s"; }
  if (seconds < 3599.5) { return twoUnits(Math.round(seconds), 60, "min", "s"); }
  if (seconds < 86370) { return twoUnits(Math.round(seconds / 60), 60, "h", "min"); }
  return twoUnits(Math.round(seconds / 3600), 24, "d", "h");
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

// A list whose rows move while the pointer is on them moves the row about to be clicked (newest first,
// every refresh pushes the rows down): `refresh` waits while the pointer moves on the grid's rows.
// It comes once the pointer leaves them, rests for HOLD_IDLE_MS (not aiming: a screen watched with the
// mouse parked there goes on refreshing) or scrolls them (their rows move anyway, and blocks loaded
// meanwhile must match the rest). Not on a touch screen, where a tapped row stays ":hover".
// flowerbedHeldRefreshes[gridId] is their element while one waits; the page's body then has the class
// refresh-held-<gridId>, which shows the Tasks page's words about it.
var HOLD_IDLE_MS = 8000;
var lastPointerMove = 0, lastScroll = 0;
document.addEventListener("mousemove", function () { lastPointerMove = Date.now(); }, {passive: true});
document.addEventListener("scroll", function () { lastScroll = Date.now(); }, {passive: true, capture: true});
window.flowerbedHeldRefreshes = {};
window.flowerbedRefreshWhenLeft = function (gridId, refresh) {
  var rows = document.querySelector("#" + gridId + " .ag-body"), held = window.flowerbedHeldRefreshes;
  var since = Date.now();
  function aiming() {
    return rows.isConnected && rows.matches(":hover") && Date.now() - lastPointerMove < HOLD_IDLE_MS
      && lastScroll < since;
  }
  if (!rows || !window.matchMedia("(hover: hover)").matches || !aiming()) { refresh(); return; }
  if (held[gridId] === rows) { return; }
  held[gridId] = rows;
  document.body.classList.add("refresh-held-" + gridId);
  var watch = setInterval(function () {
    if (aiming()) { return; }
    clearInterval(watch);
    if (held[gridId] === rows) {
      delete held[gridId];
      document.body.classList.remove("refresh-held-" + gridId);
    }
    if (rows.isConnected) { refresh(); }
  }, 200);
};

// A drill-down from the Analytics page: target is [search text, state chip] whose {0}, {1}... are
// filled from `values` (a clicked point's customdata); see components/analytics.py.
window.flowerbedOpenTasks = function (base, target, values) {
  var params = new URLSearchParams();
  params.set("q", target[0].replace(/\{(\d+)\}/g, function (_match, index) { return values[Number(index)]; }));
  if (target[1]) { params.set("state", target[1]); }
  window.flowerbedNavigate(base + "tasks?" + params.toString());
};

// CSV export (every Analytics table, csvExportParams.processCellCallback): raw values, as the API's
// CSVs give them (monitor/serving/csv_export.py): numbers as they are (seconds, fractions), times
// (a column whose context.csv is "time") in ISO 8601 UTC. Text starting with = + - @ tab or
// carriage return is a formula to Excel, LibreOffice and Google Sheets, so a task named
// =HYPERLINK(...) or an exception =cmd|... would run when the file is opened. Such text gets a
// leading ' (OWASP's advice); a number is never a formula, so a negative one keeps its minus sign.
var CSV_FORMULA_START = /^[=+\-@\t\r]/;
var CSV_UNITS = {seconds: " (s)", fraction: " (fraction)", time: " (UTC)"};

window.flowerbedCsvText = dagfuncs.flowerbedCsvText = function (value, shown) {
  if (typeof value === "number" || typeof shown !== "string") { return shown; }
  return CSV_FORMULA_START.test(shown) ? "'" + shown : shown;
};

function csvKind(column) { return (column.getColDef().context || {}).csv; }

dagfuncs.flowerbedCsvCell = function (params) {
  var value = params.value;
  if (value === null || value === undefined) { return ""; }
  if (csvKind(params.column) === "time") { return new Date(value * 1000).toISOString(); }
  return dagfuncs.flowerbedCsvText(value, typeof value === "number" ? value : String(value));
};

// One header row: a column's group and name, and the unit of its raw values ("Run time p95 (s)").
dagfuncs.flowerbedCsvHeader = function (params) {
  var parent = params.column.getParent && params.column.getParent();
  var group = parent && parent.getColGroupDef && parent.getColGroupDef() ? parent.getColGroupDef().headerName : "";
  var name = (group ? group + " " : "") + params.column.getColDef().headerName;
  var unit = CSV_UNITS[csvKind(params.column)] || "";
  return name.indexOf(unit.trim()) >= 0 ? name : name + unit;
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

var MIN_SHOWN_COLUMNS = 3;
// Of `priority`'s columns (ids, most useful first), those to show in `room` px and those to hide:
// the grids' rule, and the first screen's drawing of them (first_screen.js).
window.flowerbedColumnsThatFit = function (priority, unwanted, room, widthOf) {
  var show = [], hide = [], full = false;
  priority.forEach(function (id) {
    if (unwanted.indexOf(id) >= 0) { hide.push(id); return; }
    var width = widthOf(id);
    full = full || (show.length >= MIN_SHOWN_COLUMNS && width > room);
    if (full) { hide.push(id); return; }
    show.push(id);
    room -= width;
  });
  return {show: show, hide: hide};
};
// A grid whose context names a columnPriority shows, in that order, the columns that fit its width
// and hides the rest (never fewer than three): a phone gets the three that matter, a laptop keeps
// the ones that answer questions on screen instead of behind a horizontal scroll. Columns the user
// chose to see outside that list take their room first; those the user hid stay hidden.
dagfuncs.flowerbedFitColumns = function (params) {
  var api = params.api;
  var context = api.getGridOption("context") || {};
  var priority = context.columnPriority;
  // A size change says the new width; other events leave it to the visible part of the grid.
  var range = params.clientWidth ? null : api.getHorizontalPixelRange();
  var room = params.clientWidth || (range && range.right - range.left);
  if (!priority || !room) { return; }
  api.getAllDisplayedColumns().forEach(function (column) {
    if (priority.indexOf(column.getColId()) < 0) { room -= column.getActualWidth(); }
  });
  var unwanted = context.hiddenByUser || [];  // the column chooser's (Tasks): never shown here
  var fit = window.flowerbedColumnsThatFit(priority.filter(function (id) { return api.getColumn(id); }), unwanted, room, function (id) {
    var def = api.getColumn(id).getColDef();
    return def.width || def.minWidth || 100;
  });
  var show = fit.show, hide = fit.hide;
  var changed = show.some(function (id) { return !api.getColumn(id).isVisible(); }) ||
    hide.some(function (id) { return api.getColumn(id).isVisible(); });
  if (changed) {
    api.setColumnsVisible(show, true);
    api.setColumnsVisible(hide, false);
  }
};
